"""The ``compare`` flow: several strategies on the same data, evaluation set and budget, one report.

check inputs -> prepare data (once) -> [search on the validation split] -> train every
strategy -> evaluate -> forgetting score -> [register] -> table, chart, recommendation.
The report is saved in the compare folder (``compare_report.json``, ``quality_vs_cost.png``,
``report.md``, one run folder per strategy) and published as Prefect artifacts.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from adaptflow.flows.preflight import InputError, check_inputs, collect
from adaptflow.flows.results import CompareResult
from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.data.task import prepare_data_task
from adaptflow.tasks.errors import raise_together
from adaptflow.tasks.evaluation.classification import evaluate_task, metrics_markdown, png_data_uri
from adaptflow.tasks.evaluation.compare import (
    CHART_FILE,
    REPORT_FILE,
    SEARCH_DATA,
    CompareConfig,
    final_config,
    folder_size_mb,
    grid,
    load_compare_config,
    pareto_front,
    pick_best,
    plot_quality_vs_cost,
    point_label,
    recommend,
    report_markdown,
    search_view,
    slug,
    table_rows,
    trial_config,
    with_budget,
)
from adaptflow.tasks.evaluation.forgetting import forgetting_task
from adaptflow.tasks.registry.manifest import register_task
from adaptflow.tasks.training.launch import train_task


def _compare_dir(cc: CompareConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return cc.resolved_work_dir() / "compare" / f"{stamp}-{(flow_run.get_id() or 'local')[:8]}"


def train_all(jobs: list[tuple[AdaptConfig, Path, Path, Path]], concurrency: int) -> list[dict]:
    """Train every job, at most ``concurrency`` at a time; metrics in the order of ``jobs``."""
    if concurrency <= 1:
        return [train_task.with_options(retries=cfg.launch.retries)(cfg, data, model, run_dir) for cfg, data, model, run_dir in jobs]
    results: list[dict] = []
    for start in range(0, len(jobs), concurrency):
        wave = [
            train_task.with_options(retries=cfg.launch.retries).submit(cfg, data, model, run_dir)
            for cfg, data, model, run_dir in jobs[start : start + concurrency]
        ]
        results += [future.result() for future in wave]
    return results


def search(cc: CompareConfig, plans: list[AdaptConfig], prepared_path: Path, model_path: Path, out: Path) -> dict[str, dict]:
    """Grid search per strategy on a view of the data without the evaluation split; returns the trials and winners."""
    logger = get_run_logger()
    view = search_view(prepared_path, out / SEARCH_DATA)
    found: dict[str, dict] = {}
    for cfg in plans:
        points = grid(cfg, cc)
        if len(points) < 2:
            continue
        trials = [trial_config(cfg, p, cc.search_patience) for p in points]
        dirs = [out / "search" / cfg.strategy.name / slug(point_label(p)) for p in points]
        metrics = train_all([(t, view, model_path, d) for t, d in zip(trials, dirs)], cc.concurrency)
        records = [
            {
                "point": p,
                "label": point_label(p),
                "validation_loss": m["eval_loss"],
                "validation_accuracy": m["eval_accuracy"],
                "steps": m["steps"],
                "stopped_early": m["stopped_early"],
                "run_dir": str(d),
                "split": "validation",
            }
            for p, m, d in zip(points, metrics, dirs)
        ]
        winner = pick_best(records)
        logger.info(
            f"search {cfg.strategy.name}: {winner['label']} wins (validation loss {winner['validation_loss']:.4f}) of {len(records)} points"
        )
        found[cfg.strategy.name] = {"trials": records, "winner": winner}
    return found


def _hyperparameters(cfg: AdaptConfig) -> str:
    text = f"lr {cfg.learning_rate():.2g}"
    return text + (f", r {cfg.strategy.lora_r}" if cfg.strategy.name == "lora" else "")


@flow(name="compare", description="Compare adaptation strategies on the same data, evaluation set and budget; recommend one.")
def compare(config: CompareConfig = CompareConfig()) -> CompareResult:
    """Train every chosen strategy on the same prepared data and budget; publish a table, a chart and a recommendation."""
    cc = load_compare_config(config)
    logger = get_run_logger()
    plans = cc.adapt_configs()
    model_path, found = check_inputs(plans[0])  # the strategies share the model and data
    prepared = collect(found, prepare_data_task, cc.data, model_path, cc.resolved_work_dir()) if model_path is not None else None
    raise_together(found, mixed=InputError)
    assert prepared is not None and model_path is not None

    out = _compare_dir(cc)
    out.mkdir(parents=True, exist_ok=True)
    logger.info(f"compare folder: {out}")
    splits = prepared.manifest["splits"]
    plans = [with_budget(cfg, cc, splits["train"]) for cfg in plans]
    searched = search(cc, plans, prepared.path, model_path, out) if cc.search_enabled() else {}
    plans = [final_config(cfg, searched.get(cfg.strategy.name, {}).get("winner", {}).get("point")) for cfg in plans]

    run_dirs = [out / "strategies" / cfg.strategy.name for cfg in plans]
    all_metrics = train_all([(cfg, prepared.path, model_path, d) for cfg, d in zip(plans, run_dirs)], cc.concurrency)
    rows = []
    for cfg, run_dir, metrics in zip(plans, run_dirs, all_metrics):
        evaluation = evaluate_task(run_dir)
        version = (
            register_task(cfg, run_dir, prepared.manifest, model_path, metrics_markdown(evaluation))
            if cfg.registry.register_model
            else None
        )
        rows.append(
            {
                "strategy": cfg.strategy.name,
                "trainable_params": metrics["trainable_params"],
                "total_params": metrics["total_params"],
                "trainable_pct": 100 * metrics["trainable_params"] / max(1, metrics["total_params"]),
                "train_runtime_s": metrics["train_runtime_s"],
                "samples_per_s": metrics["samples_per_s"],
                "peak_memory_mb": metrics["peak_memory_mb"],
                "artifact_mb": folder_size_mb(run_dir / "model"),
                "accuracy": evaluation.metrics["accuracy"],
                "macro_f1": evaluation.metrics["macro_f1"],
                "forgetting": forgetting_task(model_path, run_dir / "model"),
                "hyperparameters": _hyperparameters(cfg),
                "steps": metrics["steps"],
                "examples_seen": metrics["examples_seen"],
                "examples_sha256": metrics.get("examples_sha256"),
                "stopped_by_time": metrics.get("stopped_by_time", False),
                "run_dir": str(run_dir),
                "version_uri": version.uri if version else None,
            }
        )
    for cost in ("train_runtime_s", "peak_memory_mb"):
        for row, on_front in zip(rows, pareto_front(rows, cost)):
            row[f"pareto_{cost}"] = on_front

    chart = plot_quality_vs_cost(rows, out / CHART_FILE)
    budget = (
        f"{cc.budget_seconds:g} s of training per strategy"
        if cc.budget_seconds
        else f"{rows[0]['examples_seen']:,} training examples per strategy, the same ones in the same order ({plans[0].training.max_steps} steps)"
    )
    result = CompareResult(
        model=cc.model,
        compare_dir=str(out),
        prepared_data=str(prepared.path),
        eval_rows=splits["eval"],
        splits=splits,
        budget={"examples": None if cc.budget_seconds else rows[0]["examples_seen"], "seconds": cc.budget_seconds, "description": budget},
        rows=rows,
        search=searched,
        recommendation=recommend(rows, cc.max_train_seconds, cc.max_memory_mb),
        chart=str(chart),
        config=cc.model_dump(mode="json"),
        flow_run_id=flow_run.get_id(),
    )
    report = result.model_dump()
    markdown = report_markdown(report)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown)
    create_table_artifact(table_rows(rows), key="compare-table", description="Strategies on the same data and budget")
    shown = report_markdown(report, chart_src=png_data_uri(chart))  # the chart inline: the UI renders data: images
    create_markdown_artifact(shown, key="compare-report", description="Strategy comparison: table, search, recommendation, chart")
    logger.info(" ".join(result.recommendation["text"]).replace("**", ""))
    return result
