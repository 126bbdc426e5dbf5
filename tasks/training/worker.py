"""The training worker: runs inside every training process (plain python, torchrun, accelerate launch).

    python -m adaptflow.tasks.training.worker RUN_DIR/run_spec.json

One entry point for every run: a language-model run (continued pre-training or causal LM
fine-tuning, tasks/training/lm.py) or a classification run (tasks/training/classification.py),
chosen from the spec's config, both trained by the one engine (tasks/training/engine.py).
A :class:`RunSpec` goes in; ``ADAPTFLOW_EVENT`` lines come out, and the run's files
(``metrics.json``, ``model/``, ``checkpoints/``...) land in its run directory.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from adaptflow.tasks.errors import AdaptFlowError
from adaptflow.tasks.training.classification import ClassificationTask
from adaptflow.tasks.training.engine import EVENT_PREFIX, RunSpec, TrainingTask, run_task
from adaptflow.tasks.training.lm import LanguageModelTask, is_language_model_run

MODULE = "adaptflow.tasks.training.worker"


def task_for(spec: RunSpec) -> TrainingTask:
    """What the run trains: a language model, or a classifier."""
    return LanguageModelTask() if is_language_model_run(spec.config) else ClassificationTask()


def run(spec: RunSpec) -> dict:
    """Train the run described by ``spec``; returns its metrics."""
    return run_task(spec, task_for(spec))


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies (Linux)."""
WATCH_PARENT_S = 1.0


def die_with_parent(interval_s: float = WATCH_PARENT_S) -> None:
    """End this process when the one that started it (the launcher: torchrun's agent, or the train task) dies.

    A rank left running without its agent would train unsupervised and write checkpoints a
    retry then resumes from. Linux's parent-death signal does it at once; a thread that
    watches ``os.getppid()`` is the fallback (other systems, or a parent that died before
    the signal was set).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def error_event(exc: AdaptFlowError) -> str:
    """The one ``error`` event line that carries a worker's AdaptFlowError to the train task."""
    return EVENT_PREFIX + json.dumps({"type": "error", "kind": type(exc).__name__, "problems": [vars(p) for p in exc.problems]})


def main(argv: list[str] | None = None) -> int:
    """Read the spec, run, report an AdaptFlowError as one error event."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} RUN_DIR/run_spec.json", file=sys.stderr)
        return 2
    die_with_parent()
    try:
        run(RunSpec.read(Path(args[0])))
    except AdaptFlowError as exc:
        print(error_event(exc), flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
