"""Registered versions for the predict / promote / secrets tests, made without training.

:func:`register_head` saves a tiny classifier whose head weights the test chooses and
registers it with the real registry, so versions of known quality cost a second each; it
writes the folder as versions were before folder layout 2 (the saved classifier as is).
:func:`register_like_a_run` builds the version as a finished run does (a run folder with the
saved model, metrics, evaluation and plots, then ``build_version_folder``: folder layout 2).
:func:`fit_head` solves for a head that classifies a small labelled file perfectly;
negating it gives one that is always wrong, zeroing it one that always says the same.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from adaptflow.infra.stack import LocalS3Stack
from adaptflow.tasks.base_model import folder_digest, inspect_model
from adaptflow.tasks.modeling import AdaptClassifier, build_classifier, save_classifier
from adaptflow.tasks.registry.store import RegisteredVersion, register_version
from adaptflow.tasks.storage.s3 import ENDPOINT_VARS, S3Settings

LABELS = ["negative", "positive"]
MAX_LENGTH = 32
CLEARED_VARS = (*ENDPOINT_VARS, "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "ADAPTFLOW_S3_BLOCK")


@contextmanager
def stack_env(stack: LocalS3Stack, label: str, home: Path) -> Iterator[S3Settings]:
    """The stack's variables, a fresh ADAPTFLOW_S3_PREFIX and ADAPTFLOW_HOME exported; yields the settings."""
    env = stack.env()
    settings = stack.settings(prefix=f"tests/{label}-{uuid.uuid4().hex[:8]}")
    with pytest.MonkeyPatch.context() as patch:
        for name in CLEARED_VARS:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setenv("ADAPTFLOW_S3_PREFIX", settings.prefix)
        patch.setenv("ADAPTFLOW_HOME", str(home))
        yield settings


def write_labelled(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def tiny_classifier(backbone_dir: Path) -> tuple[AdaptClassifier, object]:
    from transformers import AutoTokenizer

    model = build_classifier(inspect_model(backbone_dir), "mean", len(LABELS))
    return model.eval(), AutoTokenizer.from_pretrained(backbone_dir)


def fit_head(backbone_dir: Path, rows: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a head that separates ``rows`` exactly (least squares on the features)."""
    model, tokenizer = tiny_classifier(backbone_dir)
    batch = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        features = model.encode(**batch).double()
    design = torch.cat([features, torch.ones(len(rows), 1, dtype=torch.float64)], dim=1)
    target = torch.tensor([[1.0 if label == "positive" else -1.0] for _, label in rows], dtype=torch.float64)
    solution = torch.linalg.lstsq(design, target).solution[:, 0]
    w, b = solution[:-1].float(), solution[-1].float()
    return torch.stack([-w, w]), torch.stack([-b, b])


def register_head(
    settings: S3Settings, name: str, backbone_dir: Path, work: Path, weight: torch.Tensor, bias: torch.Tensor, lora: bool = False
) -> int:
    """Register a classifier on ``backbone_dir`` with this head; returns the version number."""
    model, tokenizer = tiny_classifier(backbone_dir)
    with torch.no_grad():
        model.head.linear.weight.copy_(weight)
        model.head.linear.bias.copy_(bias)
    if lora:
        from peft import LoraConfig, get_peft_model

        model.backbone = get_peft_model(model.backbone, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    folder = work / f"{name}-{uuid.uuid4().hex[:8]}"
    strategy = "lora" if lora else "transfer_learning"
    save_classifier(
        model, folder, tokenizer, {"strategy": strategy, "label_names": LABELS, "base_model": str(backbone_dir), "max_length": MAX_LENGTH}
    )
    manifest = {
        "strategy": strategy,
        "task": "sequence_classification",
        "base_model": {"ref": str(backbone_dir), "sha256": folder_digest(backbone_dir)},
        "config": {"model": str(backbone_dir), "data": {"max_length": MAX_LENGTH}},
        "data": {"label_names": LABELS},
        "metrics": {},
    }
    return register_version(settings, name, folder, manifest).version


def register_like_a_run(
    settings: S3Settings,
    base: Path,
    work: Path,
    name: str,
    strategy: str,
    pooling: str,
    labels: list[str],
    set_weights: Callable[[AdaptClassifier], None],
    base_ref: str | None = None,
) -> tuple[RegisteredVersion, dict]:
    """Register a ``strategy`` classifier on ``base`` (weights from ``set_weights``) through the production
    folder builder; returns the version and its manifest. ``base_ref``: the model reference the run was given."""
    from transformers import AutoTokenizer

    from adaptflow.tasks.config import load_config
    from adaptflow.tasks.registry.manifest import build_version_folder
    from adaptflow.tasks.strategies import get_strategy

    raw = {"model": base_ref or str(base), "strategy": {"name": strategy, "pooling": pooling}, "data": {"data": "sample://reviews"}}
    cfg = load_config({**raw, "registry": {"model_name": name}, "work_dir": str(work / "work")})
    model = get_strategy(strategy).configure_classifier(build_classifier(inspect_model(base), pooling, len(labels)), cfg)
    set_weights(model)
    run_dir = work / f"{name}-{uuid.uuid4().hex[:8]}"
    meta = {"strategy": strategy, "label_names": labels, "base_model": cfg.model, "max_length": MAX_LENGTH}
    save_classifier(model.eval(), run_dir / "model", AutoTokenizer.from_pretrained(base), meta)
    (run_dir / "metrics.json").write_text(json.dumps({"trainable_params": 10, "total_params": 100, "train_runtime_s": 1.0}))
    overfitting = {"overfitting": False, "n_evals": 1, "reason": "not enough evaluations"}
    (run_dir / "evaluation.json").write_text(
        json.dumps({"metrics": {"accuracy": 0.75, "macro_f1": 0.7}, "eval_loss": 0.5, "overfitting": overfitting})
    )
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "loss_curves.png").write_bytes(b"png")
    data_manifest = {
        "key": "reviews-0123456789ab",
        "source": {"data": {"uri": "sample://reviews", "sha256": "ab" * 32}},
        "label_names": labels,
        "splits": {"train": 12, "eval": 3},
        "label_balance": {"train": {label: 4 for label in labels}},
    }
    folder, manifest = build_version_folder(cfg, run_dir, data_manifest, base, "(evaluation tables)")
    return register_version(settings, name, folder, manifest), manifest
