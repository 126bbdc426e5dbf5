"""Turn a finished run into a registered model version.

The version folder is a standard Hugging Face model folder (tasks/registry/hf_folder.py:
config, weights or PEFT adapter, tokenizer, model card ``README.md``) with AdaptFlow's own
files under ``adaptflow/``: ``metrics.json``, ``evaluation.json``, the run's ``config.json``,
the plots and the data manifest. Its
``manifest.json`` (written last by the registry, the commit marker) carries the lineage:
resolved config, data fingerprint, base model and its digest, strategy, metrics,
package versions, code version and the Prefect flow run.

:func:`version_manifest`, :func:`fresh_version_folder` and :func:`add_adaptflow_files` build every
version, the language-model ones too (tasks/registry/lm_manifest.py passes in its task, metrics and files).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from adaptflow.tasks.base_model import folder_digest
from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.evaluation.classification import EVALUATION_FILE, METRICS_FILE, PLOTS_DIR
from adaptflow.tasks.registry.card import code_version, model_card, package_versions
from adaptflow.tasks.registry.hf_folder import ADAPTFLOW_DIR, FOLDER_LAYOUT, write_classifier_folder
from adaptflow.tasks.registry.store import RegisteredVersion, register_version, retry_transient
from adaptflow.tasks.storage.s3 import S3Settings

TRAINING_KEYS = (
    "train_runtime_s",
    "samples_per_s",
    "peak_memory_mb",
    "trainable_params",
    "total_params",
    "steps",
    "examples_seen",
    "num_processes",
    "device",
    "mixed_precision",
)


def version_manifest(
    cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path, *, task: str, label_names: list[str], metrics: dict[str, Any]
) -> dict[str, Any]:
    """The lineage manifest of every registered version; what differs by kind of run is passed in.

    ``task`` names what the model does, ``label_names`` its classes (none for a language
    model), ``metrics`` its headline scores. The training figures come from the run's
    ``metrics.json`` (``TRAINING_KEYS``), the same for every kind.
    """
    trained = json.loads((run_dir / METRICS_FILE).read_text())
    return {
        "strategy": cfg.strategy.name,
        "task": task,
        "base_model": {"ref": cfg.model, "sha256": folder_digest(model_path)},
        "config": cfg.model_dump(mode="json"),
        "data": {
            "key": data_manifest["key"],
            "source": data_manifest["source"],
            "label_names": label_names,
            "splits": data_manifest["splits"],
        },
        "metrics": metrics,
        "training": {k: trained.get(k) for k in TRAINING_KEYS},
        "package_versions": package_versions(),
        "code_version": code_version(),
        "prefect": {
            "flow_run_id": flow_run.get_id(),
            "flow_run_name": flow_run.get_name(),
            "deployment": deployment.get_name(),
        },
    }


def lineage_manifest(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path, evaluation: dict) -> dict[str, Any]:
    """The manifest of a classification version: its metrics come from ``evaluation.json``."""
    metrics = {
        "accuracy": evaluation["metrics"]["accuracy"],
        "macro_f1": evaluation["metrics"]["macro_f1"],
        "eval_loss": evaluation["eval_loss"],
        "overfitting": evaluation["overfitting"]["overfitting"],
    }
    return version_manifest(
        cfg, run_dir, data_manifest, model_path, task="sequence_classification", label_names=data_manifest["label_names"], metrics=metrics
    )


def fresh_version_folder(run_dir: Path) -> Path:
    """``run_dir/version``, empty: what gets uploaded is assembled there."""
    folder = run_dir / "version"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def add_adaptflow_files(
    folder: Path,
    run_dir: Path,
    data_manifest: dict,
    card: str,
    files: tuple[str, ...],
    optional: tuple[str, ...] = (),
    folders: tuple[str, ...] = (),
) -> Path:
    """The run's ``files`` (and ``optional`` ones when present), ``folders`` and the data manifest under
    ``folder/adaptflow/``, where they cannot collide with Hugging Face names; the model card at the root."""
    own = folder / ADAPTFLOW_DIR
    own.mkdir(exist_ok=True)
    for name in files + tuple(n for n in optional if (run_dir / n).is_file()):
        shutil.copy(run_dir / name, own / name)
    for name in folders:
        shutil.copytree(run_dir / name, own / name)
    (own / "data_manifest.json").write_text(json.dumps(data_manifest, indent=2))
    (folder / "README.md").write_text(card)
    return folder


def build_version_folder(
    cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path, evaluation_markdown: str
) -> tuple[Path, dict]:
    """Assemble ``run_dir/version`` (a Hugging Face model folder, tasks/registry/hf_folder.py) and its lineage manifest."""
    evaluation = json.loads((run_dir / EVALUATION_FILE).read_text())
    manifest = lineage_manifest(cfg, run_dir, data_manifest, model_path, evaluation)
    folder = fresh_version_folder(run_dir)
    manifest["hf"] = write_classifier_folder(run_dir / "model", folder, cfg.model)
    manifest["folder_layout"] = FOLDER_LAYOUT
    card = model_card(cfg.model_name(), manifest, data_manifest, evaluation, evaluation_markdown)
    add_adaptflow_files(folder, run_dir, data_manifest, card, files=(METRICS_FILE, EVALUATION_FILE, "config.json"), folders=(PLOTS_DIR,))
    return folder, manifest


def register_run(
    cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path, evaluation_markdown: str, settings: S3Settings
) -> RegisteredVersion:
    folder, manifest = build_version_folder(cfg, run_dir, data_manifest, model_path, evaluation_markdown)
    return register_version(settings, cfg.model_name(), folder, manifest)


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def register_task(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path, evaluation_markdown: str) -> RegisteredVersion:
    """Upload the run as the next version of its model; the manifest is written last."""
    version = register_run(cfg, run_dir, data_manifest, model_path, evaluation_markdown, S3Settings.resolve())
    get_run_logger().info(
        f"registered {version.name} version {version.version}: {len(version.files)} files, {version.total_bytes / 2**20:.1f} MiB "
        f"({version.uploaded_bytes / 2**20:.1f} MiB uploaded, the rest already stored) -> {version.uri}"
    )
    return version
