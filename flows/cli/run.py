"""``adaptflow run``: the adapt flow from the command line, and the tables of its results.

The options are generated from the config model (flows/cli/options.py); the table printed
depends on the type of the result (flows/results.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from adaptflow.flows.cli.common import WIDE, check_before_prefect, out, print_json_stdout, reported, run_flow_with_training_bars
from adaptflow.flows.cli.options import StrategyChoice, options_to_config, with_config_options
from adaptflow.flows.results import ClassificationResult, DomainThenTaskResult, LanguageModelResult, RunResult
from adaptflow.tasks.config import AdaptConfig, load_config_file


def run_command(
    strategy: Optional[StrategyChoice] = typer.Option(
        None,
        "--strategy",
        "-s",
        help="How to adapt: transfer_learning (frozen backbone, new head; cheapest), partial_fine_tuning "
        "(last N layers), full_fine_tuning (everything; best quality, most cost), lora (low-rank adapters; "
        "near-full quality, tiny artifact), domain_adaptation (continued pre-training on unlabelled domain text, "
        "then optionally --then STRATEGY on --task-data). With --task causal_lm: lora, partial, full or "
        "transfer_learning fine-tune a decoder on prompt/response data. (default: transfer_learning)",
        rich_help_panel="Strategy",
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML/JSON config file (sections as in `--print-config`); options given here override it."
    ),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved configuration as JSON and exit."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the run's result as JSON on stdout instead of the table; logs stay on stderr."
    ),
    **values: Any,
) -> None:
    """Run the [bold]adapt[/] flow: prepare data, train, evaluate, register the model to S3.

    With no options it adapts the bundled offline MiniLM model to the bundled sample reviews
    and registers it to the local S3 server (start it first with `adaptflow stack up`).

    Example (SST-2):  adaptflow run --strategy lora --data train.tsv --eval-data dev.tsv --eval-text-column content --max-train-samples 2000
    """
    with reported():
        base = load_config_file(config) if config else None
        cfg = options_to_config(values, strategy.value if strategy else None, base)
    if print_config:
        out.print_json(cfg.to_json())
        return
    check_before_prefect(cfg)
    result = run_with_progress(cfg)
    if as_json:
        print_json_stdout({"kind": type(result).__name__, **result.model_dump(mode="json")})
    else:
        print_result(result)


run_app = typer.Typer()
run_app.command("run", context_settings=WIDE)(with_config_options(run_command))


def run_with_progress(cfg: AdaptConfig) -> RunResult:
    """Run the adapt flow in this process with a progress bar per training; exit cleanly on user errors."""
    from adaptflow.flows.adapt import adapt  # imports torch: `adaptflow --help` and `models` stay fast without

    stages = [cfg.strategy.name, getattr(cfg.strategy, "then", None) or cfg.strategy.name]  # domain adaptation, then its task strategy
    return run_flow_with_training_bars(lambda: adapt(config=cfg), lambda n: f"training {stages[min(n, 1)]}")


def print_result(result: RunResult) -> None:
    """The tables of a run, chosen by the kind of run."""
    if isinstance(result, DomainThenTaskResult):
        print_lm_summary(result.domain)
        print_summary([result])
    elif isinstance(result, LanguageModelResult):
        print_lm_summary(result)
    elif isinstance(result, ClassificationResult):
        print_summary([result])
    else:
        raise TypeError(f"no table for a {type(result).__name__}")


def print_summary(results: list[ClassificationResult]) -> None:
    table = Table(title="AdaptFlow results", title_style="bold")
    for col in ("strategy", "trainable params", "train time", "samples/s", "peak memory", "accuracy", "macro-F1"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    for r in results:
        table.add_row(
            r.strategy,
            _params(r),
            f"{r.train_runtime_s:.1f} s",
            f"{r.samples_per_s:.1f}",
            f"{r.peak_memory_mb:.0f} MB",
            f"{r.accuracy:.4f}",
            f"{r.macro_f1:.4f}",
        )
    out.print(table)
    for r in results:
        if r.overfitting:
            out.print(f"[yellow]warning[/]: {r.strategy} shows signs of overfitting (see {r.run_dir}/plots/loss_curves.png)")
        out.print(f"run folder: {r.run_dir}")
        out.print(f"registered version: [bold green]{r.version_uri}[/]" if r.version_uri else "not registered (--no-register-model)")


def print_lm_summary(result: LanguageModelResult) -> None:
    """A rich table of a language-model run: cost, and every score before and after."""
    cost = Table(title=f"AdaptFlow {result.objective} results", title_style="bold")
    for col in ("strategy", "trainable params", "train time", "samples/s", "peak memory"):
        cost.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    cost.add_row(
        result.strategy,
        _params(result),
        f"{result.train_runtime_s:.1f} s",
        f"{result.samples_per_s:.1f}",
        f"{result.peak_memory_mb:.0f} MB",
    )
    out.print(cost)
    scores = Table(title="scores", title_style="bold")
    for col in ("metric", "before", "after"):
        scores.add_column(col, justify="left" if col == "metric" else "right")
    m = result.metrics
    for key, value in m.items():
        if key.endswith("_before") or not isinstance(value, float):
            continue
        before = m.get(f"{key}_before")
        shown = f"{value:+.1%}" if key == "forgetting" else f"{value:.4f}"
        scores.add_row(key, f"{before:.4f}" if isinstance(before, float) else "", shown)
    out.print(scores)
    out.print(f"run folder: {result.run_dir}")
    if result.version_uri:
        out.print(f"registered version: [bold green]{result.version_uri}[/]")
    else:
        out.print(f"adapted model folder: {result.model_dir}")


def _params(result: RunResult) -> str:
    """Trainable parameters and their share of the model: '1,234 (0.52%)'."""
    return f"{result.trainable_params:,} ({100 * result.trainable_params / max(1, result.total_params):.2f}%)"
