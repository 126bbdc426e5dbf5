"""Housekeeping of run folders (``adaptflow runs gc``).

Every run leaves ``WORK/runs/<model name>/<UTC time>-<run id>/`` behind (see
:func:`adaptflow.flows.results.new_run_dir`): its configuration, metrics, logs and plots,
``model/`` and, with ``--checkpoint-every``, ``checkpoints/`` (hundreds of MB for a full
fine-tuning). A registered version no longer needs them.

Rules of :func:`gc_runs`:

- Per model, the ``keep_last`` newest runs are kept (their folder names start with the
  UTC time, so names sort by age).
- Of the others, a run whose files last changed ``older_than_days`` days ago or more is
  pruned: its whole folder, or only its ``checkpoints/`` with ``checkpoints_only``.
- A run in progress is never touched: one whose folder a live process names on its
  command line (the training processes name ``RUN/run_spec.json``), or in which anything
  changed in the last :data:`ACTIVE_S` seconds (a run's ``worker.log`` is written line by
  line while it trains; evaluation and registration write their files as they go).
- ``dry_run`` decides the same and removes nothing.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from adaptflow.tasks.errors import ConfigError, Problem

ACTIVE_S = 3600.0
"""A run changed this recently counts as in progress, whatever the options."""
CHECKPOINTS = "checkpoints"
DAY_S = 86400.0


@dataclass(frozen=True)
class RunDecision:
    """What gc does with one run folder, and why."""

    path: Path
    model: str
    age_days: float
    """Days since anything in the folder last changed."""
    size_bytes: int
    """Bytes that go (or would go) when removed; the whole folder's bytes when kept."""
    action: str
    """'remove', 'remove checkpoints' or 'keep'."""
    reason: str


def _walk(folder: Path) -> tuple[float, int]:
    """The newest modification time in ``folder`` (itself included) and the bytes of its files."""
    newest, size = folder.stat().st_mtime, 0
    for path in folder.rglob("*"):
        try:
            info = path.lstat()
        except FileNotFoundError:  # removed while we looked: a run still at work
            continue
        newest = max(newest, info.st_mtime)
        if path.is_file() and not path.is_symlink():
            size += info.st_size
    return newest, size


def folders_in_use(root: Path) -> set[Path]:
    """Run folders under ``root`` that a live process names on its command line."""
    prefix = str(root.resolve()) + "/"
    used = set()
    for proc in psutil.process_iter(["cmdline"]):
        for part in proc.info.get("cmdline") or []:
            if part.startswith(prefix):
                relative = Path(part[len(prefix) :]).parts
                if len(relative) >= 2:
                    used.add(root.resolve() / relative[0] / relative[1])
    return used


def gc_runs(
    work_dir: Path,
    *,
    older_than_days: float,
    keep_last: int,
    checkpoints_only: bool = False,
    dry_run: bool = False,
    model: str | None = None,
    now: float | None = None,
) -> list[RunDecision]:
    """Prune old run folders (or their checkpoints) under ``work_dir/runs``; returns a decision per run, newest first per model."""
    problems = []
    if older_than_days < 0:
        problems.append(Problem("--older-than", f"must be 0 or more days (got {older_than_days})"))
    if keep_last < 0:
        problems.append(Problem("--keep-last", f"must be 0 or more (got {keep_last})"))
    root = work_dir / "runs"
    if model is not None and not (root / model).is_dir():
        problems.append(Problem(f"model {model!r}", f"has no runs under {root}", "run `adaptflow runs gc --dry-run` to list the models"))
    if problems:
        raise ConfigError(problems)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    in_use = folders_in_use(root)
    decisions = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and (model is None or p.name == model)):
        runs = sorted((p for p in model_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
        for rank, run in enumerate(runs):
            newest, size = _walk(run)
            age_days = (now - newest) / DAY_S
            decision = _decide(run, rank, age_days, now - newest, in_use, older_than_days, keep_last, checkpoints_only)
            if decision is None:
                decisions.append(RunDecision(run, model_dir.name, age_days, size, "keep", "nothing to prune"))
                continue
            action, reason = decision
            target = run / CHECKPOINTS if action == "remove checkpoints" else run
            freed = size if target == run else _walk(target)[1]
            decisions.append(RunDecision(run, model_dir.name, age_days, freed if action != "keep" else size, action, reason))
            if action != "keep" and not dry_run:
                shutil.rmtree(target)
        if not dry_run and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()
    return decisions


def _decide(
    run: Path,
    rank: int,
    age_days: float,
    idle_s: float,
    in_use: set[Path],
    older_than_days: float,
    keep_last: int,
    checkpoints_only: bool,
) -> tuple[str, str] | None:
    if run.resolve() in in_use:
        return "keep", "in progress (a running process uses it)"
    if idle_s < ACTIVE_S:
        return "keep", f"in progress (changed {idle_s / 60:.0f} min ago)"
    if rank < keep_last:
        return "keep", f"one of the {keep_last} newest of its model"
    if age_days < older_than_days:
        return "keep", f"younger than {older_than_days:g} days"
    if checkpoints_only:
        return ("remove checkpoints", f"older than {older_than_days:g} days") if (run / CHECKPOINTS).is_dir() else None
    return "remove", f"older than {older_than_days:g} days, not among the {keep_last} newest"
