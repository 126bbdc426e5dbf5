"""Typed flow results, the CLI's tables chosen by a result's type, and the CLI's shared flow runner."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import typer

from adaptflow.flows.cli import common, run
from adaptflow.flows.results import ClassificationResult, DomainThenTaskResult, LanguageModelResult, run_fields
from adaptflow.tasks.config import load_config
from adaptflow.tasks.errors import ConfigError, Problem

METRICS = {
    "trainable_params": 1200,
    "total_params": 120000,
    "train_runtime_s": 3.5,
    "samples_per_s": 40.0,
    "peak_memory_mb": 512.0,
    "eval_loss": 0.4,
    "task": "domain",
    "objective": "mlm",
    "perplexity": 9.0,
    "perplexity_before": 12.0,
}


def _classification(cfg, **extra) -> ClassificationResult:
    version = SimpleNamespace(version=3, uri="s3://adaptflow/models/m/3")
    return ClassificationResult(
        **run_fields(cfg, METRICS, "/runs/a", version),
        accuracy=0.9,
        macro_f1=0.88,
        eval_loss=0.4,
        overfitting=False,
        prepared_data="/prepared/k",
        data_reused=True,
        **extra,
    )


def _language_model(cfg) -> LanguageModelResult:
    return LanguageModelResult(
        **run_fields(cfg, METRICS, "/runs/d", None),
        task="domain",
        objective="mlm",
        metrics={"perplexity": 9.0, "perplexity_before": 12.0, "forgetting": 0.05},
        model_dir="/runs/d/model",
    )


def test_results_hold_the_fields_the_dict_results_had_and_read_like_them():
    cfg = load_config({"strategy": {"name": "lora"}})
    result = _classification(cfg, flow_wall_s=5.0)
    dumped = result.model_dump()
    assert set(dumped) == {
        "strategy",
        "model_name",
        "trainable_params",
        "total_params",
        "train_runtime_s",
        "samples_per_s",
        "peak_memory_mb",
        "accuracy",
        "macro_f1",
        "eval_loss",
        "overfitting",
        "run_dir",
        "prepared_data",
        "data_reused",
        "version",
        "version_uri",
        "flow_wall_s",
    }
    assert json.loads(result.model_dump_json()) == dumped  # JSON-able, as Prefect needs
    assert (result["strategy"], result["version"], result.model_name) == ("lora", 3, cfg.model_name())
    with pytest.raises(KeyError):
        result["domain"]


def test_domain_then_task_result_is_the_task_result_with_the_domain_stage():
    cfg = load_config({"strategy": {"name": "domain_adaptation"}})
    chained = DomainThenTaskResult(**dict(_classification(cfg)), domain=_language_model(cfg))
    assert isinstance(chained, ClassificationResult) and chained["domain"]["metrics"]["perplexity"] == 9.0
    assert chained.model_dump()["domain"]["version"] is None


def test_the_cli_prints_the_tables_of_the_result_type(capsys, monkeypatch):
    printed: list[str] = []
    monkeypatch.setattr(run, "print_summary", lambda results: printed.append(f"classification {[r.strategy for r in results]}"))
    monkeypatch.setattr(run, "print_lm_summary", lambda result: printed.append(f"lm {result.objective}"))
    cfg = load_config({"strategy": {"name": "domain_adaptation"}})
    run.print_result(DomainThenTaskResult(**dict(_classification(cfg)), domain=_language_model(cfg)))
    run.print_result(_language_model(cfg))
    run.print_result(_classification(cfg))
    assert printed == ["lm mlm", "classification ['domain_adaptation']", "lm mlm", "classification ['domain_adaptation']"]


def test_the_language_model_table_shows_scores_before_and_after(monkeypatch):
    from rich.console import Console

    console = Console(record=True, width=160)
    monkeypatch.setattr(run, "out", console)
    run.print_lm_summary(_language_model(load_config({"strategy": {"name": "domain_adaptation"}})))
    text = console.export_text()
    assert "AdaptFlow mlm results" in text and "12.0000" in text and "9.0000" in text and "+5.0%" in text
    assert "adapted model folder: /runs/d/model" in text


def test_the_flow_runner_returns_the_result_and_turns_user_errors_into_exit_codes(monkeypatch):
    from adaptflow.infra import prefect_client
    from adaptflow.tasks.training import launch

    monkeypatch.setattr(
        prefect_client, "prefect_server", lambda say: contextlib.nullcontext()
    )  # no server: the flow is a plain function here
    listeners = list(launch._listeners)

    def training():
        for sink in launch._listeners:
            sink({"type": "start", "total_steps": 2})
            sink({"type": "progress", "step": 1, "total_steps": 2, "train_loss": 0.5})
        return "result"

    assert common.run_flow_with_training_bars(training, lambda n: f"training run {n + 1}") == "result"

    def failing():
        raise ConfigError(Problem("data", "is empty", "give rows"))

    with pytest.raises(typer.Exit) as info:
        common.run_flow_with_training_bars(failing, lambda n: "training")
    assert info.value.exit_code == ConfigError.exit_code
    assert launch._listeners == listeners  # the bars' listener is gone after the run
