"""What a run leaves behind: its run folder, and the typed result its flow returns.

One result class per kind of run, so the CLI and scripts tell runs apart by type, never
by which keys a dict happens to hold:

    RunResult                      the cost of a training run and where its model went
    ├── ClassificationResult       + accuracy, macro-F1, overfitting, prepared data
    │   └── DomainThenTaskResult   + ``domain``: the domain-adaptation stage before the task
    └── LanguageModelResult        + objective, before/after scores, the model folder
    CompareResult                  the comparison report (also written as compare_report.json)

They are pydantic models: Prefect serialises them as flow results, and ``model_dump()``
gives the JSON-able dict the flows returned before they were typed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from adaptflow.tasks.config import AdaptConfig


def new_run_dir(cfg: AdaptConfig, flow_run_id: str | None) -> Path:
    """A fresh run folder: ``<work dir>/runs/<model name>/<UTC time>-<flow run id>`` (``local`` outside a flow run)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_id = (flow_run_id or "local")[:8]
    return cfg.resolved_work_dir() / "runs" / cfg.model_name() / f"{stamp}-{run_id}"


class Result(BaseModel):
    """A flow's result; ``result["field"]`` still reads a field, as in scripts written when results were dicts."""

    model_config = ConfigDict(protected_namespaces=())  # fields such as model_name are ours, not pydantic's

    def __getitem__(self, field: str) -> Any:
        try:
            return getattr(self, field)
        except AttributeError:
            raise KeyError(field) from None


class RunResult(Result):
    """What every training run reports: its cost, and where its model went."""

    strategy: str
    model_name: str
    trainable_params: int
    total_params: int
    train_runtime_s: float
    samples_per_s: float
    peak_memory_mb: float
    run_dir: str
    version: int | None = None
    """The registered version; None when not registered."""
    version_uri: str | None = None
    flow_wall_s: float | None = None
    """Seconds the whole pipeline took, checks and preparation included."""


def run_fields(cfg: AdaptConfig, metrics: dict[str, Any], run_dir: Path, version) -> dict[str, Any]:
    """The fields of :class:`RunResult`, from the config, the training metrics and the registered version (or None)."""
    return {
        "strategy": cfg.strategy.name,
        "model_name": cfg.model_name(),
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_runtime_s": metrics["train_runtime_s"],
        "samples_per_s": metrics["samples_per_s"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "run_dir": str(run_dir),
        "version": version.version if version else None,
        "version_uri": version.uri if version else None,
    }


class ClassificationResult(RunResult):
    """A classifier: its scores on the evaluation split."""

    accuracy: float
    macro_f1: float
    eval_loss: float | None
    overfitting: bool
    prepared_data: str
    data_reused: bool
    """Whether the prepared data was reused from an earlier run (same inputs, same tokenizer)."""


class LanguageModelResult(RunResult):
    """Causal LM fine-tuning or domain adaptation: every score before and after training."""

    task: str
    objective: str
    metrics: dict[str, Any]
    model_dir: str


class DomainThenTaskResult(ClassificationResult):
    """Domain adaptation followed by a task strategy: the task model's result, and the domain stage's."""

    domain: LanguageModelResult


class CompareResult(Result):
    """The comparison of strategies on the same data and budget (the fields of compare_report.json)."""

    model: str
    compare_dir: str
    prepared_data: str
    eval_rows: int
    splits: dict[str, Any]
    budget: dict[str, Any]
    rows: list[dict[str, Any]]
    """One row per strategy: cost, scores, forgetting, Pareto flags, run folder, registered version."""
    search: dict[str, Any]
    recommendation: dict[str, Any]
    chart: str
    seeds: int = 1
    curves: dict[str, list[dict[str, Any]]] = {}
    """Per strategy: its validation evaluations (examples seen, seconds of training, accuracy, loss)."""
    curve_findings: list[str] = []
    curves_chart: str | None = None
    config: dict[str, Any]
    flow_run_id: str | None
