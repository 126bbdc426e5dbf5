"""The one training engine: setup, the loop, checkpoints, and what every run reports.

Hardware never appears here: ``Accelerator`` picks CPU/GPU, DDP/FSDP/DeepSpeed and
mixed precision from the launch environment. The shape is build -> prepare -> one plain
loop for every strategy and every kind of run. Rank-dependent side effects go through
the accelerator.

What differs between a classification run and a language-model run is a
:class:`TrainingTask` (tasks/training/classification.py, tasks/training/lm.py): how the
model is built and configured, its batches, its loss step, how it is evaluated, and
what it writes at the end. Everything else is this module's, so both kinds get the same
gradient accumulation, evaluation cadence, early stopping, time limit, and checkpoints
every ``checkpoint_every`` steps with resume from the newest complete one:

  checkpoints/step-NNNNNNN/   ``accelerator.save_state`` plus ``loop_state.json``, written
                              last (a folder without it is incomplete and never resumed from);
                              the newest two are kept.

Progress reaches the parent as one JSON line per event prefixed with ``EVENT_PREFIX``:
``start``, ``progress``, ``eval``, ``checkpoint``, ``log``, ``done`` (and ``error``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch.utils.data import DataLoader, Sampler

from adaptflow.tasks.config import AdaptConfig

EVENT_PREFIX = "ADAPTFLOW_EVENT "
SPEC_FILE = "run_spec.json"
# Row number of each training example in its batches: the loop records the order it trained on
# (metrics.json "examples_sha256"), so runs can prove they saw the same examples (adaptflow compare).
EXAMPLE_ID = "example_id"
CHECKPOINTS = "checkpoints"
LOOP_STATE = "loop_state.json"


@dataclass(frozen=True)
class RunSpec:
    """What the train task hands to every worker process."""

    config: AdaptConfig
    prepared_path: Path
    model_path: Path
    run_dir: Path

    def write(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / SPEC_FILE
        payload = {
            "config": self.config.model_dump(mode="json"),
            "prepared_path": str(self.prepared_path),
            "model_path": str(self.model_path),
            "run_dir": str(self.run_dir),
        }
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> "RunSpec":
        raw = json.loads(Path(path).read_text())
        return cls(
            config=AdaptConfig.model_validate(raw["config"]),
            prepared_path=Path(raw["prepared_path"]),
            model_path=Path(raw["model_path"]),
            run_dir=Path(raw["run_dir"]),
        )


# ---- data --------------------------------------------------------------------------


class LengthGroupedSampler(Sampler[int]):
    """Shuffled order in which neighbouring examples have similar lengths.

    Indices are shuffled, cut into mega-batches of ``group * batch_size``, each sorted
    by length, and the resulting batches are shuffled again. Padding per batch drops
    while every epoch still sees a different order. ``set_epoch`` reseeds, so the order
    of an epoch depends on the seed and the epoch alone: a resumed run skips exactly
    the batches it already trained on.

    The DataLoader cuts this order into consecutive runs of ``batch_size``, so the
    order must keep every built batch on those boundaries: the one short batch (the
    tail of the last mega-batch) goes last, and the batch holding the longest example
    goes first, so a batch that does not fit in memory fails on the first step.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: int = 50):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        mega = self.group * self.batch_size
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        short = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        batches = [batches[b] for b in torch.randperm(len(batches), generator=g).tolist()]
        if batches:
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            batches[0], batches[longest] = batches[longest], batches[0]
        for batch in batches + short:
            yield from batch


def pad_multiple(device: torch.device) -> int:
    """Sequence lengths are rounded up to this: 8 for GPU tensor cores, 1 (no rounding) elsewhere.

    On CPUs a multiple of 8 only adds padding (about 20% more tokens on short texts such as
    SST-2's, and about 15% more time per pass); every collator of every run follows this.
    """
    return 8 if device.type == "cuda" else 1


def padded_width(lengths: list[int], multiple: int) -> int:
    """The batch width: the longest row, rounded up to a multiple of ``multiple``."""
    return int(math.ceil(max(lengths) / multiple) * multiple)


def seeded_generator(seed: int) -> torch.Generator:
    """A generator of a loader's own: starting an iterator then draws nothing from the global
    RNG, so a run resumed from a checkpoint sees the same dropout masks."""
    return torch.Generator().manual_seed(seed)


def train_sampler(lengths: list[int], cfg: AdaptConfig, num_processes: int) -> LengthGroupedSampler:
    """The order every run trains in, grouped by the global batch.

    N processes of batch B see the same batches as one process of N*B, and every strategy
    draws the same examples in the same order for the same seed.
    """
    t = cfg.training
    return LengthGroupedSampler(lengths, t.batch_size * num_processes, t.seed, t.length_group_batches)


# ---- events ------------------------------------------------------------------------


def print_line(line: str) -> None:
    print(line, flush=True)


class Events:
    """Progress and log events for the parent process, sent by the main process only.

    Each event is one ``EVENT_PREFIX`` + JSON line, printed on stdout (the parent reads the
    worker's output) unless ``write`` sends it elsewhere (Ray Train: to the driver's queue).
    """

    def __init__(self, accelerator, write: Callable[[str], None] = print_line):
        self.accelerator = accelerator
        self.write = write

    def emit(self, kind: str, **payload) -> None:
        if self.accelerator.is_main_process:
            self.write(EVENT_PREFIX + json.dumps({"type": kind, **payload}))

    def log(self, message: str) -> None:
        self.emit("log", message=message)


# ---- what a task plugs in ----------------------------------------------------------


class Evaluation(Protocol):
    """One evaluation pass: its loss drives early stopping; ``scores`` go into the eval event."""

    step: int
    split: str
    loss: float

    def scores(self) -> dict[str, float]: ...


@dataclass
class Plan:
    """What a task built for the loop, before ``accelerator.prepare``."""

    module: torch.nn.Module  # what trains (and is checkpointed)
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    monitor_split: str  # evaluated inside the loop, for curves and early stopping
    learning_rate: float
    max_steps: int | None
    epochs: int
    head_lr_multiplier: float = 1.0
    # objects with state_dict()/load_state_dict() saved with every checkpoint (e.g. a masking generator)
    checkpointed: list[Any] = field(default_factory=list)


class TrainingTask(Protocol):
    """The parts of a run that depend on what is trained; :func:`run_task` does the rest."""

    def build(self, run: "Run") -> Plan:
        """Load the data and the model, configure the strategy, make the loaders."""

    def loss_step(self, module, batch) -> torch.Tensor:
        """The training loss of one batch."""

    def evaluate(self, module, loader, accelerator, step: int, split: str) -> Evaluation:
        """One pass over ``loader``; every rank takes part."""

    def finish(self, run: "Run", plan: Plan, module, state: "LoopState", loop_time: float) -> tuple[dict, dict]:
        """Final evaluation (``plan.eval_loaders`` are prepared by then) and outputs (model/, metrics.json...); returns the metrics and the ``done`` event's payload."""


@dataclass(frozen=True)
class Checkpointing:
    """Where a worker keeps its checkpoints, and who hears of each new one.

    By default ``RUN_DIR/checkpoints``, one folder every rank writes into, the newest two kept
    by the main process, which the train task mirrors. A launcher that persists checkpoints
    itself (Ray Train) gives every rank a folder of its own and a ``saved`` callback, called
    on every rank once a checkpoint is complete, which takes it over (``rotate=False``: the
    callback's side removes it; it may be a collective call).
    """

    home: Path  # checkpoints go to home/checkpoints/step-NNNNNNN/
    saved: Callable[[Path, "LoopState"], None] | None = None
    rotate: bool = True  # keep the newest two; False when ``saved`` takes each folder over (and removes it)


@dataclass
class Run:
    """The set-up pieces of one worker process, shared by the engine and its task."""

    spec: RunSpec
    accelerator: Any
    events: Events
    precision: str
    started: float  # perf_counter at process start (worker_wall_s)
    checkpointing: Checkpointing | None = None

    @property
    def checkpoints(self) -> Checkpointing:
        return self.checkpointing or Checkpointing(self.spec.run_dir)

    @property
    def cfg(self) -> AdaptConfig:
        return self.spec.config

    def base_metrics(self, state: "LoopState", loop_time: float, trainable_params: int, total_params: int) -> dict[str, Any]:
        """What every run reports about how it trained, by key."""
        return {
            "history": state.history,
            "evals": state.evals,
            "steps": state.step,
            "examples_seen": state.examples_seen,
            "peak_memory_mb": peak_memory_mb(self.accelerator),
            "trainable_params": trainable_params,
            "total_params": total_params,
            "num_processes": self.accelerator.num_processes,
            "device": str(self.accelerator.device),
            "mixed_precision": self.precision,
            "stopped_early": state.stopped_early,
            "stopped_by_time": state.stopped_by_time,
            "examples_sha256": state.examples_sha256,
            "best_step": state.best_step,
            "resumed_from_step": state.resumed_from_step,
            "worker_wall_s": time.perf_counter() - self.started,
        }


# ---- optimizer and precision -------------------------------------------------------


_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def lr_scales(names: list[str], layer_decay: float = 1.0, head_multiplier: float = 1.0) -> list[float]:
    """Learning-rate factor of each named parameter of an AdaptClassifier (or of any module).

    Layer-wise decay: with L transformer blocks, block i trains at ``layer_decay ** (L - i)``
    times the peak rate, the embeddings at ``layer_decay ** (L + 1)``, and what sits above
    the blocks (final norm, pooler, head) at the full rate: the lower layers, which hold
    the most general features, move least. The task head (``head.*``) is further
    multiplied by ``head_multiplier``: it starts from random weights.
    """
    depth = {n: int(m.group(1)) + 1 if (m := _LAYER_INDEX.search(n)) else None for n in names}
    blocks = max((d for d in depth.values() if d is not None), default=0)
    scales = []
    for name in names:
        if name.startswith("head."):
            scales.append(head_multiplier)
        elif depth[name] is not None:
            scales.append(layer_decay ** (blocks + 1 - depth[name]))
        elif "embed" in name or name.startswith(("wte", "wpe")) or ".wte." in name or ".wpe." in name:
            scales.append(layer_decay ** (blocks + 1))
        else:
            scales.append(1.0)
    return scales


def make_optimizer(module, lr: float, weight_decay: float, layer_decay: float = 1.0, head_multiplier: float = 1.0):
    """AdamW over the trainable parameters: no weight decay on biases and norms, per-layer rates (see lr_scales)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    scales = lr_scales([n for n, _ in named], layer_decay, head_multiplier)
    groups: dict[tuple[float, bool], list] = {}
    for (name, p), scale in zip(named, scales):
        decays = not (p.ndim < 2 or "norm" in name.lower())
        groups.setdefault((scale, decays), []).append(p)
    params = [{"params": ps, "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0} for (scale, decays), ps in groups.items()]
    try:  # one kernel for every tensor: on CPU about 6x faster per step than the foreach path
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, lr=lr, foreach=True)


def resolve_precision(requested: str) -> str:
    """The autocast precision this process uses: 'auto' becomes bf16 where the hardware does it natively."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def peak_memory_mb(accelerator) -> float:
    """Peak GPU memory allocated, or the peak resident memory of this process on CPU."""
    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---- the loop ----------------------------------------------------------------------


@dataclass
class LoopState:
    """Where the loop is; the persistent part is saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    examples_seen: int = 0
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    best_loss: float = float("inf")
    best_step: int = 0
    bad_evals: int = 0
    resumed_from_step: int | None = None
    best_state: dict | None = None
    stopped_early: bool = False
    stopped_by_time: bool = False
    examples_sha256: str = ""  # chained over the example ids of every batch, in training order
    last_eval: Any = None  # the newest Evaluation, while it still describes the current weights
    eval_time: float = 0.0  # seconds of this process spent evaluating inside the loop
    loop_started: float = 0.0  # perf_counter() when this process's loop began (evaluations record their training seconds)
    first_step_s: float | None = None  # seconds to this process's first optimizer step (warm-up included); --estimate leaves it out

    PERSISTENT = (
        "step",
        "epoch",
        "batches_in_epoch",
        "examples_seen",
        "history",
        "evals",
        "best_loss",
        "best_step",
        "bad_evals",
        "examples_sha256",
    )

    def record_examples(self, ids: torch.Tensor) -> None:
        text = self.examples_sha256 + ":" + ",".join(map(str, ids.tolist()))
        self.examples_sha256 = hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.PERSISTENT})

    @classmethod
    def from_json(cls, text: str) -> "LoopState":
        return cls(**{k: v for k, v in json.loads(text).items() if k in cls.PERSISTENT})


def train_loop(run: Run, task: TrainingTask, plan: Plan, module, optimizer, train_loader, monitor_loader) -> LoopState:
    """The plain loop: accumulate, step, log, evaluate, checkpoint, stop on budget, patience or time."""
    from transformers import get_scheduler  # heavy: transformers loads only inside the worker

    cfg, accelerator, events, checkpoints = run.cfg, run.accelerator, run.events, run.checkpoints
    t = cfg.training
    epochs = plan.epochs
    updates_per_epoch = math.ceil(len(train_loader) / t.gradient_accumulation_steps)
    total_steps = plan.max_steps or epochs * updates_per_epoch
    if plan.max_steps:
        epochs = math.ceil(plan.max_steps / max(1, updates_per_epoch))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)
    for obj in plan.checkpointed:
        accelerator.register_for_checkpointing(obj)
    trainable = [p for p in module.parameters() if p.requires_grad]
    state = _resume(accelerator, checkpoints.home, events) or LoopState()
    running, running_n = torch.zeros((), device=accelerator.device), 0
    events.emit("start", total_steps=total_steps, epochs=epochs, resumed_from_step=state.resumed_from_step)
    loop_started = state.loop_started = time.perf_counter()
    module.train()
    # Resumed from the final checkpoint (the process was stopped while finishing): nothing is left to train.
    first_epoch = epochs if state.step >= total_steps else state.epoch
    for epoch in range(first_epoch, epochs):
        train_loader.set_epoch(epoch)
        skip = state.batches_in_epoch if epoch == state.epoch else 0
        state.epoch, state.batches_in_epoch = epoch, skip
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch in batches:
            state.batches_in_epoch += 1
            if EXAMPLE_ID in batch:
                state.record_examples(accelerator.gather(batch.pop(EXAMPLE_ID)))
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    loss = task.loss_step(module, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running += loss.detach().float()
            running_n += 1
            state.examples_seen += len(batch["labels"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            if state.first_step_s is None:
                state.first_step_s = time.perf_counter() - loop_started
            epoch_f = epoch + min(1.0, state.step / updates_per_epoch - epoch)
            if state.step % t.log_every == 0 or state.step == total_steps:
                mean_loss = accelerator.reduce(running / running_n, reduction="mean").item()
                running, running_n = torch.zeros((), device=accelerator.device), 0
                record = {
                    "step": state.step,
                    "epoch": round(epoch_f, 4),
                    "train_loss": mean_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                }
                state.history.append(record)
                events.emit("progress", total_steps=total_steps, examples_seen=state.examples_seen, **record)
            if t.eval_every and state.step % t.eval_every == 0:
                if _evaluate_and_check(run, task, module, monitor_loader, plan.monitor_split, state, epoch_f):
                    break
            if t.checkpoint_every and state.step % t.checkpoint_every == 0:
                _checkpoint(accelerator, checkpoints, state, events)
            if state.step >= total_steps:
                break
            if _out_of_time(accelerator, loop_started, t.time_limit_s):
                state.stopped_by_time = True
                events.log(f"time limit: stopping at step {state.step} after {t.time_limit_s:g}s of training")
                break
        else:
            state.batches_in_epoch = 0
            if not t.eval_every and _evaluate_and_check(run, task, module, monitor_loader, plan.monitor_split, state, epoch + 1.0):
                break
            continue
        break
    if state.best_state is not None and state.stopped_early:
        accelerator.unwrap_model(module).load_state_dict(state.best_state, strict=False)
        state.last_eval = None  # the weights changed since
        events.log(f"restored the weights of step {state.best_step} (best {plan.monitor_split} loss {state.best_loss:.4f})")
    return state


def _out_of_time(accelerator, started: float, limit_s: float | None) -> bool:
    """True once ``limit_s`` seconds of training passed; the main process decides for every rank."""
    if not limit_s:
        return False
    over = torch.tensor(float(time.perf_counter() - started >= limit_s), device=accelerator.device)
    return bool(accelerator.reduce(over, reduction="sum").item() > 0) if accelerator.num_processes > 1 else bool(over)


def _evaluate_and_check(run: Run, task: TrainingTask, module, loader, split: str, state: LoopState, epoch: float) -> bool:
    """Evaluate on the monitoring split; return True when early stopping says stop."""
    accelerator, events = run.accelerator, run.events
    started = time.perf_counter()
    train_s = started - state.loop_started - state.eval_time  # seconds of training before this evaluation (learning curves)
    result = task.evaluate(module, loader, accelerator, state.step, split)
    state.eval_time += time.perf_counter() - started
    state.last_eval = result
    record = {
        "step": state.step,
        "epoch": round(epoch, 4),
        "eval_loss": result.loss,
        **result.scores(),
        "split": split,
        "train_s": round(train_s, 3),
    }
    state.evals.append(record)
    events.emit("eval", **record)
    patience = run.cfg.training.early_stopping_patience
    if result.loss < state.best_loss - 1e-6:
        state.best_loss, state.best_step, state.bad_evals = result.loss, state.step, 0
        if patience:
            unwrapped = accelerator.unwrap_model(module)
            state.best_state = {k: p.detach().clone() for k, p in unwrapped.named_parameters() if p.requires_grad}
    else:
        state.bad_evals += 1
    if patience and state.bad_evals >= patience:
        state.stopped_early = True
        events.log(f"early stopping at step {state.step}: {split} loss did not improve for {patience} evaluations")
        return True
    return False


# ---- checkpoints -------------------------------------------------------------------


def _checkpoint(accelerator, checkpoints: Checkpointing, state: LoopState, events: Events, keep: int = 2) -> None:
    """Model, optimizer, scheduler, RNG states and the loop position; the loop state is written last."""
    root = checkpoints.home / CHECKPOINTS
    path = root / f"step-{state.step:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        tmp = path / (LOOP_STATE + ".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(path / LOOP_STATE)  # a checkpoint without it is incomplete and never resumed from
        events.emit("checkpoint", step=state.step, path=str(path))
    accelerator.wait_for_everyone()
    if checkpoints.saved is not None:
        checkpoints.saved(path, state)
    if checkpoints.rotate and accelerator.is_main_process:
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for p in sorted((run_dir / CHECKPOINTS).glob("step-*")) if (p / LOOP_STATE).is_file()]
    return complete[-1] if complete else None


def _resume(accelerator, home: Path, events: Events) -> LoopState | None:
    """Continue from the last complete checkpoint under ``home`` (the run directory, by default), if there is one."""
    path = latest_checkpoint(home)
    if path is None:
        return None
    accelerator.load_state(str(path))
    state = LoopState.from_json((path / LOOP_STATE).read_text())
    state.resumed_from_step = state.step
    events.log(f"resuming from checkpoint {path.name} (step {state.step}, epoch {state.epoch}, batch {state.batches_in_epoch})")
    return state


# ---- one run -----------------------------------------------------------------------


def run_task(
    spec: RunSpec, task: TrainingTask, checkpointing: Checkpointing | None = None, write_event: Callable[[str], None] = print_line
) -> dict:
    """Set up, let ``task`` build, prepare, train, let ``task`` finish; returns the run's metrics.

    ``checkpointing`` and ``write_event`` are for launchers that keep checkpoints and carry
    events their own way (Ray Train); by default both go through the run folder and stdout.
    """
    import datasets  # heavy: these load only inside the worker
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the parent shows one progress bar of its own
    datasets.disable_progress_bars()

    t = spec.config.training
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(t.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=t.gradient_accumulation_steps)
    run = Run(spec, accelerator, Events(accelerator, write_event), precision, time.perf_counter(), checkpointing)
    set_seed(t.seed)
    plan = task.build(run)

    optimizer = make_optimizer(plan.module, plan.learning_rate, t.weight_decay, t.layer_lr_decay, plan.head_lr_multiplier)
    split_names = list(plan.eval_loaders)
    prepared = accelerator.prepare(plan.module, optimizer, plan.train_loader, *plan.eval_loaders.values())
    module, optimizer, train_loader = prepared[:3]
    eval_loaders = dict(zip(split_names, prepared[3:]))
    plan.eval_loaders = eval_loaders

    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop_start = time.perf_counter()
    state = train_loop(run, task, plan, module, optimizer, train_loader, eval_loaders[plan.monitor_split])
    loop_time = time.perf_counter() - loop_start
    metrics, done = task.finish(run, plan, module, state, loop_time)
    run.events.emit("done", steps=state.step, **done)
    accelerator.end_training()
    return metrics
