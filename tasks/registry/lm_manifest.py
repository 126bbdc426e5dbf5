"""Register a language-model run (causal LM fine-tuning or continued pre-training).

The version folder is a Hugging Face folder (tasks/registry/hf_folder.py :func:`write_lm_folder`):
full weights, or a PEFT adapter at the root naming its base (recorded in the manifest, not
copied), the tokenizer with its chat template and a short model card; ``metrics.json``,
``generations.json``, the run's ``config.json`` and the data manifest are under ``adaptflow/``. The lineage manifest is built by the one builder of
tasks/registry/manifest.py: the same keys as a classification version's, with
language-model metrics and no label names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.evaluation.classification import METRICS_FILE
from adaptflow.tasks.registry.card import dataset_name
from adaptflow.tasks.registry.hf_folder import FOLDER_LAYOUT, write_lm_folder
from adaptflow.tasks.registry.manifest import add_adaptflow_files, fresh_version_folder, version_manifest
from adaptflow.tasks.registry.store import RegisteredVersion, register_version, retry_transient
from adaptflow.tasks.storage.s3 import S3Settings


def lm_metrics(metrics: dict) -> dict[str, Any]:
    """Flat before/after scores, generation metrics and the forgetting score of a worker's metrics.json."""
    flat: dict[str, Any] = {}
    for key, value in metrics["after"].items():
        flat[key] = value
        flat[f"{key}_before"] = metrics["before"].get(key)
    flat.update(metrics.get("generation", {}))
    ref = "reference_perplexity" if "reference_perplexity" in metrics["after"] else "reference_mlm_loss"
    before = metrics["before"].get(ref)
    # Relative rise of the reference-text perplexity (or masked-LM loss): 0.1 = 10% worse on general text.
    flat["forgetting"] = (metrics["after"][ref] - before) / before if before else None
    return flat


def lm_lineage_manifest(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    task = "masked_lm" if metrics["objective"] == "mlm" else "causal_lm"
    return version_manifest(cfg, run_dir, data_manifest, model_path, task=task, label_names=[], metrics=lm_metrics(metrics))


def lm_card(name: str, manifest: dict) -> str:
    front = {
        "base_model": manifest["base_model"]["ref"],
        "library_name": "peft" if manifest["config"]["strategy"]["name"] == "lora" else "transformers",
        "pipeline_tag": "text-generation" if manifest["task"] == "causal_lm" else "fill-mask",
        "tags": ["adaptflow", manifest["strategy"].replace("_", "-"), manifest["task"].replace("_", "-")],
        "datasets": [dataset_name(manifest["config"]["data"]["data"])],
    }
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in manifest["metrics"].items())
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {name}\n\n"
        f"{manifest['task']} model adapted from `{manifest['base_model']['ref']}` with `{manifest['strategy']}` by AdaptFlow.\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n\n"
        "`forgetting` is the relative change of perplexity (masked-LM loss for encoders) on a general English "
        "reference text: above 0 the model got worse at general text.\n\n"
        f"## How to load\n\n```python\n{lm_loading_snippet(manifest)}```\n\n"
        "AdaptFlow's own files (run configuration, metrics, generations, data manifest) are under `adaptflow/`.\n"
    )


def lm_loading_snippet(manifest: dict) -> str:
    """Python that loads the version folder with ``transformers`` / ``peft`` (run from the folder)."""
    pipeline_task = "text-generation" if manifest["task"] == "causal_lm" else "fill-mask"
    if manifest["hf"]["route"] != "peft":
        return f'from transformers import pipeline\n\ngenerator = pipeline("{pipeline_task}", model=".")  # "." = this folder\n'
    auto = "AutoPeftModelForCausalLM" if manifest["task"] == "causal_lm" else "AutoPeftModel"
    return (
        f"from peft import {auto}\nfrom transformers import AutoTokenizer, pipeline\n\n"
        f'model = {auto}.from_pretrained(".")  # the base: adapter_config.json\'s base_model_name_or_path\n'
        f'generator = pipeline("{pipeline_task}", model=model, tokenizer=AutoTokenizer.from_pretrained("."))\n'
    )


def build_lm_version_folder(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path) -> tuple[Path, dict]:
    manifest = lm_lineage_manifest(cfg, run_dir, data_manifest, model_path)
    folder = fresh_version_folder(run_dir)
    manifest["hf"] = write_lm_folder(run_dir / "model", folder, cfg.model, data_manifest.get("format"))
    manifest["folder_layout"] = FOLDER_LAYOUT
    add_adaptflow_files(
        folder,
        run_dir,
        data_manifest,
        lm_card(cfg.model_name(), manifest),
        files=(),
        optional=(METRICS_FILE, "generations.json", "config.json"),
    )
    return folder, manifest


def register_lm_run(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path, settings: S3Settings) -> RegisteredVersion:
    folder, manifest = build_lm_version_folder(cfg, run_dir, data_manifest, model_path)
    return register_version(settings, cfg.model_name(), folder, manifest)


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def register_lm_task(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path) -> RegisteredVersion:
    """Upload the language-model run as the next version of its model; the manifest is written last."""
    version = register_lm_run(cfg, run_dir, data_manifest, model_path, S3Settings.resolve())
    get_run_logger().info(f"registered {version.name} version {version.version}: {version.total_bytes / 2**20:.1f} MiB -> {version.uri}")
    return version
