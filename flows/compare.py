"""The ``compare`` flow: several strategies on the same data, evaluation set and budget, one report.

check inputs -> prepare data (once) -> [search on the validation split] -> train every
strategy (x seeds) -> evaluate -> intervals and paired tests -> forgetting score -> [register]
-> table, learning curves, chart, recommendation. The report is saved in the compare folder
(``compare_report.json``, ``quality_vs_cost.png``, ``learning_curves.png``, ``report.md``,
one run folder per strategy and seed) and published as Prefect artifacts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from adaptflow.flows.preflight import InputError, collect
from adaptflow.flows.results import CompareResult
from adaptflow.flows.tasks import check_inputs_task
from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.data.task import prepare_data_task
from adaptflow.tasks.errors import raise_together
from adaptflow.tasks.evaluation.classification import evaluate_task, metrics_markdown, png_data_uri
from adaptflow.tasks.evaluation.compare import (
    PROBE_FEATURE_ROWS,
    PROBE_STEPS,
    backbone_budget,
    backbone_examples,
    bootstrap_intervals,
    budget_sentence,
    curve_findings,
    curve_view,
    final_config,
    grid,
    learning_curve,
    paired_tests,
    pareto_front,
    pick_best,
    plot_learning_curves,
    plot_quality_vs_cost,
    point_label,
    probe_config,
    probe_view,
    projected_seconds,
    recommend,
    search_view,
    slug,
    trial_config,
    with_budget,
    with_seed,
)
from adaptflow.tasks.evaluation.compare_config import (
    CHART_FILE,
    CURVE_DATA,
    CURVES_FILE,
    GPU_PEAK_TFLOPS,
    GPU_UTILISATION,
    REPORT_FILE,
    SEARCH_DATA,
    CompareConfig,
    load_compare_config,
)
from adaptflow.tasks.evaluation.compare_report import folder_size_mb, report_markdown, table_rows
from adaptflow.tasks.evaluation.cost import examples_per_step, gpu_seconds, training_flops, training_seconds
from adaptflow.tasks.evaluation.forgetting import forgetting_task
from adaptflow.tasks.registry.manifest import register_task
from adaptflow.tasks.training.launch import run_training, train_task


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


def estimate(cc: CompareConfig, gpu: str | None = None, on_line: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Cost before spending: time a few steps of every strategy on the user's data, project the whole budget.

    Each strategy trains PROBE_STEPS optimizer steps (transfer learning: its feature pass and
    head passes over at least PROBE_FEATURE_ROWS rows) in its own worker, on a seeded sample of
    the rows compare would use; the first step's warm-up once plus the other steps' seconds per
    step (per row for features) times the budget's steps (rows) give the projected train time, and the probe's peak memory the projected
    peak (same batch size). With ``gpu``, also a projection from FLOP counts at
    GPU_UTILISATION of that GPU's published peak. No Prefect server is involved.
    """
    plans = cc.adapt_configs()
    model_path, found = check_inputs_task(plans[0])
    raise_together(found, mixed=InputError)
    assert model_path is not None
    prepared = prepare_data(cc.data, model_path, cc.resolved_work_dir())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = cc.resolved_work_dir() / "compare-estimate" / stamp
    data_path = curve_view(prepared.path, out / CURVE_DATA, prepared.manifest["splits"], cc.data.data_seed)
    splits = json.loads((data_path / "manifest.json").read_text())["splits"]
    plans = [with_budget(cfg, cc, splits["train"]) for cfg in plans]
    # Fine-tuning probes stop after PROBE_STEPS steps; cached-feature probes featurize every row, and
    # on a few hundred rows their length-sorted batches carry more padding than the real run's.
    probe_rows_n = max(PROBE_FEATURE_ROWS, PROBE_STEPS * max(examples_per_step(cfg) for cfg in plans))
    probe = probe_view(data_path, out / "probe_data", probe_rows_n, cc.data.data_seed)
    probe_splits = json.loads((probe / "manifest.json").read_text())["splits"]
    mean_tokens = {split: stats["mean"] for split, stats in prepared.manifest["token_lengths"].items()}
    rows = []
    for cfg in plans:
        on_line(f"probing {cfg.strategy.name} ...")
        started = time.perf_counter()
        metrics = run_training(probe_config(cfg), probe, model_path, out / "probe" / cfg.strategy.name)
        row = {
            "strategy": cfg.strategy.name,
            "probe_steps": metrics["steps"],
            "probe_wall_s": time.perf_counter() - started,
            "projected_train_s": projected_seconds(cfg, metrics, probe_splits, splits),
            "projected_peak_memory_mb": metrics["peak_memory_mb"],
            "budget_steps": cfg.training.max_steps,
            "device": metrics["device"],
        }
        if gpu:
            flops = training_flops(cfg, metrics["trainable_params"], metrics["total_params"], mean_tokens, splits)
            row |= {"flops": flops, "gpu_projected_train_s": gpu_seconds(flops, gpu)}
        rows.append(row)
    return {
        "budget": budget_sentence(cc, splits["train"], plans),
        "splits": splits,
        "rows": rows,
        "projected_total_train_s": sum(r["projected_train_s"] for r in rows) * cc.seeds,
        "gpu": gpu,
        "gpu_assumption": (
            f"projection for {gpu}: FLOP counts at {GPU_UTILISATION:.0%} of its published peak "
            f"({GPU_PEAK_TFLOPS[gpu]:g} TFLOP/s); not a measurement"
            if gpu
            else None
        ),
        "folder": str(out),
    }


@flow(name="compare", description="Compare adaptation strategies on the same data, evaluation set and budget; recommend one.")
def compare(config: CompareConfig = CompareConfig()) -> CompareResult:
    """Train every chosen strategy on the same prepared data and budget; publish a table, a chart and a recommendation."""
    cc = load_compare_config(config)
    logger = get_run_logger()
    plans = cc.adapt_configs()
    model_path, found = check_inputs_task(plans[0])  # the strategies share the model and data
    prepared = collect(found, prepare_data_task, cc.data, model_path, cc.resolved_work_dir()) if model_path is not None else None
    raise_together(found, mixed=InputError)
    assert prepared is not None and model_path is not None

    out = _compare_dir(cc)
    out.mkdir(parents=True, exist_ok=True)
    logger.info(f"compare folder: {out}")
    data_path = curve_view(prepared.path, out / CURVE_DATA, prepared.manifest["splits"], cc.data.data_seed)
    splits = json.loads((data_path / "manifest.json").read_text())["splits"]
    plans = [with_budget(cfg, cc, splits["train"]) for cfg in plans]
    searched = search(cc, plans, prepared.path, model_path, out) if cc.search_enabled() else {}
    plans = [final_config(cfg, searched.get(cfg.strategy.name, {}).get("winner", {}).get("point")) for cfg in plans]

    jobs = [
        (with_seed(cfg, k), out / "strategies" / cfg.strategy.name / (f"seed-{k}" if cc.seeds > 1 else ""))
        for cfg in plans
        for k in range(cc.seeds)
    ]
    trained = train_all([(cfg, data_path, model_path, d) for cfg, d in jobs], cc.concurrency)
    label_names = prepared.manifest["label_names"]
    rows, correct, curves = [], {}, {}
    for i, cfg in enumerate(plans):
        runs = list(zip(jobs[i * cc.seeds : (i + 1) * cc.seeds], trained[i * cc.seeds : (i + 1) * cc.seeds]))
        evaluations = [evaluate_task(run_dir) for (_, run_dir), _ in runs]
        (_, run_dir), metrics = runs[0]  # the first seed's model: intervals, paired test, forgetting, registration
        evaluation = evaluations[0]
        predictions = json.loads((run_dir / "predictions.json").read_text())
        correct[cfg.strategy.name] = [p == y for p, y in zip(predictions["predictions"], predictions["labels"])]
        curves[cfg.strategy.name] = learning_curve(metrics["evals"], examples_per_step(cfg), metrics.get("feature_time_s", 0.0))
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
                "train_runtime_s": training_seconds(metrics),
                "samples_per_s": metrics["samples_per_s"],
                "peak_memory_mb": metrics["peak_memory_mb"],
                "artifact_mb": folder_size_mb(run_dir / "model"),
                "accuracy": evaluation.metrics["accuracy"],
                "macro_f1": evaluation.metrics["macro_f1"],
                **{f"{k}_ci": v for k, v in bootstrap_intervals(predictions["labels"], predictions["predictions"], label_names).items()},
                "seeds": {
                    "seed": [c.training.seed for (c, _), _ in runs],
                    "accuracy": [e.metrics["accuracy"] for e in evaluations],
                    "macro_f1": [e.metrics["macro_f1"] for e in evaluations],
                    "train_runtime_s": [training_seconds(m) for _, m in runs],
                },
                "forgetting": forgetting_task(model_path, run_dir / "model"),
                "hyperparameters": _hyperparameters(cfg),
                "steps": metrics["steps"],
                "examples_seen": metrics["examples_seen"],
                "backbone_examples": backbone_examples(cfg, metrics["examples_seen"], splits["train"]),
                "examples_sha256": metrics.get("examples_sha256"),
                "stopped_by_time": metrics.get("stopped_by_time", False),
                "run_dir": str(run_dir),
                "version_uri": version.uri if version else None,
            }
        )
    tests = paired_tests(rows, correct)
    for row in rows:
        row["paired"] = tests.get(row["strategy"])
    for cost in ("train_runtime_s", "peak_memory_mb"):
        for row, on_front in zip(rows, pareto_front(rows, cost)):
            row[f"pareto_{cost}"] = on_front

    chart = plot_quality_vs_cost(rows, out / CHART_FILE)
    curves_chart = plot_learning_curves(curves, out / CURVES_FILE)
    budget = budget_sentence(cc, splits["train"], plans)
    result = CompareResult(
        model=cc.model,
        compare_dir=str(out),
        prepared_data=str(prepared.path),
        eval_rows=splits["eval"],
        splits=splits,
        budget={"backbone_examples": backbone_budget(cc, splits["train"]), "seconds": cc.budget_seconds, "description": budget},
        rows=rows,
        search=searched,
        recommendation=recommend(rows, cc.max_train_seconds, cc.max_memory_mb),
        chart=str(chart),
        seeds=cc.seeds,
        curves=curves,
        curve_findings=curve_findings(curves),
        curves_chart=str(curves_chart),
        config=cc.model_dump(mode="json"),
        flow_run_id=flow_run.get_id(),
    )
    report = result.model_dump()
    markdown = report_markdown(report)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown)
    create_table_artifact(table_rows(rows), key="compare-table", description="Strategies on the same data and budget")
    shown = report_markdown(report, chart_src=png_data_uri(chart), curves_src=png_data_uri(curves_chart))  # the UI renders data: images
    create_markdown_artifact(shown, key="compare-report", description="Strategy comparison: table, search, recommendation, chart")
    logger.info(" ".join(result.recommendation["text"]).replace("**", ""))
    return result
