"""The training worker: runs inside every training process (plain python, torchrun, accelerate launch).

    python -m adaptflow.tasks.training.worker RUN_DIR/run_spec.json

Hardware never appears here: ``Accelerator`` picks CPU/GPU, DDP/FSDP/DeepSpeed and
mixed precision from the launch environment. The shape is build -> prepare -> one plain
loop for every strategy. Rank-dependent side effects go through the accelerator.

Output in the run directory (written by the main process):
  metrics.json       per-step loss, evaluations, wall time, samples/s, peak memory, parameter counts
  predictions.json   labels, predictions and probabilities on the evaluation split
  model/             the adapted model (see tasks/modeling.py)
  checkpoints/       resumable states every ``checkpoint_every`` steps
Progress reaches the parent as one JSON line per event prefixed with ``EVENT_PREFIX``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.errors import AdaptFlowError
from adaptflow.tasks.modeling import build_classifier, count_parameters, folder_digest, inspect_model, save_classifier
from adaptflow.tasks.strategies import get_strategy

EVENT_PREFIX = "ADAPTFLOW_EVENT "
SPEC_FILE = "run_spec.json"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Row number of each training example in its batches: the loop records the order it trained on
# (metrics.json "examples_sha256"), so runs can prove they saw the same examples (adaptflow compare).
EXAMPLE_ID = "example_id"


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
    while every epoch still sees a different order. ``set_epoch`` reseeds.

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


class PadCollator:
    """Pads token lists to the longest in the batch, rounded up to a multiple of ``multiple``.

    On GPUs a multiple of 8 feeds the tensor cores; on CPUs it only adds padding (about 20%
    more tokens on short texts such as SST-2's, and about 15% more time per pass), so the
    worker rounds to 8 on CUDA only (see ``pad_multiple``).
    """

    def __init__(self, pad_token_id: int, columns: tuple[str, ...], multiple: int = 8):
        self.pad_token_id = pad_token_id
        self.columns = columns
        self.multiple = multiple

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = int(math.ceil(longest / self.multiple) * self.multiple)
        batch = {}
        for col in self.columns:
            pad = self.pad_token_id if col == "input_ids" else 0
            batch[col] = torch.tensor([r[col] + [pad] * (width - len(r[col])) for r in rows], dtype=torch.long)
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        if EXAMPLE_ID in rows[0]:
            batch[EXAMPLE_ID] = torch.tensor([r[EXAMPLE_ID] for r in rows], dtype=torch.long)
        return batch


def pad_multiple(device: torch.device) -> int:
    """Sequence lengths are rounded up to this: 8 for GPU tensor cores, 1 (no rounding) elsewhere."""
    return 8 if device.type == "cuda" else 1


class FeatureDataset(Dataset):
    """Cached pooled features and labels, for training the head alone."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, with_ids: bool = False):
        self.features, self.labels, self.with_ids = features, labels, with_ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = {"features": self.features[i], "labels": self.labels[i]}
        return row | {EXAMPLE_ID: torch.tensor(i)} if self.with_ids else row


# ---- events ------------------------------------------------------------------------


class Events:
    """Progress and log events for the parent process, printed by the main process only."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def emit(self, kind: str, **payload) -> None:
        if self.accelerator.is_main_process:
            print(EVENT_PREFIX + json.dumps({"type": kind, **payload}), flush=True)

    def log(self, message: str) -> None:
        self.emit("log", message=message)


# ---- evaluation --------------------------------------------------------------------


@dataclass
class EvalResult:
    step: int
    split: str
    loss: float
    labels: list[int]
    predictions: list[int]
    probabilities: list[list[float]]

    @property
    def accuracy(self) -> float:
        return sum(int(p == y) for p, y in zip(self.predictions, self.labels)) / max(1, len(self.labels))


def evaluate(module, loader, accelerator, step: int, split: str) -> EvalResult:
    module.eval()
    logits_all, labels_all = [], []
    with torch.no_grad():
        for batch in loader:
            with accelerator.autocast():
                _, logits = module(**{k: v for k, v in batch.items() if k != "labels"})
            logits, labels = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
            logits_all.append(logits.cpu())
            labels_all.append(labels.cpu())
    module.train()
    logits = torch.cat(logits_all)
    labels = torch.cat(labels_all)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    probs = torch.softmax(logits, dim=-1)
    return EvalResult(step, split, loss, labels.tolist(), probs.argmax(-1).tolist(), probs.tolist())


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
    last_eval: EvalResult | None = None
    eval_time: float = 0.0  # seconds of this process spent evaluating inside the loop

    PERSISTENT = ("step", "epoch", "batches_in_epoch", "examples_seen", "history", "evals", "best_loss", "best_step", "bad_evals", "examples_sha256")

    def record_examples(self, ids: torch.Tensor) -> None:
        text = self.examples_sha256 + ":" + ",".join(map(str, ids.tolist()))
        self.examples_sha256 = hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.PERSISTENT})

    @classmethod
    def from_json(cls, text: str) -> "LoopState":
        return cls(**{k: v for k, v in json.loads(text).items() if k in cls.PERSISTENT})


def loss_step(module, batch):
    loss, _ = module(**batch)
    return loss


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


def train_loop(cfg: AdaptConfig, accelerator, module, optimizer, train_loader, monitor_loader, monitor_split, run_dir: Path, events: Events) -> LoopState:
    from transformers import get_scheduler

    t = cfg.training
    epochs = cfg.strategy.passes(t)
    updates_per_epoch = math.ceil(len(train_loader) / t.gradient_accumulation_steps)
    total_steps = t.max_steps or epochs * updates_per_epoch
    if t.max_steps:
        epochs = math.ceil(t.max_steps / max(1, updates_per_epoch))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)
    trainable = [p for p in module.parameters() if p.requires_grad]
    state = _resume(accelerator, run_dir, events) or LoopState()
    running, running_n = torch.zeros((), device=accelerator.device), 0
    events.emit("start", total_steps=total_steps, epochs=epochs, resumed_from_step=state.resumed_from_step)
    loop_started = time.perf_counter()
    module.train()
    for epoch in range(state.epoch, epochs):
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
                    loss = loss_step(module, batch)
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
            epoch_f = epoch + min(1.0, state.step / updates_per_epoch - epoch)
            if state.step % t.log_every == 0 or state.step == total_steps:
                mean_loss = accelerator.reduce(running / running_n, reduction="mean").item()
                running, running_n = torch.zeros((), device=accelerator.device), 0
                record = {"step": state.step, "epoch": round(epoch_f, 4), "train_loss": mean_loss, "learning_rate": scheduler.get_last_lr()[0]}
                state.history.append(record)
                events.emit("progress", total_steps=total_steps, examples_seen=state.examples_seen, **record)
            if t.eval_every and state.step % t.eval_every == 0:
                if _evaluate_and_check(cfg, accelerator, module, monitor_loader, monitor_split, state, epoch_f, events):
                    break
            if t.checkpoint_every and state.step % t.checkpoint_every == 0:
                _checkpoint(accelerator, run_dir, state, events)
            if state.step >= total_steps:
                break
            if _out_of_time(accelerator, loop_started, t.time_limit_s):
                state.stopped_by_time = True
                events.log(f"time limit: stopping at step {state.step} after {t.time_limit_s:g}s of training")
                break
        else:
            state.batches_in_epoch = 0
            if not t.eval_every and _evaluate_and_check(cfg, accelerator, module, monitor_loader, monitor_split, state, epoch + 1.0, events):
                break
            continue
        break
    if state.best_state is not None and state.stopped_early:
        accelerator.unwrap_model(module).load_state_dict(state.best_state, strict=False)
        state.last_eval = None  # the weights changed since
        events.log(f"restored the weights of step {state.best_step} (best {monitor_split} loss {state.best_loss:.4f})")
    return state


def _out_of_time(accelerator, started: float, limit_s: float | None) -> bool:
    """True once ``limit_s`` seconds of training passed; the main process decides for every rank."""
    if not limit_s:
        return False
    over = torch.tensor(float(time.perf_counter() - started >= limit_s), device=accelerator.device)
    return bool(accelerator.reduce(over, reduction="sum").item() > 0) if accelerator.num_processes > 1 else bool(over)


def _evaluate_and_check(cfg, accelerator, module, loader, split, state: LoopState, epoch: float, events: Events) -> bool:
    """Evaluate on the monitoring split; return True when early stopping says stop."""
    started = time.perf_counter()
    result = evaluate(module, loader, accelerator, state.step, split)
    state.eval_time += time.perf_counter() - started
    state.last_eval = result
    record = {"step": state.step, "epoch": round(epoch, 4), "eval_loss": result.loss, "accuracy": result.accuracy, "split": split}
    state.evals.append(record)
    events.emit("eval", **record)
    patience = cfg.training.early_stopping_patience
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


CHECKPOINTS = "checkpoints"
LOOP_STATE = "loop_state.json"


def _checkpoint(accelerator, run_dir: Path, state: LoopState, events: Events, keep: int = 2) -> None:
    """Model, optimizer, scheduler, RNG states and the loop position; the loop state is written last."""
    root = run_dir / CHECKPOINTS
    path = root / f"step-{state.step:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        tmp = path / (LOOP_STATE + ".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(path / LOOP_STATE)  # a checkpoint without it is incomplete and never resumed from
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        events.emit("checkpoint", step=state.step, path=str(path))
    accelerator.wait_for_everyone()


def latest_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for p in sorted((run_dir / CHECKPOINTS).glob("step-*")) if (p / LOOP_STATE).is_file()]
    return complete[-1] if complete else None


def _resume(accelerator, run_dir: Path, events: Events) -> LoopState | None:
    """Continue from the last complete checkpoint of this run directory, if there is one."""
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    accelerator.load_state(str(path))
    state = LoopState.from_json((path / LOOP_STATE).read_text())
    state.resumed_from_step = state.step
    events.log(f"resuming from checkpoint {path.name} (step {state.step}, epoch {state.epoch}, batch {state.batches_in_epoch})")
    return state


# ---- features for the frozen backbone ---------------------------------------------


def cached_features(accelerator, model, ds, spec: RunSpec, collate, batch_size: int) -> dict[str, torch.Tensor]:
    """Pooled backbone features of every split, computed once and cached next to the prepared data."""
    from safetensors.torch import load_file, save_file

    precision = resolve_precision(spec.config.training.mixed_precision)
    key = folder_digest(spec.model_path)[:16] + f"-{model.pooling}-{precision}"
    cache = spec.prepared_path / "features" / f"{key}.safetensors"
    with accelerator.main_process_first():
        if not cache.is_file():
            tensors = {}
            model.to(accelerator.device).eval()
            for split in ds:
                lengths = [len(x) for x in ds[split]["input_ids"]]
                order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # little padding per batch
                out = torch.empty(len(order), model.head.linear.in_features)
                loader = DataLoader(ds[split].select(order), batch_size=batch_size, collate_fn=collate)
                pos = 0
                with torch.inference_mode():
                    for batch in loader:
                        with accelerator.autocast():
                            feats = model.encode(**{k: v.to(accelerator.device) for k, v in batch.items() if k in MODEL_INPUTS})
                        out[torch.tensor(order[pos : pos + len(feats)])] = feats.float().cpu()
                        pos += len(feats)
                tensors[split] = out
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            save_file(tensors, str(tmp))
            tmp.replace(cache)
        return load_file(str(cache))


# ---- main --------------------------------------------------------------------------


def run(spec: RunSpec) -> dict:
    import datasets
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from adaptflow.tasks.data import load_prepared

    hf_logging.disable_progress_bar()  # the parent shows one progress bar of its own
    datasets.disable_progress_bars()

    cfg, t = spec.config, spec.config.training
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(t.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=t.gradient_accumulation_steps)
    events = Events(accelerator)
    set_seed(t.seed)
    started = time.perf_counter()
    ds, manifest = load_prepared(spec.prepared_path)
    label_names = manifest["label_names"]
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    info = inspect_model(spec.model_path, cfg.trust_remote_code)
    model = build_classifier(info, cfg.strategy.pooling, len(label_names), cfg.trust_remote_code)
    strategy = get_strategy(cfg.strategy.name)
    model = strategy.configure_classifier(model, cfg)
    trainable_params, total_params = count_parameters(model)
    events.log(
        f"{cfg.strategy.name}: {trainable_params:,} of {total_params:,} parameters train "
        f"({100 * trainable_params / total_params:.2f}%), pooling={model.pooling}, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}, precision={precision}"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    columns = tuple(c for c in MODEL_INPUTS if c in ds["train"].column_names)
    collate = PadCollator(pad_id, columns, pad_multiple(accelerator.device))
    monitor_split = "validation" if "validation" in ds else "eval"

    if t.gradient_checkpointing and not strategy.uses_cached_features:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        events.log("gradient checkpointing on: backbone activations are recomputed in the backward pass")

    feature_time = 0.0
    # Grouped by the global batch, so N processes of batch B see the same batches as one process of N*B.
    # Every strategy draws from this one sampler: the same examples in the same order for the same seed.
    sampler = LengthGroupedSampler([len(x) for x in ds["train"]["input_ids"]], t.batch_size * accelerator.num_processes, t.seed, t.length_group_batches)
    if strategy.uses_cached_features:
        t0 = time.perf_counter()
        feats = cached_features(accelerator, model, ds, spec, collate, batch_size=max(64, t.batch_size * 2))
        feature_time = time.perf_counter() - t0
        events.log(f"backbone features for {sum(len(v) for v in feats.values()):,} rows ready in {feature_time:.1f}s")
        splits = {s: FeatureDataset(feats[s], torch.tensor(ds[s]["labels"]), with_ids=s == "train") for s in ds}
        module = model.head
        train_loader = DataLoader(splits["train"], batch_size=t.batch_size, sampler=sampler, generator=_generator(t.seed))
        eval_loaders = {s: DataLoader(splits[s], batch_size=1024, generator=_generator(t.seed)) for s in splits if s != "train"}
    else:
        module = model
        train = ds["train"].add_column(EXAMPLE_ID, list(range(len(ds["train"]))))
        # Loaders get generators of their own: starting an iterator then draws nothing from the
        # global RNG, so a run resumed from a checkpoint sees the same dropout masks.
        train_loader = DataLoader(train, batch_size=t.batch_size, sampler=sampler, collate_fn=collate, generator=_generator(t.seed))
        eval_loaders = {s: DataLoader(ds[s], batch_size=t.batch_size * 2, collate_fn=collate, generator=_generator(t.seed)) for s in ds if s != "train"}

    optimizer = make_optimizer(module, cfg.learning_rate(), t.weight_decay, t.layer_lr_decay, t.head_lr_multiplier)
    split_names = list(eval_loaders)
    prepared = accelerator.prepare(module, optimizer, train_loader, *eval_loaders.values())
    module, optimizer, train_loader = prepared[:3]
    eval_loaders = dict(zip(split_names, prepared[3:]))

    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop_start = time.perf_counter()
    state = train_loop(cfg, accelerator, module, optimizer, train_loader, eval_loaders[monitor_split], monitor_split, spec.run_dir, events)
    loop_time = time.perf_counter() - loop_start

    final = state.last_eval
    if final is None or final.step != state.step or final.split != "eval":  # no second pass over the same weights
        final = evaluate(module, eval_loaders["eval"], accelerator, state.step, "eval")
    # Every rank takes part: under FSDP / ZeRO-3 this gathers the sharded weights on rank 0.
    full_state = accelerator.get_state_dict(module)
    accelerator.wait_for_everyone()
    metrics = {
        "strategy": cfg.strategy.name,
        "history": state.history,
        "evals": state.evals,
        "steps": state.step,
        "examples_seen": state.examples_seen,
        "train_runtime_s": loop_time + feature_time,
        "loop_time_s": loop_time,
        "feature_time_s": feature_time,
        "eval_time_s": state.eval_time,
        # training throughput: evaluations inside the loop are not training (as in Trainer's figure)
        "samples_per_s": state.examples_seen / max(1e-9, loop_time - state.eval_time + feature_time),
        "peak_memory_mb": _peak_memory_mb(accelerator),
        "trainable_params": trainable_params,
        "total_params": total_params,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": precision,
        "gradient_checkpointing": t.gradient_checkpointing,
        "stopped_early": state.stopped_early,
        "stopped_by_time": state.stopped_by_time,
        "examples_sha256": state.examples_sha256,
        "best_step": state.best_step,
        "resumed_from_step": state.resumed_from_step,
        "eval_loss": final.loss,
        "eval_accuracy": final.accuracy,
        "worker_wall_s": time.perf_counter() - started,
    }
    if accelerator.is_main_process:
        out = spec.run_dir
        (out / "predictions.json").write_text(
            json.dumps(
                {
                    "split": "eval",
                    "label_names": label_names,
                    "labels": final.labels,
                    "predictions": final.predictions,
                    "probabilities": final.probabilities,
                    "eval_loss": final.loss,
                }
            )
        )
        save_classifier(
            model,
            out / "model",
            tokenizer,
            {"strategy": cfg.strategy.name, "label_names": label_names, "base_model": cfg.model, "max_length": cfg.data.max_length},
            state_dict=None if module is model.head else full_state,
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    events.emit("done", steps=state.step, eval_accuracy=final.accuracy, train_runtime_s=metrics["train_runtime_s"])
    accelerator.end_training()
    return metrics


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _peak_memory_mb(accelerator) -> float:
    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None, run_spec=None, module: str = "adaptflow.tasks.training.worker") -> int:
    """Entry point of a worker module: read the spec, run, report an AdaptFlowError as one error event.

    The language-model worker passes its own ``run_spec`` and ``module`` name.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {module} RUN_DIR/run_spec.json", file=sys.stderr)
        return 2
    try:
        (run_spec or run)(RunSpec.read(Path(args[0])))
    except AdaptFlowError as exc:
        problems = [vars(p) for p in exc.problems]
        print(EVENT_PREFIX + json.dumps({"type": "error", "kind": type(exc).__name__, "problems": problems}), flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
