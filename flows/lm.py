"""Language-model pipelines: causal LM fine-tuning, and domain adaptation (continued pre-training).

    check inputs -> prepare LM data -> train (the one worker, adaptflow.tasks.training.worker) -> register

Domain adaptation with ``then`` is the first stage of a chain that
:func:`adaptflow.flows.adapt.run_pipeline` continues with the task strategy on the adapted
model (:func:`task_config`). This stage checks the task data too, before its own training,
and leaves the registration to the task stage.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from adaptflow.flows.preflight import InputError, collect
from adaptflow.flows.results import LanguageModelResult, new_run_dir, run_fields
from adaptflow.flows.tasks import check_inputs_task
from adaptflow.tasks.base_model import inspect_model
from adaptflow.tasks.config import AdaptConfig, DomainAdaptation, load_config
from adaptflow.tasks.data.lm import Kind, prepare_lm_data
from adaptflow.tasks.data.sources import s3_fetcher
from adaptflow.tasks.data.store import PreparedData
from adaptflow.tasks.data.task import prepare_data_task
from adaptflow.tasks.errors import ConfigError, DataError, raise_together
from adaptflow.tasks.registry.lm_manifest import lm_metrics, register_lm_task
from adaptflow.tasks.training.launch import train_task


@task(name="prepare-lm-data", cache_policy=NO_CACHE)
def prepare_lm_data_task(kind: Kind, cfg: AdaptConfig, model_path: Path, is_decoder: bool) -> PreparedData:
    uses_s3 = any(ref and ref.startswith("s3://") for ref in (cfg.data.data, cfg.data.eval_data))
    prepared = prepare_lm_data(
        kind, cfg.data, cfg.lm, model_path, cfg.resolved_work_dir(), is_decoder=is_decoder, fetch=s3_fetcher() if uses_s3 else None
    )
    m = prepared.manifest
    get_run_logger().info(
        f"{'reused' if prepared.reused else 'prepared'} {kind} data {m['key']}: rows {m['splits']}, tokens {m['tokens']}, "
        f"format {m['format']}, packing {m['packing']} -> {prepared.path}"
    )
    return prepared


def chains_a_task(cfg: AdaptConfig) -> bool:
    """Domain adaptation followed by a task strategy (``then``)."""
    return isinstance(cfg.strategy, DomainAdaptation) and bool(cfg.strategy.then)


def task_config(cfg: AdaptConfig, adapted: Path | str) -> AdaptConfig:
    """The classification run that follows domain adaptation: same settings, adapted model, task data."""
    s = cfg.strategy
    assert isinstance(s, DomainAdaptation) and s.then
    raw = cfg.model_dump(mode="json")
    raw["model"] = str(adapted)
    raw["strategy"] = {"name": s.then, "pooling": s.pooling}
    raw["data"] = {**raw["data"], "data": s.task_data, "eval_data": s.task_eval_data}
    return load_config(raw)


def run_language_model(cfg: AdaptConfig) -> LanguageModelResult:
    """Causal LM fine-tuning, or domain adaptation (the first stage only, when a task strategy follows)."""
    logger = get_run_logger()
    started = time.perf_counter()
    kind: Kind = "domain" if isinstance(cfg.strategy, DomainAdaptation) else "sft"
    work_dir = cfg.resolved_work_dir()

    model_path, found = check_inputs_task(cfg)
    prepared = None
    if model_path is not None:
        is_decoder = inspect_model(model_path, cfg.trust_remote_code).is_decoder
        prepared = collect(found, prepare_lm_data_task, kind, cfg, model_path, is_decoder)
        if chains_a_task(cfg):  # the task data is checked now, not after the domain training
            collect(found, prepare_data_task, task_config(cfg, model_path).data, model_path, work_dir, errors=(DataError, ConfigError))
    raise_together(found, mixed=InputError)
    assert model_path is not None and prepared is not None

    run_dir = new_run_dir(cfg, flow_run.get_id())
    logger.info(f"run folder: {run_dir}")
    metrics = train_task.with_options(retries=cfg.launch.retries)(cfg, prepared.path, model_path, run_dir)
    version = None
    if cfg.registry.register_model and not chains_a_task(cfg):  # with `then`, the task model is what gets registered
        version = register_lm_task(cfg, run_dir, prepared.manifest, model_path)
    result = LanguageModelResult(
        **run_fields(cfg, metrics, run_dir, version),
        task=metrics["task"],
        objective=metrics["objective"],
        metrics=lm_metrics(metrics),
        model_dir=str(run_dir / "model"),
    )
    create_markdown_artifact(lm_summary_markdown(result), key="lm-summary", description="Language-model adaptation summary")
    logger.info("done: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if isinstance(v, float)))
    return result.model_copy(update={"flow_wall_s": time.perf_counter() - started})


def lm_summary_markdown(result: LanguageModelResult) -> str:
    lines = [f"# {result.model_name} ({result.objective}, {result.strategy})", "", "| metric | before | after |", "|---|---|---|"]
    m = result.metrics
    for key, value in m.items():
        if key.endswith("_before") or key == "forgetting" or not isinstance(value, float):
            continue
        before = m.get(f"{key}_before")
        lines.append(f"| {key} | {before:.4f} | {value:.4f} |" if isinstance(before, float) else f"| {key} | | {value:.4f} |")
    if isinstance(m.get("forgetting"), float):
        lines.append(f"\nForgetting (relative change on general reference text): {m['forgetting']:+.1%}")
    lines.append(f"\nRegistered version: `{result.version_uri or 'not registered'}`  \nRun folder: `{result.run_dir}`")
    return "\n".join(lines) + "\n"
