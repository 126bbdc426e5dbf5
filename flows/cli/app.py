"""The ``adaptflow`` command.

``adaptflow run`` takes one option per field of :class:`adaptflow.tasks.config.AdaptConfig`; the
options, their help and their grouping are derived from the config model, so the CLI,
the Prefect form and the training worker cannot drift apart.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import types
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from adaptflow.flows.cli.models import models_app
from adaptflow.flows.cli.retrain import deploy_command, retrain_command
from adaptflow.tasks.config import STRATEGY_CLASSES, STRATEGY_NAMES, AdaptConfig, adaptflow_home, load_config, load_config_file
from adaptflow.tasks.errors import AdaptFlowError, ConfigError, Problem

console = Console(stderr=True)
# Progress bars that follow a worker redraw twice a second, not rich's default ten: on a small
# machine the worker's threads own the cores, and every redraw takes one of them for a moment.
BAR_REFRESH_PER_S = 2
out = Console(width=None if sys.stdout.isatty() else 120)  # logs and CI: wide enough for the results table

app = typer.Typer(
    help="AdaptFlow: adapt a pre-trained language model to your task (transfer learning, partial or full "
    "fine-tuning, LoRA), measure it, and register it to S3.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
stack_app = typer.Typer(help="The local S3-compatible server (SeaweedFS) used by default, and a Prefect server with a process worker. Data is kept across restarts.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(models_app, name="models")
app.command("retrain", context_settings={"max_content_width": 120})(retrain_command)
app.command("deploy")(deploy_command)

SECTIONS = {"data": "Data", "training": "Training", "launch": "Launch", "registry": "Registry", "lm": "Language model (--task causal_lm, domain_adaptation)"}


# ---- options derived from the config model -------------------------------------------


@dataclass(frozen=True)
class ConfigOption:
    """One CLI option and the config field it sets."""

    param: str  # python identifier == field name
    section: str | None  # None: top level; "strategy": a strategy field
    annotation: Any
    help: str
    panel: str
    strategies: tuple[str, ...] = ()  # for strategy fields: the strategies having it

    @property
    def flag(self) -> str:
        return "--" + self.param.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return any(typing.get_origin(a) is list for a in (self.annotation, *typing.get_args(self.annotation)))


def _cli_type(annotation: Any) -> tuple[Any, str]:
    """A click-friendly type for a field annotation, and extra help text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args else annotation
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        return Enum(f"Choice_{'_'.join(map(str, choices))}", {str(c): str(c) for c in choices}), ""
    if typing.get_origin(base) is list:
        return str, " Comma-separated."
    if base in (int, float, str, bool):
        return base, ""
    return str, ""


def _describe(field, default: Any) -> str:
    text = field.description or ""
    if default not in (None, "", [], ()) and not isinstance(default, BaseModel):
        text += f" (default: {default})"
    return text


def config_options() -> list[ConfigOption]:
    options: list[ConfigOption] = []
    for name, field in AdaptConfig.model_fields.items():
        if name in SECTIONS:
            section_model = field.default_factory if field.default_factory else type(field.default)
            for sub, subfield in section_model.model_fields.items():
                options.append(ConfigOption(sub, name, subfield.annotation, _describe(subfield, subfield.default), SECTIONS[name]))
        elif name == "strategy":
            seen: dict[str, ConfigOption] = {}
            for sname, cls in STRATEGY_CLASSES.items():
                for sub, subfield in cls.model_fields.items():
                    if sub == "name":
                        continue
                    prev = seen.get(sub)
                    holders = (prev.strategies if prev else ()) + (sname,)
                    seen[sub] = ConfigOption(sub, "strategy", subfield.annotation, _describe(subfield, subfield.default), "Strategy", holders)
            for opt in seen.values():
                if len(opt.strategies) < len(STRATEGY_CLASSES):
                    opt = ConfigOption(opt.param, opt.section, opt.annotation, opt.help + f" (only for: {', '.join(opt.strategies)})", opt.panel, opt.strategies)
                options.append(opt)
        else:
            options.append(ConfigOption(name, None, field.annotation, _describe(field, field.default), "Model"))
    return options


def options_to_config(values: dict[str, Any], strategy: str | None, base: dict[str, Any] | None = None) -> AdaptConfig:
    """Merge a config file's dict with the options given on the command line, then validate."""
    raw: dict[str, Any] = json.loads(json.dumps(base or {}))
    problems = []
    chosen = strategy or (raw.get("strategy") or {}).get("name") or "transfer_learning"
    raw.setdefault("strategy", {})
    if raw["strategy"].get("name") != chosen:
        raw["strategy"] = {"name": chosen}
    for opt in config_options():
        value = values.get(opt.param)
        if value is None:
            continue
        if isinstance(value, Enum):
            value = value.value
        if opt.is_list:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if opt.section is None:
            raw[opt.param] = value
        elif opt.section == "strategy":
            if chosen not in opt.strategies:
                problems.append(Problem(opt.flag, f"does not apply to strategy {chosen!r}", f"it applies to: {', '.join(opt.strategies)}"))
                continue
            raw["strategy"][opt.param] = value
        else:
            raw.setdefault(opt.section, {})[opt.param] = value
    try:
        cfg = load_config(raw)
    except ConfigError as exc:
        flags = {opt.param: opt.flag for opt in config_options()}
        for p in exc.problems:
            flag = flags.get(p.where.rsplit(".", 1)[-1])
            problems.append(Problem(f"{p.where} ({flag})", p.what, p.fix) if flag else p)
    if problems:
        raise ConfigError(problems)
    return cfg


def _with_config_options(func):
    """Give ``func`` one keyword option per config field (typer reads ``__signature__``)."""
    params = [p for p in inspect.signature(func).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for opt in config_options():
        cli_type, extra = _cli_type(opt.annotation)
        if cli_type is bool:
            default = typer.Option(None, f"{opt.flag}/--no-{opt.flag[2:]}", help=opt.help + extra, rich_help_panel=opt.panel, show_default=False)
        else:
            default = typer.Option(None, opt.flag, help=opt.help + extra, rich_help_panel=opt.panel, show_default=False)
        params.append(inspect.Parameter(opt.param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Optional[cli_type]))
    func.__signature__ = inspect.Signature(params)
    return func


def _fail(exc: AdaptFlowError) -> typer.Exit:
    console.print(f"[bold red]Error[/]: {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


# ---- adaptflow run -------------------------------------------------------------------


StrategyChoice = Enum("StrategyChoice", {n: n for n in STRATEGY_NAMES})


@app.command(context_settings={"max_content_width": 120})
@_with_config_options
def run(
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
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML/JSON config file (sections as in `--print-config`); options given here override it."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved configuration as JSON and exit."),
    **values: Any,
) -> None:
    """Run the [bold]adapt[/] flow: prepare data, train, evaluate, register the model to S3.

    With no options it adapts the bundled offline MiniLM model to the bundled sample reviews
    and registers it to the local S3 server (start it first with `adaptflow stack up`).

    Example (SST-2):  adaptflow run --strategy lora --data train.tsv --eval-data dev.tsv --eval-text-column content --max-train-samples 2000
    """
    try:
        base = load_config_file(config) if config else None
        cfg = options_to_config(values, strategy.value if strategy else None, base)
    except AdaptFlowError as exc:
        raise _fail(exc) from None
    if print_config:
        out.print_json(cfg.to_json())
        return
    check_before_prefect(cfg)
    summary = run_with_progress(cfg)
    from adaptflow.flows.lm import print_lm_summary

    if "domain" in summary:  # domain adaptation, then a task strategy
        print_lm_summary(summary["domain"], out)
    if "metrics" in summary:  # a language-model run without a classification step
        print_lm_summary(summary, out)
    else:
        print_summary([summary])


def check_before_prefect(cfg: AdaptConfig) -> None:
    """Report bad config, files, columns, labels, model or S3 access now, before a Prefect server is involved."""
    from adaptflow.flows.adapt import preflight

    try:
        preflight(cfg)
    except AdaptFlowError as exc:
        raise _fail(exc) from None


def run_with_progress(cfg: AdaptConfig) -> dict:
    """Run the adapt flow in this process with a progress bar; exit cleanly on user errors."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from adaptflow.flows.adapt import adapt
    from adaptflow.tasks.training.launch import add_listener

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        redirect_stderr=True,
        refresh_per_second=BAR_REFRESH_PER_S,
        redirect_stdout=True,
    )
    bar = progress.add_task(f"training {cfg.strategy.name}", total=None, status="", visible=False)

    def on_event(event: dict) -> None:
        if event["type"] in ("start", "progress"):
            progress.update(bar, total=event["total_steps"], visible=True)
        if event["type"] == "progress":
            progress.update(bar, completed=event["step"], status=f"loss {event['train_loss']:.4f}")

    remove = add_listener(on_event)
    quiet_prefect_tracebacks()
    connect_prefect()
    try:
        with progress:
            return adapt(config=cfg)
    except AdaptFlowError as exc:
        raise _fail(exc) from None
    finally:
        remove()


def connect_prefect() -> None:
    """Say which Prefect server the coming flow run reports to; start the temporary one if there is none.

    Temporary servers of several ``adaptflow`` processes share one SQLite database under
    PREFECT_HOME. Started at the same moment before that database existed, four of them all
    hung in their start-up, each creating the schema. So the first one creates it alone,
    under a lock file, and the others wait for it; with the database in place they start
    side by side. Each still serves its own process only.
    """
    import fcntl

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        console.print(f"Prefect server: {settings.api.url.removesuffix('/').removesuffix('/api')} (the run shows in its UI)", highlight=False)
        return
    console.print("Prefect server: a temporary one in this process (`adaptflow stack up` keeps runs in a UI)", highlight=False)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client uses when no API URL is set
    home = Path(settings.home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "adaptflow-temporary-server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _sqlite_database_exists(settings.server.database.connection_url.get_secret_value()):
                server.start()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    server.start()  # no-op when it started above


def _sqlite_database_exists(url: str) -> bool:
    """Whether a SQLite database URL names a file that exists (other databases: True, nothing to create here)."""
    if not url.startswith("sqlite"):
        return True
    return Path(url.split(":///", 1)[-1]).exists()


def quiet_prefect_tracebacks() -> None:
    """Show user errors as one message: strip tracebacks of AdaptFlowError from Prefect's console logs."""
    import logging

    class DropUserErrorTracebacks(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, AdaptFlowError):
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.getMessage().splitlines()[0]} {type(exc).__name__}: {exc}"
                record.args = ()
            return True

    user_filter = DropUserErrorTracebacks()
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(user_filter)


def print_summary(summaries: list[dict]) -> None:
    table = Table(title="AdaptFlow results", title_style="bold")
    for col in ("strategy", "trainable params", "train time", "samples/s", "peak memory", "accuracy", "macro-F1"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    for s in summaries:
        pct = 100 * s["trainable_params"] / max(1, s["total_params"])
        table.add_row(
            s["strategy"],
            f"{s['trainable_params']:,} ({pct:.2f}%)",
            f"{s['train_runtime_s']:.1f} s",
            f"{s['samples_per_s']:.1f}",
            f"{s['peak_memory_mb']:.0f} MB",
            f"{s['accuracy']:.4f}",
            f"{s['macro_f1']:.4f}",
        )
    out.print(table)
    for s in summaries:
        if s.get("overfitting"):
            out.print(f"[yellow]warning[/]: {s['strategy']} shows signs of overfitting (see {s['run_dir']}/plots/loss_curves.png)")
        out.print(f"run folder: {s['run_dir']}")
        out.print(f"registered version: [bold green]{s['version_uri']}[/]" if s["version_uri"] else "not registered (--no-register-model)")


# ---- adaptflow predict ---------------------------------------------------------------


@app.command("predict")
def predict_command(
    model: str = typer.Option(..., "--model", "-m", help="Registered version: NAME (latest), NAME:7, or NAME@champion (an alias)."),
    data: str = typer.Option(..., "--data", "-d", help="CSV, TSV, JSON lines or Parquet file (or s3:// URI) with a text column; labels not needed."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write, .csv or .jsonl: the input's columns + label, score, prob_<class>."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Column holding the text. Empty: the only text column besides 'label'."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts per forward pass."),
    prompt_column: str = typer.Option("prompt", "--prompt-column", help="Causal LM versions: column holding the prompts.", rich_help_panel="Generation (causal LM versions)"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Tokens generated per prompt at most.", rich_help_panel="Generation (causal LM versions)"),
    do_sample: bool = typer.Option(False, "--sample/--greedy", help="Sample tokens (with --temperature, --top-p) or always take the most likely one.", rich_help_panel="Generation (causal LM versions)"),
    temperature: float = typer.Option(1.0, "--temperature", help="With --sample: below 1 sharper, above 1 more varied.", rich_help_panel="Generation (causal LM versions)"),
    top_p: float = typer.Option(1.0, "--top-p", help="With --sample: sample from the smallest set of tokens holding this probability.", rich_help_panel="Generation (causal LM versions)"),
    seed: int = typer.Option(0, "--seed", help="Random seed, for repeatable sampling.", rich_help_panel="Generation (causal LM versions)"),
) -> None:
    """Run the [bold]predict[/] flow: label every row of a file with a registered classifier, or generate a
    response to every prompt with a registered causal LM (written to a 'generated' column).

    Example:  adaptflow predict --model reviews-lora@champion --data new_reviews.csv --output predictions.csv
    Example:  adaptflow predict --model support-lora@champion --data prompts.jsonl --output answers.jsonl --max-new-tokens 128 --sample --temperature 0.7
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers.utils import logging as hf_logging

    from adaptflow.flows.predict import predict
    from adaptflow.tasks.inference.predict import add_progress_listener

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, redirect_stderr=True, redirect_stdout=True,
    )
    bar = progress.add_task(f"predicting with {model}", total=None, visible=False)

    def on_batch(done: int, total: int) -> None:
        if not progress.tasks[0].visible:  # the clock starts with the first batch, not with Prefect's start-up
            progress.reset(bar, total=total, visible=True)
        progress.update(bar, completed=done)

    remove = add_progress_listener(on_batch)
    hf_logging.disable_progress_bar()  # one bar: ours
    quiet_prefect_tracebacks()
    connect_prefect()
    try:
        with progress:
            result = predict(
                model=model, data=data, output=str(output), text_column=text_column, batch_size=batch_size, prompt_column=prompt_column,
                max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
            )
    except AdaptFlowError as exc:
        raise _fail(exc) from None
    finally:
        remove()
    if result.get("task") == "causal_lm":
        out.print(f"{result['rows']} prompts answered with [bold]{result['model']}[/] -> {result['output']}")
        return
    counts = ", ".join(f"{label}: {n}" for label, n in result["label_counts"].items())
    out.print(f"{result['rows']} rows predicted with [bold]{result['model']}[/] -> {result['output']} ({counts})")


# ---- adaptflow stack -----------------------------------------------------------------


def _stack():
    from adaptflow.infra.stack import LocalS3Stack

    return LocalS3Stack(adaptflow_home())


@stack_app.command("up")
def stack_up(
    prefect: bool = typer.Option(
        True, "--prefect/--no-prefect",
        help="Also start a Prefect server (SQLite in $ADAPTFLOW_HOME/stack/prefect; PostgreSQL when "
        "PREFECT_API_DATABASE_CONNECTION_URL is set) and a process worker on the pool 'adaptflow-local'.",
    ),
    new_prefect_database: bool = typer.Option(
        False, "--new-prefect-database",
        help="Start Prefect with an empty SQLite database; the old one is kept beside it as prefect.db.bak-<time>. "
        "For a database written by another Prefect release, which this one cannot open.",
    ),
) -> None:
    """Start the local S3 server (free ports, generated credentials, data under $ADAPTFLOW_HOME/stack) and a Prefect server + worker."""
    try:
        stack = _stack()
        info = stack.up()
        out.print(f"S3 server running at [bold]{info.endpoint_url}[/] (pid {info.pid}); bucket 'adaptflow'.")
        if prefect:
            from adaptflow.infra.prefect_stack import PrefectStack

            # runs resolve S3 as the CLI does: environment, else this stack
            served = PrefectStack(adaptflow_home()).up(new_database=new_prefect_database)
            out.print(f"Prefect server at [bold]{served.ui_url}[/] (pid {served.server_pid}, {served.database}); "
                      f"process worker on '{served.work_pool}' (pid {served.worker_pid}).")
            out.print(f"`adaptflow run`, `compare`, `retrain` and `predict` now report to this server: their runs show at "
                      f"{served.ui_url}/runs")
            out.print("Next: `adaptflow deploy`, then trigger runs from the UI (Deployments -> Run).")
    except AdaptFlowError as exc:
        raise _fail(exc) from None
    out.print("`adaptflow run` uses the S3 server automatically; other tools: eval \"$(adaptflow stack env)\"")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the Prefect worker and server and the S3 server started by `stack up` (their data stays for the next `up`)."""
    from adaptflow.infra.prefect_stack import PrefectStack

    try:
        if PrefectStack(adaptflow_home()).down():
            out.print("Prefect worker and server stopped.")
        _stack().down()
    except AdaptFlowError as exc:
        raise _fail(exc) from None
    out.print("S3 server stopped.")


@stack_app.command("status")
def stack_status() -> None:
    """Say whether the local S3 server is running, and where."""
    info = _stack().status()
    if info is None:
        out.print("S3 server: not running (start it with `adaptflow stack up`).")
        raise typer.Exit(1)
    out.print(f"S3 server: running at {info.endpoint_url} (pid {info.pid}), data in {info.data_dir}")
    from adaptflow.infra.prefect_stack import PrefectStack

    prefect_stack = PrefectStack(adaptflow_home())
    served = prefect_stack.status()
    if served is None:
        out.print("Prefect server: not running (`adaptflow stack up` starts it).")
    else:
        worker = f"worker pid {served.worker_pid}" if prefect_stack.worker_running(served) else "worker NOT running"
        out.print(f"Prefect server: running at {served.ui_url} (pid {served.server_pid}, {served.database}); {worker}")


@stack_app.command("env")
def stack_env() -> None:
    """Print `export` lines for the local S3 server, for other tools: eval "$(adaptflow stack env)"."""
    stack = _stack()
    if stack.status() is None:
        console.print("S3 server is not running: start it with `adaptflow stack up`.")
        raise typer.Exit(1)
    for key, value in stack.env().items():
        out.print(f"export {key}={value}", highlight=False)
    from adaptflow.infra.prefect_stack import PrefectStack

    served = PrefectStack(adaptflow_home()).status()
    if served is not None:
        out.print(f"export PREFECT_API_URL={served.api_url}", highlight=False)


# ---- adaptflow compare (flows/compare_cli.py reuses the option machinery above) ---------

if __name__ != "__main__":  # under `python -m adaptflow.flows.cli.app` the importable module below registers it
    from adaptflow.flows.cli.compare import register as _register_compare

    _register_compare(app)


def prefect_settings() -> dict:
    """Prefect settings for this CLI process: the stack's server when it runs, and a patient temporary server.

    An explicit ``PREFECT_API_URL`` (environment or Prefect profile) wins. Otherwise, when
    ``adaptflow stack up`` started a server for this ADAPTFLOW_HOME, every run, compare,
    retrain and predict goes there, so it shows in that UI. With neither, Prefect starts a
    temporary server inside this process, as ``prefect`` itself does. Prefect reads its
    environment once, at import, so these are applied as settings, not environment variables.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings

    from adaptflow.infra.prefect_stack import PrefectStack

    updates: dict = {}
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        # Four `adaptflow run` started at once on 2 cores took longer than Prefect's 20 s default
        # to bring up their temporary servers, and all failed.
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 180
    if not get_current_settings().api.url:
        info = PrefectStack(adaptflow_home()).status()
        if info is not None:
            updates[PREFECT_API_URL] = info.api_url
    return updates


def main() -> None:
    # No usage telemetry from the temporary Prefect server (its own process reads this): there may
    # be no network, and its failures print tracebacks that are not the user's problem.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import temporary_settings

    with temporary_settings(updates=prefect_settings()):
        app()


if __name__ == "__main__":
    # compare_cli imports this module by name: run that copy, the one every command is registered on
    from adaptflow.flows.cli.app import main as _main

    sys.exit(_main())
