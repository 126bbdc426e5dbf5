"""Sequence classification, as a :class:`~adaptflow.tasks.training.engine.TrainingTask`.

Builds an ``AdaptClassifier`` (tasks/modeling.py), lets the strategy choose what trains,
and feeds the engine either padded token batches or, for strategies that train the head
alone on a frozen backbone (``uses_cached_features``), pooled backbone features computed
once and cached next to the prepared data.

Output in the run directory (written by the main process):
  metrics.json       per-step loss, evaluations, wall time, samples/s, peak memory, parameter counts
  predictions.json   labels, predictions and probabilities on the evaluation split
  model/             the adapted model (see tasks/modeling.py)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from adaptflow.tasks.base_model import folder_digest, inspect_model
from adaptflow.tasks.data.store import load_prepared
from adaptflow.tasks.modeling import build_classifier, count_parameters, save_classifier
from adaptflow.tasks.strategies import get_strategy
from adaptflow.tasks.training.engine import (
    EXAMPLE_ID,
    LoopState,
    Plan,
    Run,
    RunSpec,
    pad_multiple,
    padded_width,
    resolve_precision,
    seeded_generator,
    train_sampler,
)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
        width = padded_width([len(r["input_ids"]) for r in rows], self.multiple)
        batch = {}
        for col in self.columns:
            pad = self.pad_token_id if col == "input_ids" else 0
            batch[col] = torch.tensor([r[col] + [pad] * (width - len(r[col])) for r in rows], dtype=torch.long)
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        if EXAMPLE_ID in rows[0]:
            batch[EXAMPLE_ID] = torch.tensor([r[EXAMPLE_ID] for r in rows], dtype=torch.long)
        return batch


class FeatureDataset(Dataset):
    """Cached pooled features and labels, for training the head alone."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, with_ids: bool = False):
        self.features, self.labels, self.with_ids = features, labels, with_ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = {"features": self.features[i], "labels": self.labels[i]}
        return row | {EXAMPLE_ID: torch.tensor(i)} if self.with_ids else row


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

    def scores(self) -> dict[str, float]:
        return {"accuracy": self.accuracy}


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


def loss_step(module, batch):
    loss, _ = module(**batch)
    return loss


def cached_features(accelerator, model, ds, spec: RunSpec, collate, batch_size: int, timing: dict | None = None) -> dict[str, torch.Tensor]:
    """Pooled backbone features of every split, computed once and cached next to the prepared data.

    ``timing``, when given, receives ``first_batch_s`` and ``first_batch_rows``: the first batch
    carries the backbone's warm-up, which ``--estimate`` counts once instead of per row.
    """
    from safetensors.torch import load_file, save_file  # heavy: only the frozen-backbone strategies need it

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
                        started = time.perf_counter()
                        with accelerator.autocast():
                            feats = model.encode(**{k: v.to(accelerator.device) for k, v in batch.items() if k in MODEL_INPUTS})
                        out[torch.tensor(order[pos : pos + len(feats)])] = feats.float().cpu()
                        pos += len(feats)
                        if timing is not None and "first_batch_s" not in timing:
                            timing.update(first_batch_s=time.perf_counter() - started, first_batch_rows=len(feats))
                tensors[split] = out
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            save_file(tensors, str(tmp))
            tmp.replace(cache)
        return load_file(str(cache))


class ClassificationTask:
    """A classifier on a pre-trained backbone; the strategy decides what trains."""

    def build(self, run: Run) -> Plan:
        from transformers import AutoTokenizer  # heavy: transformers loads only inside the worker

        spec, cfg, accelerator, events = run.spec, run.cfg, run.accelerator, run.events
        t = cfg.training
        ds, manifest = load_prepared(spec.prepared_path)
        self.label_names = manifest["label_names"]
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
        info = inspect_model(spec.model_path, cfg.trust_remote_code)
        model = build_classifier(info, cfg.strategy.pooling, len(self.label_names), cfg.trust_remote_code)
        strategy = get_strategy(cfg.strategy.name)
        self.model = model = strategy.configure_classifier(model, cfg)
        self.trainable_params, self.total_params = count_parameters(model)
        events.log(
            f"{cfg.strategy.name}: {self.trainable_params:,} of {self.total_params:,} parameters train "
            f"({100 * self.trainable_params / self.total_params:.2f}%), pooling={model.pooling}, "
            f"{accelerator.num_processes} process(es) on {accelerator.device}, precision={run.precision}"
        )
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.tokenizer.eos_token_id or 0)
        columns = tuple(c for c in MODEL_INPUTS if c in ds["train"].column_names)
        collate = PadCollator(pad_id, columns, pad_multiple(accelerator.device))
        monitor_split = "validation" if "validation" in ds else "eval"

        if t.gradient_checkpointing and not strategy.uses_cached_features:
            model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            events.log("gradient checkpointing on: backbone activations are recomputed in the backward pass")

        self.feature_time = 0.0
        self.feature_timing: dict = {}
        sampler = train_sampler([len(x) for x in ds["train"]["input_ids"]], cfg, accelerator.num_processes)
        if strategy.uses_cached_features:
            t0 = time.perf_counter()
            feats = cached_features(accelerator, model, ds, spec, collate, batch_size=max(64, t.batch_size * 2), timing=self.feature_timing)
            self.feature_time = time.perf_counter() - t0
            events.log(f"backbone features for {sum(len(v) for v in feats.values()):,} rows ready in {self.feature_time:.1f}s")
            splits = {s: FeatureDataset(feats[s], torch.tensor(ds[s]["labels"]), with_ids=s == "train") for s in ds}
            module = model.head
            train_loader = DataLoader(splits["train"], batch_size=t.batch_size, sampler=sampler, generator=seeded_generator(t.seed))
            eval_loaders = {s: DataLoader(splits[s], batch_size=1024, generator=seeded_generator(t.seed)) for s in splits if s != "train"}
        else:
            module = model
            train = ds["train"].add_column(EXAMPLE_ID, list(range(len(ds["train"]))))
            train_loader = DataLoader(
                train, batch_size=t.batch_size, sampler=sampler, collate_fn=collate, generator=seeded_generator(t.seed)
            )
            eval_loaders = {
                s: DataLoader(ds[s], batch_size=t.batch_size * 2, collate_fn=collate, generator=seeded_generator(t.seed))
                for s in ds
                if s != "train"
            }
        return Plan(
            module=module,
            train_loader=train_loader,
            eval_loaders=eval_loaders,
            monitor_split=monitor_split,
            learning_rate=cfg.learning_rate(),
            max_steps=t.max_steps,
            epochs=cfg.strategy.passes(t),
            head_lr_multiplier=t.head_lr_multiplier,
        )

    def loss_step(self, module, batch) -> torch.Tensor:
        return loss_step(module, batch)

    def evaluate(self, module, loader, accelerator, step: int, split: str) -> EvalResult:
        return evaluate(module, loader, accelerator, step, split)

    def finish(self, run: Run, plan: Plan, module, state: LoopState, loop_time: float) -> tuple[dict, dict]:
        cfg, accelerator = run.cfg, run.accelerator
        t = cfg.training
        final = state.last_eval
        if final is None or final.step != state.step or final.split != "eval":  # no second pass over the same weights
            final = evaluate(module, plan.eval_loaders["eval"], accelerator, state.step, "eval")
        # Every rank takes part: under FSDP / ZeRO-3 this gathers the sharded weights on rank 0.
        full_state = accelerator.get_state_dict(module)
        accelerator.wait_for_everyone()
        base = run.base_metrics(state, loop_time, self.trainable_params, self.total_params)
        metrics = {
            "strategy": cfg.strategy.name,
            "history": base["history"],
            "evals": base["evals"],
            "steps": base["steps"],
            "examples_seen": base["examples_seen"],
            "train_runtime_s": loop_time + self.feature_time,
            "loop_time_s": loop_time,
            "feature_time_s": self.feature_time,
            "eval_time_s": state.eval_time,
            "first_step_s": state.first_step_s,
            **{f"feature_{k}": v for k, v in self.feature_timing.items()},
            # training throughput: evaluations inside the loop are not training (as in Trainer's figure)
            "samples_per_s": state.examples_seen / max(1e-9, loop_time - state.eval_time + self.feature_time),
            "peak_memory_mb": base["peak_memory_mb"],
            "trainable_params": base["trainable_params"],
            "total_params": base["total_params"],
            "num_processes": base["num_processes"],
            "device": base["device"],
            "mixed_precision": base["mixed_precision"],
            "gradient_checkpointing": t.gradient_checkpointing,
            "stopped_early": base["stopped_early"],
            "stopped_by_time": base["stopped_by_time"],
            "examples_sha256": base["examples_sha256"],
            "best_step": base["best_step"],
            "resumed_from_step": base["resumed_from_step"],
            "eval_loss": final.loss,
            "eval_accuracy": final.accuracy,
            "worker_wall_s": base["worker_wall_s"],
        }
        if accelerator.is_main_process:
            out = run.spec.run_dir
            (out / "predictions.json").write_text(
                json.dumps(
                    {
                        "split": "eval",
                        "label_names": self.label_names,
                        "labels": final.labels,
                        "predictions": final.predictions,
                        "probabilities": final.probabilities,
                        "eval_loss": final.loss,
                    }
                )
            )
            save_classifier(
                self.model,
                out / "model",
                self.tokenizer,
                {
                    "strategy": cfg.strategy.name,
                    "label_names": self.label_names,
                    "base_model": cfg.model,
                    "max_length": cfg.data.max_length,
                },
                state_dict=None if module is self.model.head else full_state,
            )
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics, {"eval_accuracy": final.accuracy, "train_runtime_s": metrics["train_runtime_s"]}
