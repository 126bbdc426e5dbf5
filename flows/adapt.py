"""The ``adapt`` flow: check inputs -> prepare data -> train -> evaluate -> register.

Every strategy flow (flows/strategies.py) and the CLI (``adaptflow run``) go through
:func:`run_pipeline`, so there is one pipeline whatever the strategy or trigger.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from adaptflow.tasks.config import AdaptConfig, load_config
from adaptflow.tasks.data import check_data, prepare_data_task
from adaptflow.tasks.errors import AdaptFlowError, ConfigError, DataError, ModelError, StorageError, raise_together
from adaptflow.tasks.evaluation.classification import evaluate_task, metrics_markdown
from adaptflow.tasks.modeling import inspect_model, resolve_model
from adaptflow.tasks.registry.manifest import register_task
from adaptflow.tasks.storage.s3 import S3Settings, check_access, download_prefix
from adaptflow.tasks.training.launch import accelerate_config_path, train_task
from adaptflow.tasks.strategies import check_against_model


class InputError(AdaptFlowError):
    title = "AdaptFlow cannot start"


@task(name="check-inputs", cache_policy=NO_CACHE)
def check_inputs(cfg: AdaptConfig) -> tuple[Path | None, list[AdaptFlowError]]:
    """Everything that can be checked before heavy work: S3 access, the base model, model-dependent settings.

    Returns the local model folder (None when unusable) and the errors found, so the
    caller can report them together with data problems.
    """
    found: list[AdaptFlowError] = []
    needs_s3 = cfg.registry.register_model or any(
        ref and ref.startswith("s3://") for ref in (cfg.model, cfg.data.data, cfg.data.eval_data, cfg.training.checkpoint_uri)
    )
    settings = None
    if needs_s3:
        try:
            settings = S3Settings.resolve()
            check_access(settings)
        except StorageError as exc:
            found.append(exc)
            settings = None
    if cfg.launch.accelerate_config:
        try:
            accelerate_config_path(cfg.launch.accelerate_config)
        except ConfigError as exc:
            found.append(exc)
    model_path = None
    try:
        fetch = (lambda uri, dest: download_prefix(settings, uri, dest)) if settings else None
        model_path = resolve_model(cfg.model, cfg.resolved_work_dir() / "cache", fetch)
        mismatches = check_against_model(cfg, inspect_model(model_path, cfg.trust_remote_code))
        if mismatches:
            found.append(ConfigError(mismatches))
    except ModelError as exc:
        found.append(exc)
        model_path = None
    return model_path, found


def preflight(cfg: AdaptConfig) -> None:
    """The checks of :func:`check_inputs`, plus reading the local data, as plain function calls.

    Needs no Prefect server: the CLI calls it before a flow run starts, so a bad input is
    reported in seconds and once, instead of after the server's start-up and again by every
    layer of the failed run. The flow repeats the checks (UI and scheduled runs have no CLI).
    """
    from adaptflow.flows.lm import is_language_model_run  # adaptflow.flows.lm imports this module

    _, found = check_inputs.fn(cfg)
    if not is_language_model_run(cfg):  # language-model data is checked by its own preparation
        try:
            check_data(cfg.data, cfg.resolved_work_dir())
        except DataError as exc:
            found.append(exc)
    raise_together(found, mixed=InputError)


def _run_dir(cfg: AdaptConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_id = (flow_run.get_id() or "local")[:8]
    return cfg.resolved_work_dir() / "runs" / cfg.model_name() / f"{stamp}-{run_id}"


def run_pipeline(cfg: AdaptConfig) -> dict:
    """The whole adaptation; returns a JSON-able summary (metrics, run folder, registered version)."""
    from adaptflow.flows.lm import is_language_model_run, run_language_model

    if is_language_model_run(cfg):  # domain adaptation, causal LM fine-tuning (flows/lm.py)
        return run_language_model(cfg)
    logger = get_run_logger()
    started = time.perf_counter()
    model_path, found = check_inputs(cfg)
    prepared = None
    if model_path is not None:
        try:
            prepared = prepare_data_task(cfg.data, model_path, cfg.resolved_work_dir())
        except DataError as exc:
            found.append(exc)
    raise_together(found, mixed=InputError)
    assert prepared is not None and model_path is not None

    run_dir = _run_dir(cfg)
    logger.info(f"run folder: {run_dir}")
    metrics = train_task.with_options(retries=cfg.launch.retries)(cfg, prepared.path, model_path, run_dir)
    report = evaluate_task(run_dir)
    version = None
    if cfg.registry.register_model:
        version = register_task(cfg, run_dir, prepared.manifest, model_path, metrics_markdown(report))
    summary = {
        "strategy": cfg.strategy.name,
        "model_name": cfg.model_name(),
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_runtime_s": metrics["train_runtime_s"],
        "samples_per_s": metrics["samples_per_s"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "accuracy": report.metrics["accuracy"],
        "macro_f1": report.metrics["macro_f1"],
        "eval_loss": metrics["eval_loss"],
        "overfitting": report.overfitting["overfitting"],
        "run_dir": str(run_dir),
        "prepared_data": str(prepared.path),
        "data_reused": prepared.reused,
        "version": version.version if version else None,
        "version_uri": version.uri if version else None,
        "flow_wall_s": time.perf_counter() - started,
    }
    create_markdown_artifact(summary_markdown(summary), key="adapt-summary", description="Adaptation summary")
    logger.info(f"done: accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f}; version {summary['version_uri']}")
    return summary


def summary_markdown(summary: dict) -> str:
    pct = 100 * summary["trainable_params"] / max(1, summary["total_params"])
    return (
        f"# {summary['model_name']}\n\n"
        "| strategy | trainable params | train time | samples/s | peak memory | accuracy | macro-F1 |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {summary['strategy']} | {summary['trainable_params']:,} ({pct:.2f}%) | {summary['train_runtime_s']:.1f} s "
        f"| {summary['samples_per_s']:.1f} | {summary['peak_memory_mb']:.0f} MB | {summary['accuracy']:.4f} | {summary['macro_f1']:.4f} |\n\n"
        f"Registered version: `{summary['version_uri'] or 'not registered'}`  \n"
        f"Run folder: `{summary['run_dir']}`\n"
    )


@flow(name="adapt", description="Adapt a pre-trained language model to a classification task and register it.")
def adapt(config: AdaptConfig = AdaptConfig()) -> dict:
    """Prepare the data, train with the chosen strategy, evaluate, and register the model to S3."""
    return run_pipeline(load_config(config))
