"""What every ``adaptflow`` command shares: the consoles, user errors as one message, the Prefect
connection, and the progress bars that follow training.

A user error (:class:`adaptflow.tasks.errors.AdaptFlowError`) ends a command with its
message and exit code, never a traceback.

Start-up cost: the CLI answers ``--help``, ``stack``, ``models`` and every preflight refusal
without importing torch, the Hugging Face libraries, Ray or Prefect
(tests/unit/test_cli_imports.py checks it). The command modules import only light modules
at their top; a command imports its flow (torch, Prefect) in its body, once its input
passed the checks, and :func:`prefect_session` is where Prefect is first imported.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from adaptflow.tasks.errors import AdaptFlowError

if TYPE_CHECKING:  # the root's --help loads no config model (half of its start-up)
    from adaptflow.tasks.config import AdaptConfig

T = TypeVar("T")

console = Console(stderr=True)
WIDE = {"max_content_width": 120}
"""Context settings of the commands with many options: their help uses up to 120 columns."""
# Progress bars that follow a worker redraw twice a second, not rich's default ten: on a small
# machine the worker's threads own the cores, and every redraw takes one of them for a moment.
BAR_REFRESH_PER_S = 2


class _Stdout:
    """Results on stdout through a rich Console sized when something is printed, not at import.

    In a terminal: its width (or COLUMNS). In logs and CI: 120 columns, wide enough for the
    results tables, unless COLUMNS says how wide. Rich reads COLUMNS when a Console is made, so
    one made at import would keep the width of whatever environment imported it first.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120), name)


out = _Stdout()


def print_json_stdout(data: Any) -> None:
    """A command's machine-readable result (``--json``): plain JSON on stdout, nothing else there; logs stay on stderr."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(exc: AdaptFlowError) -> typer.Exit:
    console.print(f"[bold red]Error[/]: {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


@contextmanager
def reported() -> Iterator[None]:
    """A user error inside the block ends the command with its message and exit code."""
    try:
        yield
    except AdaptFlowError as exc:
        raise fail(exc) from None


def check_before_prefect(cfg: "AdaptConfig") -> None:
    """Report bad config, files, columns, labels, model or S3 access now, before a Prefect server is involved."""
    from adaptflow.flows.preflight import preflight  # reads data files (pandas) and S3 (boto3): only when a run is asked for

    with reported():
        preflight(cfg)


@contextmanager
def prefect_session() -> Iterator[None]:
    """Inside the block, this process's flow runs report to a Prefect server (infra/prefect_client.py says which),
    and user errors in Prefect's console logs are one line, not a traceback."""
    from adaptflow.infra.prefect_client import prefect_server  # Prefect itself: only once a flow is about to run

    quiet_prefect_tracebacks()  # after that import: Prefect sets up its log handlers when imported
    with reported(), prefect_server(lambda line: console.print(line, highlight=False)):
        yield


def quiet_prefect_tracebacks() -> None:
    """Show user errors as one message: strip tracebacks of AdaptFlowError from Prefect's console logs."""

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


def run_flow_with_training_bars(run: Callable[[], T], describe: Callable[[int], str]) -> T:
    """Run a flow in this process, with one progress bar per training it launches; exit cleanly on user errors.

    ``describe(n)`` names the bar of the n-th training (from 0). The bar appears when its
    training starts, so its clock does not count Prefect's start-up or the data preparation.
    """
    from adaptflow.tasks.training.launch import add_listener  # imports torch: only once a flow runs

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
        redirect_stdout=True,
        refresh_per_second=BAR_REFRESH_PER_S,
    )
    bars: list[int] = []

    def on_event(event: dict) -> None:
        if event["type"] == "start":
            bars.append(progress.add_task(describe(len(bars)), total=event["total_steps"], status=""))
        elif event["type"] == "progress" and bars:
            progress.update(bars[-1], total=event["total_steps"], completed=event["step"], status=f"loss {event['train_loss']:.4f}")

    remove = add_listener(on_event)
    try:
        with prefect_session(), progress:
            return run()
    finally:
        remove()
