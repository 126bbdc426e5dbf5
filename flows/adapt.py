"""The ``adapt`` flow: check inputs -> prepare data -> train -> evaluate -> register.

Every strategy flow (flows/strategies.py) and the CLI (``adaptflow run``) go through
:func:`run_pipeline`, so there is one pipeline whatever the strategy or trigger:

    classification                      run_classification
    causal LM fine-tuning               run_language_model (flows/lm.py)
    domain adaptation                   run_language_model
    domain adaptation, then a strategy  run_language_model, then run_classification on the adapted model
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from adaptflow.flows.lm import chains_a_task, run_language_model, task_config
from adaptflow.flows.preflight import InputError, collect, is_language_model_run
from adaptflow.flows.results import ClassificationResult, DomainThenTaskResult, LanguageModelResult, new_run_dir, run_fields
from adaptflow.flows.tasks import check_inputs_task
from adaptflow.tasks.config import AdaptConfig, load_config
from adaptflow.tasks.data.task import prepare_data_task
from adaptflow.tasks.errors import raise_together
from adaptflow.tasks.evaluation.classification import evaluate_task, metrics_markdown
from adaptflow.tasks.registry.manifest import register_task
from adaptflow.tasks.training.launch import train_task


def run_pipeline(cfg: AdaptConfig) -> ClassificationResult | LanguageModelResult:
    """The whole adaptation; returns its typed result (metrics, run folder, registered version)."""
    if chains_a_task(cfg):
        return run_domain_then_task(cfg)
    if is_language_model_run(cfg):
        return run_language_model(cfg)
    return run_classification(cfg)


def run_classification(cfg: AdaptConfig) -> ClassificationResult:
    """Adapt a model to a classification task: check, prepare, train, evaluate, register."""
    logger = get_run_logger()
    started = time.perf_counter()
    model_path, found = check_inputs_task(cfg)
    prepared = collect(found, prepare_data_task, cfg.data, model_path, cfg.resolved_work_dir()) if model_path is not None else None
    raise_together(found, mixed=InputError)
    assert prepared is not None and model_path is not None

    run_dir = new_run_dir(cfg, flow_run.get_id())
    logger.info(f"run folder: {run_dir}")
    metrics = train_task.with_options(retries=cfg.launch.retries)(cfg, prepared.path, model_path, run_dir)
    report = evaluate_task(run_dir)
    version = register_task(cfg, run_dir, prepared.manifest, model_path, metrics_markdown(report)) if cfg.registry.register_model else None

    result = ClassificationResult(
        **run_fields(cfg, metrics, run_dir, version),
        accuracy=report.metrics["accuracy"],
        macro_f1=report.metrics["macro_f1"],
        eval_loss=metrics["eval_loss"],
        overfitting=report.overfitting["overfitting"],
        prepared_data=str(prepared.path),
        data_reused=prepared.reused,
        flow_wall_s=time.perf_counter() - started,
    )
    create_markdown_artifact(summary_markdown(result), key="adapt-summary", description="Adaptation summary")
    logger.info(f"done: accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f}; version {result.version_uri}")
    return result


def run_domain_then_task(cfg: AdaptConfig) -> DomainThenTaskResult:
    """Continued pre-training on the domain text, then the task strategy on the adapted model; the task model is registered."""
    started = time.perf_counter()
    domain = run_language_model(cfg)
    task = run_classification(task_config(cfg, Path(domain.model_dir)))
    return DomainThenTaskResult(**{**dict(task), "flow_wall_s": time.perf_counter() - started}, domain=domain)


def summary_markdown(result: ClassificationResult) -> str:
    pct = 100 * result.trainable_params / max(1, result.total_params)
    return (
        f"# {result.model_name}\n\n"
        "| strategy | trainable params | train time | samples/s | peak memory | accuracy | macro-F1 |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {result.strategy} | {result.trainable_params:,} ({pct:.2f}%) | {result.train_runtime_s:.1f} s "
        f"| {result.samples_per_s:.1f} | {result.peak_memory_mb:.0f} MB | {result.accuracy:.4f} | {result.macro_f1:.4f} |\n\n"
        f"Registered version: `{result.version_uri or 'not registered'}`  \n"
        f"Run folder: `{result.run_dir}`\n"
    )


@flow(name="adapt", description="Adapt a pre-trained language model to a classification task and register it.")
def adapt(config: AdaptConfig = AdaptConfig()) -> ClassificationResult | LanguageModelResult:
    """Prepare the data, train with the chosen strategy, evaluate, and register the model to S3."""
    return run_pipeline(load_config(config))
