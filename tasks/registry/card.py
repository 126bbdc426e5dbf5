"""Lineage of a run (what produced a model) and its Hugging Face-style model card."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

import yaml

from adaptflow.tasks.assets import project_root

PACKAGES = ("adaptflow", "torch", "transformers", "peft", "accelerate", "datasets", "prefect", "boto3")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_version() -> str:
    """The git commit of the AdaptFlow checkout (``-dirty`` when modified), else the package version."""
    root = project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "adaptflow " + package_versions()["adaptflow"]


def model_card(name: str, manifest: dict, data_manifest: dict, evaluation: dict, metrics_markdown: str) -> str:
    """A README.md with YAML front matter (base_model, tags, datasets, metrics) and the usual sections."""
    config = manifest["config"]
    strategy = config["strategy"]["name"]
    metrics = evaluation["metrics"]
    front = {
        "base_model": config["model"],
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["adaptflow", strategy.replace("_", "-"), "text-classification"],
        "datasets": [config["data"]["data"]],
        "metrics": ["accuracy", "f1"],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-classification"},
                        "dataset": {"name": config["data"]["eval_data"] or config["data"]["data"], "type": "custom"},
                        "metrics": [
                            {"type": "accuracy", "value": round(metrics["accuracy"], 4)},
                            {"type": "f1", "name": "macro-F1", "value": round(metrics["macro_f1"], 4)},
                        ],
                    }
                ],
            }
        ],
    }
    balance = data_manifest.get("label_balance", {})
    balance_rows = "\n".join(
        f"| {split} | " + ", ".join(f"{label}: {count}" for label, count in counts.items()) + " |" for split, counts in balance.items()
    )
    labels = ", ".join(data_manifest.get("label_names", []))
    training = manifest.get("training", {})
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {name}

A text classifier adapted from `{config["model"]}` with AdaptFlow's **{strategy}** strategy.
Labels: {labels}.

## Intended use
Classifying short texts into the labels above, for data like the training data below.
Check it on your own data before relying on it; it was not evaluated for other domains or languages.

## Training data
Source: `{config["data"]["data"]}` (fingerprint `{data_manifest.get("key", "?")}`).

| split | label balance |
|---|---|
{balance_rows}

Rows dropped while cleaning: `{data_manifest.get("dropped", {})}`.

## Training
Trainable parameters: {training.get("trainable_params", "?"):,} of {training.get("total_params", "?"):,};
train time {training.get("train_runtime_s", 0):.1f} s on {training.get("num_processes", 1)} process(es) ({training.get("device", "?")}).
The resolved configuration is in `manifest.json`.

## Evaluation
{metrics_markdown}

## Limitations
- Trained on {sum(data_manifest.get("splits", {}).get(s, 0) for s in ("train",))} examples; quality on other text distributions is unknown.
- Inherits the biases and limitations of the base model `{config["model"]}`.
- Texts longer than {config["data"]["max_length"]} tokens are truncated.

## How to load
`adaptflow models pull` (or any S3 client) gives this folder; `adaptflow.tasks.modeling.load_classifier(folder)` loads it.
The backbone (`backbone/`) loads with `transformers.AutoModel.from_pretrained`; LoRA versions keep only
`adapter/` (load with `peft.PeftModel.from_pretrained` on the base model) and the head in `head.safetensors`.
"""
