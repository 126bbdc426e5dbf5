"""Language-model pipelines: domain adaptation (continued pre-training [-> a task strategy])
and causal LM fine-tuning. :func:`adaptflow.flows.adapt.run_pipeline` hands runs here, so the
``adapt`` flow, the per-strategy flows and ``adaptflow run`` all reach them.

    check inputs -> prepare LM data -> train (adaptflow.tasks.training.lm_worker) -> register
    domain_adaptation with `then`: ... -> the classification pipeline on the adapted model
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks.config import AdaptConfig, DomainAdaptation, load_config
from adaptflow.tasks.data import PreparedData, prepare_data_task, s3_fetcher
from adaptflow.tasks.errors import ConfigError, DataError, Problem, raise_together
from adaptflow.tasks.data.lm import Kind, prepare_lm_data
from adaptflow.tasks.registry.lm_manifest import lm_metrics, register_lm_task
from adaptflow.tasks.modeling import inspect_model
from adaptflow.tasks.training.launch import LM_WORKER_MODULE, train_task
from adaptflow.tasks.training.lm_worker import check_lm_config


@task(name="prepare-lm-data", cache_policy=NO_CACHE)
def prepare_lm_data_task(kind: Kind, cfg: AdaptConfig, model_path: Path, is_decoder: bool) -> PreparedData:
    uses_s3 = any(ref and ref.startswith("s3://") for ref in (cfg.data.data, cfg.data.eval_data))
    prepared = prepare_lm_data(kind, cfg.data, cfg.lm, model_path, cfg.resolved_work_dir(), is_decoder=is_decoder, fetch=s3_fetcher() if uses_s3 else None)
    m = prepared.manifest
    get_run_logger().info(
        f"{'reused' if prepared.reused else 'prepared'} {kind} data {m['key']}: rows {m['splits']}, tokens {m['tokens']}, "
        f"format {m['format']}, packing {m['packing']} -> {prepared.path}"
    )
    return prepared


def _task_config(cfg: AdaptConfig, adapted: Path | str) -> AdaptConfig:
    """The classification run that follows domain adaptation: same settings, adapted model, task data."""
    s = cfg.strategy
    assert isinstance(s, DomainAdaptation) and s.then
    raw = cfg.model_dump(mode="json")
    raw["model"] = str(adapted)
    raw["strategy"] = {"name": s.then, "pooling": s.pooling}
    raw["data"] = {**raw["data"], "data": s.task_data, "eval_data": s.task_eval_data}
    return load_config(raw)


def _prepare(cfg: AdaptConfig, kind: Kind) -> tuple[Path, PreparedData]:
    """Check everything before training; every problem (config, model, data, S3) reported at once."""
    from adaptflow.flows.adapt import InputError, check_inputs

    model_path, found = check_inputs(cfg)
    prepared = None
    if cfg.launch.launcher == "pytorchjob":
        found.append(ConfigError(Problem("launch.launcher", "'pytorchjob' does not run language-model training yet", "use 'local' or 'multinode'")))
    if model_path is not None:
        info = inspect_model(model_path, cfg.trust_remote_code)
        problems = check_lm_config(cfg, info.is_decoder)
        if problems:
            found.append(ConfigError(problems))
        try:
            prepared = prepare_lm_data_task(kind, cfg, model_path, info.is_decoder)
        except DataError as exc:
            found.append(exc)
        if isinstance(cfg.strategy, DomainAdaptation) and cfg.strategy.then:
            try:  # the task data is checked now, not after the domain training
                prepare_data_task(_task_config(cfg, model_path).data, model_path, cfg.resolved_work_dir())
            except (DataError, ConfigError) as exc:
                found.append(exc)
    raise_together(found, mixed=InputError)
    assert model_path is not None and prepared is not None
    return model_path, prepared


def _lm_summary(cfg: AdaptConfig, metrics: dict, run_dir: Path, version) -> dict:
    return {
        "task": metrics["task"],
        "objective": metrics["objective"],
        "strategy": cfg.strategy.name,
        "model_name": cfg.model_name(),
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_runtime_s": metrics["train_runtime_s"],
        "samples_per_s": metrics["samples_per_s"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "metrics": lm_metrics(metrics),
        "run_dir": str(run_dir),
        "model_dir": str(run_dir / "model"),
        "version": version.version if version else None,
        "version_uri": version.uri if version else None,
    }


def run_language_model(cfg: AdaptConfig) -> dict:
    """Domain adaptation (optionally followed by a task strategy) or causal LM fine-tuning."""
    from adaptflow.flows.adapt import _run_dir, run_pipeline

    logger = get_run_logger()
    started = time.perf_counter()
    domain = isinstance(cfg.strategy, DomainAdaptation)
    model_path, prepared = _prepare(cfg, "domain" if domain else "sft")
    run_dir = _run_dir(cfg)
    logger.info(f"run folder: {run_dir}")
    metrics = train_task.with_options(retries=cfg.launch.retries)(cfg, prepared.path, model_path, run_dir, module=LM_WORKER_MODULE)
    then = domain and cfg.strategy.then
    version = None
    if cfg.registry.register_model and not then:  # with `then`, the task model is what gets registered
        version = register_lm_task(cfg, run_dir, prepared.manifest, model_path)
    summary = _lm_summary(cfg, metrics, run_dir, version)
    create_markdown_artifact(lm_summary_markdown(summary), key="lm-summary", description="Language-model adaptation summary")
    logger.info("done: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items() if isinstance(v, float)))
    if then:
        task_summary = run_pipeline(_task_config(cfg, run_dir / "model"))
        task_summary["domain"] = summary
        task_summary["flow_wall_s"] = time.perf_counter() - started
        return task_summary
    summary["flow_wall_s"] = time.perf_counter() - started
    return summary


def lm_summary_markdown(summary: dict) -> str:
    lines = [f"# {summary['model_name']} ({summary['objective']}, {summary['strategy']})", "", "| metric | before | after |", "|---|---|---|"]
    m = summary["metrics"]
    for key, value in m.items():
        if key.endswith("_before") or key == "forgetting" or not isinstance(value, float):
            continue
        before = m.get(f"{key}_before")
        lines.append(f"| {key} | {before:.4f} | {value:.4f} |" if isinstance(before, float) else f"| {key} | | {value:.4f} |")
    if isinstance(m.get("forgetting"), float):
        lines.append(f"\nForgetting (relative change on general reference text): {m['forgetting']:+.1%}")
    lines.append(f"\nRegistered version: `{summary['version_uri'] or 'not registered'}`  \nRun folder: `{summary['run_dir']}`")
    return "\n".join(lines) + "\n"


def is_language_model_run(cfg: AdaptConfig) -> bool:
    return cfg.task == "causal_lm" or isinstance(cfg.strategy, DomainAdaptation)



def print_lm_summary(summary: dict, out) -> None:
    """A rich table of a language-model run: cost, and every score before and after."""
    from rich.table import Table

    pct = 100 * summary["trainable_params"] / max(1, summary["total_params"])
    cost = Table(title=f"AdaptFlow {summary['objective']} results", title_style="bold")
    for col in ("strategy", "trainable params", "train time", "samples/s", "peak memory"):
        cost.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    cost.add_row(summary["strategy"], f"{summary['trainable_params']:,} ({pct:.2f}%)", f"{summary['train_runtime_s']:.1f} s",
                 f"{summary['samples_per_s']:.1f}", f"{summary['peak_memory_mb']:.0f} MB")
    out.print(cost)
    scores = Table(title="scores", title_style="bold")
    for col in ("metric", "before", "after"):
        scores.add_column(col, justify="left" if col == "metric" else "right")
    m = summary["metrics"]
    for key, value in m.items():
        if key.endswith("_before") or not isinstance(value, float):
            continue
        before = m.get(f"{key}_before")
        shown = f"{value:+.1%}" if key == "forgetting" else f"{value:.4f}"
        scores.add_row(key, f"{before:.4f}" if isinstance(before, float) else "", shown)
    out.print(scores)
    out.print(f"run folder: {summary['run_dir']}")
    if summary.get("version_uri"):
        out.print(f"registered version: [bold green]{summary['version_uri']}[/]")
    else:
        out.print(f"adapted model folder: {summary['model_dir']}")
