"""``adaptflow runs gc``: prune old run folders and their checkpoints (rules: flows/runs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.filesize import decimal
from rich.table import Table

from adaptflow.flows.cli.common import out, reported
from adaptflow.flows.runs import gc_runs
from adaptflow.tasks.config import AdaptConfig

runs_app = typer.Typer(help="Run folders on this machine (WORK/runs/<model>/<time>-<run id>/).", no_args_is_help=True)


@runs_app.command("gc")
def gc_command(
    model: Optional[str] = typer.Argument(None, help="Only this model's runs. Empty: every model."),
    older_than: float = typer.Option(30.0, "--older-than", metavar="DAYS", help="Prune only runs unchanged for this many days."),
    keep_last: int = typer.Option(3, "--keep-last", metavar="N", help="Always keep the N newest runs of each model."),
    checkpoints_only: bool = typer.Option(
        False, "--checkpoints-only", help="Remove only the pruned runs' checkpoints/ (the largest part); keep model/, metrics, logs."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="The runs' work folder. Empty: ~/.adaptflow/work (ADAPTFLOW_HOME)."),
) -> None:
    """Free disk space: remove old run folders (or only their checkpoints), never a run in progress.

    Every `adaptflow run` leaves a folder with its model and checkpoints (hundreds of MB for a full
    fine-tuning); registered versions do not need them. Kept: the --keep-last newest runs of each model,
    runs changed in the last --older-than days, and any run in progress (used by a running process, or
    changed in the last hour).

    Example:  adaptflow runs gc --dry-run                       # list what would go
    Example:  adaptflow runs gc --older-than 7 --keep-last 1    # remove runs idle for a week, keep each model's newest
    Example:  adaptflow runs gc --older-than 0 --checkpoints-only
    """
    root = work_dir.expanduser() if work_dir else AdaptConfig().resolved_work_dir()
    with reported():
        decisions = gc_runs(
            root, older_than_days=older_than, keep_last=keep_last, checkpoints_only=checkpoints_only, dry_run=dry_run, model=model
        )
    if not decisions:
        out.print(f"no runs under {root / 'runs'}")
        return
    table = Table(title=f"Runs under {root / 'runs'}", title_style="bold")
    for column in ("model", "run", "idle", "size", "action", "why"):
        table.add_column(column, justify="right" if column in ("idle", "size") else "left")
    prefix = "would " if dry_run else ""
    for d in decisions:
        action = "keep" if d.action == "keep" else f"{prefix}{d.action}"
        style = "" if d.action == "keep" else "bold"
        table.add_row(
            d.model, d.path.name, f"{d.age_days:.1f} d", decimal(d.size_bytes), f"[{style}]{action}[/]" if style else action, d.reason
        )
    out.print(table)
    freed = sum(d.size_bytes for d in decisions if d.action != "keep")
    count = sum(1 for d in decisions if d.action != "keep")
    out.print(f"{'would free' if dry_run else 'freed'} {decimal(freed)} from {count} run(s); kept {len(decisions) - count}")
