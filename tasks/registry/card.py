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


def dataset_name(ref: str) -> str:
    """A data reference as a dataset name: ``sample://reviews`` -> ``reviews``, ``/data/x.csv`` -> ``x.csv``."""
    return ref.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1] or ref


ROUTE_TEXT = {
    "transformers": "a standard `transformers` sequence classifier (the pooler output feeds the linear head, as in training)",
    "remote_code": "a `transformers` model whose pooling (the one AdaptFlow trained with) lives in `modeling_adaptflow.py`: "
    "load it with `trust_remote_code=True` (read that file first; its sha256 is in `manifest.json`). "
    "Without that flag `transformers` refuses the folder rather than building a head that pools differently",
    "peft": "a PEFT LoRA adapter (`task_type: SEQ_CLS`, the head saved as `modules_to_save`) for the base model below",
    "peft_backbone": "a PEFT LoRA adapter of the base model's encoder (`task_type: FEATURE_EXTRACTION`); the classification head "
    "(`adaptflow/head.safetensors`) pools in a way no standard PEFT head reproduces, so `AutoPeftModelForSequenceClassification` "
    "refuses it. For `transformers` serving, export a merged model: `adaptflow models export NAME:VERSION --merge --output DIR`",
}


def loading_snippet(route: str, label_names: list[str]) -> str | None:
    """Python that loads this folder with plain ``transformers`` / ``peft`` and classifies two texts (run from the folder)."""
    texts = '["I loved it.", "It was a waste of money."]'
    if route in ("transformers", "remote_code"):
        trust = ", trust_remote_code=True" if route == "remote_code" else ""
        return (
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("text-classification", model="."{trust})  # "." = this folder\n'
            f"print(classifier({texts}, top_k=None))\n"
        )
    if route == "peft":
        id2label = {i: name for i, name in enumerate(label_names)}
        label2id = {name: i for i, name in enumerate(label_names)}
        return (
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer, pipeline\n\n"
            "# The base model is read from adapter_config.json (base_model_name_or_path).\n"
            f'model = AutoPeftModelForSequenceClassification.from_pretrained(".", num_labels={len(label_names)}, '
            f"id2label={id2label!r}, label2id={label2id!r})\n"
            'classifier = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained("."))\n'
            f"print(classifier({texts}, top_k=None))\n"
        )
    return None


def adaptflow_snippet(route: str, base: str) -> str:
    """Python that loads this folder with AdaptFlow (run from the folder); adapters also resolve their base."""
    if route.startswith("peft"):
        load = (
            "from adaptflow.tasks.base_model import resolve_model\n\n"
            f'base_dir = resolve_model("{base}", Path("base-cache"))  # a hub id, s3:// URI or folder\n'
            'model, tokenizer, meta = load_hf_classifier(Path("."), base_model_dir=base_dir)\n'
        )
    else:
        load = '\nmodel, tokenizer, meta = load_hf_classifier(Path("."))\n'
    return (
        "from pathlib import Path\n\nimport torch\n\nfrom adaptflow.tasks.registry.hf_folder import load_hf_classifier\n"
        + load
        + 'batch = tokenizer(["I loved it.", "It was a waste of money."], padding=True, return_tensors="pt")\n'
        "with torch.no_grad():\n"
        "    probabilities = model(**batch)[1].softmax(-1)\n"
        'print([dict(zip(meta["label_names"], row.tolist())) for row in probabilities])\n'
    )


def model_card(name: str, manifest: dict, data_manifest: dict, evaluation: dict, metrics_markdown: str) -> str:
    """A README.md with YAML front matter that matches what loads (library, pipeline, base model, metrics)."""
    config = manifest["config"]
    strategy = config["strategy"]["name"]
    route = manifest["hf"]["route"]
    metrics = evaluation["metrics"]
    base = manifest["base_model"]["ref"]
    label_names = list(data_manifest.get("label_names", []))
    eval_ref = config["data"]["eval_data"] or config["data"]["data"]
    fingerprint = data_manifest.get("key", "?")
    snippet = loading_snippet(route, label_names)
    front: dict = {
        "base_model": base,
        "library_name": "peft" if route.startswith("peft") else "transformers",
    }
    if snippet is not None:
        front["pipeline_tag"] = "text-classification"
    front["tags"] = ["adaptflow", strategy.replace("_", "-"), "text-classification"] + (["custom_code"] if route == "remote_code" else [])
    front["model-index"] = [
        {
            "name": name,
            "results": [
                {
                    "task": {"type": "text-classification", "name": "Text Classification"},
                    "dataset": {"type": dataset_name(eval_ref), "name": dataset_name(eval_ref), "revision": fingerprint},
                    "metrics": [
                        {"type": "accuracy", "name": "accuracy", "value": round(metrics["accuracy"], 4)},
                        {"type": "f1", "name": "macro-F1", "value": round(metrics["macro_f1"], 4), "args": {"average": "macro"}},
                    ],
                }
            ],
        }
    ]
    balance = data_manifest.get("label_balance", {})
    balance_rows = "\n".join(
        f"| {split} | " + ", ".join(f"{label}: {count}" for label, count in counts.items()) + " |" for split, counts in balance.items()
    )
    training = manifest.get("training", {})
    transformers_section = (
        f"```python\n{snippet}```\n"
        if snippet is not None
        else "No plain `transformers` loader reproduces this version's pooling; see above.\n"
    )
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {name}

A text classifier adapted from `{base}` with AdaptFlow's **{strategy}** strategy
(pooling: {manifest["hf"].get("pooling", "see adaptflow/model.json")}). Labels: {", ".join(label_names)}.

This folder is {ROUTE_TEXT[route]}.

## Intended use
Classifying short texts into the labels above, for data like the training data below.
Check it on your own data before relying on it; it was not evaluated for other domains or languages.

## Training data
Dataset `{dataset_name(config["data"]["data"])}` (AdaptFlow data fingerprint `{fingerprint}`).

| split | label balance |
|---|---|
{balance_rows}

Rows dropped while cleaning: `{data_manifest.get("dropped", {})}`.

## Training
Trainable parameters: {training.get("trainable_params", "?"):,} of {training.get("total_params", "?"):,};
train time {training.get("train_runtime_s", 0):.1f} s on {training.get("num_processes", 1)} process(es) ({training.get("device", "?")}).
The resolved configuration is in `adaptflow/config.json` and `manifest.json`.

## Evaluation
Scored on `{dataset_name(eval_ref)}` (fingerprint `{fingerprint}`).

{metrics_markdown}

## Limitations
- Trained on {data_manifest.get("splits", {}).get("train", 0)} examples; quality on other text distributions is unknown.
- Inherits the biases and limitations of the base model `{base}`.
- Texts longer than {config["data"]["max_length"]} tokens are truncated.

## How to load

With `transformers`{" and `peft`" if route.startswith("peft") else ""}, from this folder (no AdaptFlow needed):

{transformers_section}
With AdaptFlow, from this folder:

```python
{adaptflow_snippet(route, base)}```

or from the registry, files checked against their sha256{", the base model against the digest it was trained on" if route.startswith("peft") else ""}
(VERSION: this version's number, in `manifest.json`):

```bash
adaptflow predict --model {name}:VERSION --data texts.csv --output predictions.csv
```

AdaptFlow's own files (run configuration, metrics, evaluation, data manifest, plots) are under `adaptflow/`.
"""
