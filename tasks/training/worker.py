"""The training worker: runs inside every training process (plain python, torchrun, accelerate launch).

    python -m adaptflow.tasks.training.worker RUN_DIR/run_spec.json

One entry point for every run: a language-model run (continued pre-training or causal LM
fine-tuning, tasks/training/lm.py) or a classification run (tasks/training/classification.py),
chosen from the spec's config, both trained by the one engine (tasks/training/engine.py).
A :class:`RunSpec` goes in; ``ADAPTFLOW_EVENT`` lines come out, and the run's files
(``metrics.json``, ``model/``, ``checkpoints/``...) land in its run directory.
"""

from __future__ import annotations

import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    """Read the spec, run, report an AdaptFlowError as one error event."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} RUN_DIR/run_spec.json", file=sys.stderr)
        return 2
    try:
        run(RunSpec.read(Path(args[0])))
    except AdaptFlowError as exc:
        problems = [vars(p) for p in exc.problems]
        print(EVENT_PREFIX + json.dumps({"type": "error", "kind": type(exc).__name__, "problems": problems}), flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
