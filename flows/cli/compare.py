"""``adaptflow compare``: the compare flow from the command line.

The data, training, launch, model and registry options are the ones of ``adaptflow run``
(generated from the same config model); strategy options (--lora-r, --last-n-layers, ...)
apply to the strategies that have them.
"""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich import box
from rich.table import Table

from adaptflow.flows.cli.common import WIDE, check_before_prefect, console, out, print_json_stdout, reported, run_flow_with_training_bars
from adaptflow.flows.cli.options import config_options, options_to_config, with_config_options
from adaptflow.flows.results import CompareResult
from adaptflow.tasks.config import load_config_file
from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.evaluation.compare_config import (
    CLASSIFICATION_STRATEGIES,
    GPU_PEAK_TFLOPS,
    GPU_UTILISATION,
    CompareConfig,
    load_compare_config,
)
from adaptflow.tasks.evaluation.compare_report import interval_text, score_text

PANEL = "Comparison"


def _floats(text: str | None, flag: str) -> list[float]:
    try:
        return [float(v) for v in (text or "").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(Problem(flag, f"must be comma-separated numbers (got {text!r})", "e.g. 0.5,1,2")) from None


def build_compare_config(values: dict[str, Any], compare_values: dict[str, Any], base: dict[str, Any] | None = None) -> CompareConfig:
    """Turn the command line (and an optional config file) into a validated CompareConfig."""
    base = dict(base or {})
    names = [n.strip() for n in (compare_values.pop("strategies") or "").split(",") if n.strip()]
    names = names or [s["name"] for s in base.pop("strategies", [])] or list(CLASSIFICATION_STRATEGIES)
    base.pop("strategies", None)
    problems = [
        Problem("--strategies", f"unknown strategy {n!r}", f"choose from {', '.join(CLASSIFICATION_STRATEGIES)}")
        for n in names
        if n not in CLASSIFICATION_STRATEGIES
    ]
    strategy_opts = {o.param: o for o in config_options() if o.section == "strategy"}
    for param, opt in strategy_opts.items():
        if values.get(param) is not None and not set(opt.strategies) & set(names):
            problems.append(Problem(opt.flag, "applies to none of the compared strategies", f"it applies to: {', '.join(opt.strategies)}"))
    if problems:
        raise ConfigError(problems)
    adapt_base = {
        k: v for k, v in base.items() if k in ("model", "trust_remote_code", "data", "training", "launch", "registry", "work_dir")
    }
    configs = []
    for name in names:
        mine = {k: v for k, v in values.items() if k not in strategy_opts or name in strategy_opts[k].strategies}
        configs.append(options_to_config(mine, name, adapt_base))
    first = configs[0]
    raw = {
        **{k: v for k, v in base.items() if k not in adapt_base},
        **first.model_dump(include={"model", "trust_remote_code", "data", "training", "launch", "work_dir"}),
        "registry": {
            "register_model": bool(values.get("register_model") or (base.get("registry") or {}).get("register_model")),
            "model_name": first.registry.model_name,
        },
        "strategies": [c.strategy.model_dump() for c in configs],
        **{k: v for k, v in compare_values.items() if v is not None},
    }
    if values.get("validation_fraction") is None and "validation_fraction" not in (base.get("data") or {}):
        raw["data"].pop("validation_fraction")  # compare's own default: a validation split for the learning curves
    return load_compare_config(raw)


def compare_command(
    strategies: Optional[str] = typer.Option(
        None,
        "--strategies",
        help=f"Comma-separated strategies to compare. (default: all: {','.join(CLASSIFICATION_STRATEGIES)})",
        rich_help_panel=PANEL,
    ),
    budget_examples: Optional[int] = typer.Option(
        None,
        "--budget-examples",
        min=1,
        help="Training examples through the backbone's forward pass, for every strategy: fine-tuning sees the same ones in the same "
        "order; transfer learning's backbone runs once over the training rows and its head makes its --head-epochs passes "
        "over the cached features. (default: --budget-passes)",
        rich_help_panel=PANEL,
    ),
    budget_passes: Optional[int] = typer.Option(
        None,
        "--budget-passes",
        min=1,
        help="Instead: this many passes over the training rows through the backbone, for every strategy. (default: --epochs)",
        rich_help_panel=PANEL,
    ),
    seeds: Optional[int] = typer.Option(
        None,
        "--seeds",
        min=1,
        max=20,
        help="Train each strategy N times (seeds seed, seed+1, ...); scores as mean ± sd. (default: 1)",
        rich_help_panel=PANEL,
    ),
    budget_seconds: Optional[float] = typer.Option(
        None,
        "--budget-seconds",
        help="Instead: every strategy trains on its own schedule and stops after this many seconds of training.",
        rich_help_panel=PANEL,
    ),
    search_lr_factors: Optional[str] = typer.Option(
        None,
        "--search-lr-factors",
        help="Search: multiples of each strategy's learning rate to try, e.g. 0.5,1,2 (needs --validation-fraction; picked on validation only).",
        rich_help_panel=PANEL,
    ),
    search_lora_ranks: Optional[str] = typer.Option(
        None, "--search-lora-ranks", help="Search: LoRA ranks to try, e.g. 4,8,16.", rich_help_panel=PANEL
    ),
    search_patience: Optional[int] = typer.Option(
        None,
        "--search-patience",
        min=1,
        help="Search: early stopping patience (validation evaluations) per trial. (default: 2)",
        rich_help_panel=PANEL,
    ),
    max_train_seconds: Optional[float] = typer.Option(
        None, "--max-train-seconds", help="Recommendation: best strategy training in at most this many seconds.", rich_help_panel=PANEL
    ),
    max_memory_mb: Optional[float] = typer.Option(
        None, "--max-memory-mb", help="Recommendation: best strategy peaking at most at this many MB.", rich_help_panel=PANEL
    ),
    concurrency: Optional[int] = typer.Option(
        None,
        "--concurrency",
        min=1,
        help="Strategies trained at once. Keep 1 on CPU: parallel runs share the cores and distort the timings. (default: 1)",
        rich_help_panel=PANEL,
    ),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="YAML/JSON file with the compare configuration (as printed by --print-config); options override it."
    ),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved configuration as JSON and exit."),
    estimate: bool = typer.Option(
        False,
        "--estimate",
        help="Cost before spending: time a few steps of each strategy on this data and print the projected train time and "
        "peak memory of the whole budget (about a minute); trains nothing else.",
        rich_help_panel=PANEL,
    ),
    gpu: Optional[str] = typer.Option(
        None,
        "--gpu",
        help=f"With --estimate: also project the train time on this GPU class ({', '.join(GPU_PEAK_TFLOPS)}) from FLOP counts "
        f"at {GPU_UTILISATION:.0%} of its published peak.",
        rich_help_panel=PANEL,
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the report (compare_report.json) as JSON on stdout instead of the table; logs stay on stderr."
    ),
    **values: Any,
) -> None:
    """Run the [bold]compare[/] flow: every strategy on the same data, evaluation set and budget, then one report.

    Prints a table (trainable parameters, train time, samples/s, peak memory, artifact size, accuracy, macro-F1, forgetting), saves a quality-vs-cost chart and recommends a strategy. Nothing is registered unless --register-model is given. README: 'Choosing a strategy'.

    Example (SST-2):  adaptflow compare --data train.tsv --eval-data dev.tsv --max-train-samples 2000
    """
    with reported():
        compare_values = {
            "strategies": strategies,
            "budget_examples": budget_examples,
            "budget_passes": budget_passes,
            "budget_seconds": budget_seconds,
            "seeds": seeds,
            "search_lr_factors": _floats(search_lr_factors, "--search-lr-factors") or None,
            "search_lora_ranks": [int(v) for v in _floats(search_lora_ranks, "--search-lora-ranks")] or None,
            "search_patience": search_patience,
            "max_train_seconds": max_train_seconds,
            "max_memory_mb": max_memory_mb,
            "concurrency": concurrency,
        }
        cc = build_compare_config(values, compare_values, load_config_file(config) if config else None)
        if gpu is not None and gpu.lower() not in GPU_PEAK_TFLOPS:
            raise ConfigError(Problem("--gpu", f"unknown GPU class {gpu!r}", f"choose from {', '.join(GPU_PEAK_TFLOPS)}"))
        if gpu is not None and not estimate:
            raise ConfigError(Problem("--gpu", "projects the cost of --estimate", "add --estimate"))
    if print_config:
        out.print_json(cc.model_dump_json(indent=2))
        return
    check_before_prefect(cc.adapt_configs()[0])  # the strategies share the model and data
    if estimate:
        from adaptflow.flows.compare import estimate as run_estimate  # imports torch, as the flow does

        with reported():
            projection = run_estimate(cc, gpu.lower() if gpu else None, on_line=lambda line: console.print(line, highlight=False))
        print_json_stdout(projection) if as_json else print_estimate(projection)
        return
    report = run_compare_with_progress(cc)
    if as_json:
        print_json_stdout(report.model_dump(mode="json"))
    else:
        print_compare(report)


compare_app = typer.Typer()
compare_app.command("compare", context_settings=WIDE)(with_config_options(compare_command))


def run_compare_with_progress(cc: CompareConfig) -> CompareResult:
    """The compare flow in this process, one progress bar per training."""
    from adaptflow.flows.compare import compare  # imports torch: `adaptflow --help` and `models` stay fast without

    return run_flow_with_training_bars(lambda: compare(config=cc), lambda n: f"training run {n + 1}")


# (header, cell, key): key columns are never dropped or cut; the others, last first, give way on narrow terminals.
COLUMNS: list[tuple[str, Any, bool]] = [
    ("strategy", lambda r: r["strategy"] + ("*" if r["pareto_train_runtime_s"] or r["pareto_peak_memory_mb"] else ""), True),
    ("accuracy", lambda r: score_text(r, "accuracy"), True),
    ("95% CI", lambda r: interval_text(r, "accuracy"), True),
    ("macro-F1", lambda r: score_text(r, "macro_f1"), True),
    ("time", lambda r: f"{r['train_runtime_s']:.1f} s", True),
    ("memory", lambda r: f"{r['peak_memory_mb']:.0f} MB", True),
    ("F1 95% CI", lambda r: interval_text(r, "macro_f1"), False),
    ("p vs best", lambda r: f"{r['paired']['p_value']:.3f}" if r.get("paired") else "best", False),
    ("trainable params", lambda r: f"{r['trainable_params']:,} ({r['trainable_pct']:.2f}%)", False),
    ("samples/s", lambda r: f"{r['samples_per_s']:.1f}", False),
    ("artifact", lambda r: f"{r['artifact_mb']:.1f} MB", False),
    ("forgetting", lambda r: f"{r['forgetting']:.4f}", False),
    ("hyper-parameters", lambda r: r["hyperparameters"], False),
]


def fit_columns(rows: list[dict[str, Any]], width: int) -> tuple[list[tuple[str, list[str]]], box.Box]:
    """The columns that fit ``width`` whole: every key column, then the others in order while they fit.

    A boxed table takes 3 characters per column (padding and a border) plus one; when the
    key columns alone do not fit that, the table loses its vertical borders (2 per column).
    """
    cells = [(header, [cell(r) for r in rows], key) for header, cell, key in COLUMNS]
    widths = [max(len(header), *(len(c) for c in column)) for header, column, _ in cells]
    keys = [i for i, (_, _, key) in enumerate(cells) if key]
    style, per_column, edge = box.HEAVY_HEAD, 3, 1
    if edge + sum(widths[i] + per_column for i in keys) > width:
        style, per_column, edge = box.SIMPLE_HEAD, 2, 0
    chosen, used = list(keys), edge + sum(widths[i] + per_column for i in keys)
    for i, (_, _, key) in enumerate(cells):
        if not key and used + widths[i] + per_column <= width:
            chosen.append(i)
            used += widths[i] + per_column
    return [(cells[i][0], cells[i][1]) for i in sorted(chosen)], style


def print_estimate(projection: dict[str, Any]) -> None:
    out.print(f"[bold]Budget[/]: {projection['budget']}.", highlight=False)
    gpu = projection["gpu"]
    table = Table(title="Projected cost of the comparison (from a few timed steps per strategy)", title_style="bold")
    for header in ("strategy", "projected train time", "peak memory", *([f"on {gpu} (projection)"] if gpu else [])):
        table.add_column(header, justify="left" if header == "strategy" else "right", no_wrap=True)
    for r in projection["rows"]:
        cells = [r["strategy"], f"{r['projected_train_s']:.1f} s", f"{r['projected_peak_memory_mb']:.0f} MB"]
        table.add_row(*cells, *([f"{r['gpu_projected_train_s']:.2f} s"] if gpu else []))
    out.print(table)
    out.print(f"projected train time of all strategies: {projection['projected_total_train_s']:.0f} s", highlight=False)
    if gpu:
        out.print(projection["gpu_assumption"], highlight=False)
    out.print(f"probes: {projection['folder']}", soft_wrap=True, highlight=False)


def print_compare(report: CompareResult) -> None:
    out.print(f"[bold]Budget[/]: {report.budget['description']}.", highlight=False)
    columns, style = fit_columns(report.rows, out.width)
    table = Table(title="AdaptFlow comparison", title_style="bold", box=style, pad_edge=style is box.HEAVY_HEAD)
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("strategy", "hyper-parameters") else "right", no_wrap=True)
    for i in range(len(report.rows)):
        table.add_row(*(column[i] for _, column in columns))
    out.print(table)
    shown = {header for header, _ in columns}
    if hidden := [header for header, _, _ in COLUMNS if header not in shown]:
        out.print(f"not shown at this width: {', '.join(hidden)} (all in the report, or --json)", highlight=False)
    seeds = f" (mean±sd over {report.seeds} seeds; intervals and tests of the first)" if report.seeds > 1 else ""
    out.print(f"95% CI: bootstrap over the evaluation rows{seeds}; * on the Pareto front for time or memory", highlight=False)
    for r in report.rows:
        if r.get("paired"):
            p = r["paired"]
            out.print(
                f"paired test {r['strategy']} vs {p['against']}: McNemar mid-p {p['p_value']:.3f} "
                f"({p['b_only']} rows only it got right, {p['a_only']} only {p['against']})",
                highlight=False,
            )
    for name, s in report.search.items():
        out.print(
            f"search {name}: {len(s['trials'])} points, winner {s['winner']['label']} (validation loss {s['winner']['validation_loss']:.4f})"
        )
    for line in [*report.curve_findings, *report.recommendation["text"]]:
        out.print(line.replace("**", ""), highlight=False)
    out.print(f"learning curves: {report.curves_chart}", soft_wrap=True, highlight=False)
    out.print(f"chart: {report.chart}", soft_wrap=True, highlight=False)
    out.print(f"report: {report.compare_dir}/compare_report.json", soft_wrap=True, highlight=False)
    for r in report.rows:
        if r["version_uri"]:
            out.print(f"registered {r['strategy']}: [bold green]{r['version_uri']}[/]")
