"""Register a language-model run (causal LM fine-tuning or continued pre-training).

The version folder holds what the LM worker saved (full weights in Hugging Face layout,
or only ``adapter/`` for LoRA; the base model is recorded in the manifest, not copied),
the tokenizer, ``metrics.json``, ``generations.json``, ``config.json``, the data manifest
and a short model card. The lineage manifest has the same keys as a classification
version's, with language-model metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from adaptflow.tasks.registry.card import code_version, package_versions
from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.modeling import folder_digest
from adaptflow.tasks.registry.manifest import TRAINING_KEYS
from adaptflow.tasks.registry.store import RegisteredVersion, register_version
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
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "strategy": cfg.strategy.name,
        "task": "masked_lm" if metrics["objective"] == "mlm" else "causal_lm",
        "base_model": {"ref": cfg.model, "sha256": folder_digest(model_path)},
        "config": cfg.model_dump(mode="json"),
        "data": {"key": data_manifest["key"], "source": data_manifest["source"], "label_names": [], "splits": data_manifest["splits"]},
        "metrics": lm_metrics(metrics),
        "training": {k: metrics.get(k) for k in TRAINING_KEYS},
        "package_versions": package_versions(),
        "code_version": code_version(),
        "prefect": {"flow_run_id": flow_run.get_id(), "flow_run_name": flow_run.get_name(), "deployment": deployment.get_name()},
    }


def lm_card(name: str, manifest: dict) -> str:
    front = {
        "base_model": manifest["base_model"]["ref"],
        "library_name": "peft" if manifest["config"]["strategy"]["name"] == "lora" else "transformers",
        "pipeline_tag": "text-generation" if manifest["task"] == "causal_lm" else "fill-mask",
        "tags": ["adaptflow", manifest["strategy"].replace("_", "-"), manifest["task"].replace("_", "-")],
        "datasets": [manifest["config"]["data"]["data"]],
    }
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in manifest["metrics"].items())
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {name}\n\n"
        f"{manifest['task']} model adapted from `{manifest['base_model']['ref']}` with `{manifest['strategy']}` by AdaptFlow.\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n\n"
        "`forgetting` is the relative change of perplexity (masked-LM loss for encoders) on a general English "
        "reference text: above 0 the model got worse at general text.\n"
    )


def build_lm_version_folder(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path) -> tuple[Path, dict]:
    manifest = lm_lineage_manifest(cfg, run_dir, data_manifest, model_path)
    folder = run_dir / "version"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(run_dir / "model", folder)
    for name in ("metrics.json", "generations.json", "config.json"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, folder / name)
    (folder / "data_manifest.json").write_text(json.dumps(data_manifest, indent=2))
    (folder / "README.md").write_text(lm_card(cfg.model_name(), manifest))
    return folder, manifest


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register_lm_task(cfg: AdaptConfig, run_dir: Path, data_manifest: dict, model_path: Path) -> RegisteredVersion:
    """Upload the language-model run as the next version of its model; the manifest is written last."""
    folder, manifest = build_lm_version_folder(cfg, run_dir, data_manifest, model_path)
    version = register_version(S3Settings.resolve(), cfg.model_name(), folder, manifest)
    get_run_logger().info(f"registered {version.name} version {version.version}: {version.total_bytes / 2**20:.1f} MiB -> {version.uri}")
    return version
