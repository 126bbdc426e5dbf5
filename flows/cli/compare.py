"""``adaptflow compare``: the compare flow from the command line.

The data, training, launch, model and registry options are the ones of ``adaptflow run``
(generated from the same config model); strategy options (--lora-r, --last-n-layers, ...)
apply to the strategies that have them.
"""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from adaptflow.flows.cli.common import check_before_prefect, out, reported, run_flow_with_training_bars
from adaptflow.flows.cli.options import config_options, options_to_config
from adaptflow.flows.results import CompareResult
from adaptflow.tasks.config import load_config_file
from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.evaluation.compare import CLASSIFICATION_STRATEGIES, CompareConfig, load_compare_config

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
        help="Training examples every strategy sees (the same ones, in the same order). (default: --epochs passes over the training data)",
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
            "budget_seconds": budget_seconds,
            "search_lr_factors": _floats(search_lr_factors, "--search-lr-factors") or None,
            "search_lora_ranks": [int(v) for v in _floats(search_lora_ranks, "--search-lora-ranks")] or None,
            "search_patience": search_patience,
            "max_train_seconds": max_train_seconds,
            "max_memory_mb": max_memory_mb,
            "concurrency": concurrency,
        }
        cc = build_compare_config(values, compare_values, load_config_file(config) if config else None)
    if print_config:
        out.print_json(cc.model_dump_json(indent=2))
        return
    check_before_prefect(cc.adapt_configs()[0])  # the strategies share the model and data
    report = run_compare_with_progress(cc)
    print_compare(report)


def run_compare_with_progress(cc: CompareConfig) -> CompareResult:
    """The compare flow in this process, one progress bar per training."""
    from adaptflow.flows.compare import compare  # imports torch: `adaptflow --help` and `models` stay fast without

    return run_flow_with_training_bars(lambda: compare(config=cc), lambda n: f"training run {n + 1}")


def print_compare(report: CompareResult) -> None:
    table = Table(title=f"AdaptFlow comparison ({report.budget['description']})", title_style="bold")
    for col in (
        "strategy",
        "trainable params",
        "train time",
        "samples/s",
        "peak memory",
        "artifact",
        "accuracy",
        "macro-F1",
        "forgetting",
        "hyper-parameters",
    ):
        table.add_column(col, justify="left" if col in ("strategy", "hyper-parameters") else "right", no_wrap=True)
    for r in report.rows:
        star = " *" if r["pareto_train_runtime_s"] or r["pareto_peak_memory_mb"] else ""
        table.add_row(
            r["strategy"] + star,
            f"{r['trainable_params']:,} ({r['trainable_pct']:.2f}%)",
            f"{r['train_runtime_s']:.1f} s",
            f"{r['samples_per_s']:.1f}",
            f"{r['peak_memory_mb']:.0f} MB",
            f"{r['artifact_mb']:.1f} MB",
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
            f"{r['forgetting']:.4f}",
            r["hyperparameters"],
        )
    out.print(table)
    out.print("* on the Pareto front (no other strategy is both cheaper and better) for time or memory")
    for name, s in report.search.items():
        out.print(
            f"search {name}: {len(s['trials'])} points, winner {s['winner']['label']} (validation loss {s['winner']['validation_loss']:.4f})"
        )
    for line in report.recommendation["text"]:
        out.print(line.replace("**", ""))
    out.print(f"chart: {report.chart}")
    out.print(f"report: {report.compare_dir}/compare_report.json")
    for r in report.rows:
        if r["version_uri"]:
            out.print(f"registered {r['strategy']}: [bold green]{r['version_uri']}[/]")
