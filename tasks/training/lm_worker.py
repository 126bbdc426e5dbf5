"""The language-model training worker: continued pre-training and causal LM fine-tuning.

    python -m adaptflow.tasks.training.lm_worker RUN_DIR/run_spec.json

Same contract as :mod:`adaptflow.tasks.training.worker` (a :class:`RunSpec` in, ``ADAPTFLOW_EVENT``
lines out, ``metrics.json`` and ``model/`` in the run folder), for three objectives:

- ``mlm``: masked-LM continued pre-training of an encoder (``domain_adaptation``),
- ``clm``: causal-LM continued pre-training of a decoder (``domain_adaptation``),
- ``sft``: causal LM fine-tuning on prompt/response data, loss on response tokens only
  (``task: causal_lm`` with lora / partial / full / transfer_learning).

Before and after training it scores the held-out text (masked-LM loss or perplexity) and
the general reference text (``tasks/reference/general_text.txt``: the forgetting score);
``sft`` runs also answer ``generation_samples`` evaluation prompts for exact match and
ROUGE-L. Saved model: the full weights in Hugging Face layout (``model/``, loadable with
``AutoModelForCausalLM`` / ``AutoModelForMaskedLM``) or, for LoRA, ``model/adapter/``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from adaptflow.tasks.config import AdaptConfig, DomainAdaptation, Lora
from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.data.lm import IGNORE, load_lm_tokenizer
from adaptflow.tasks.evaluation.lm import exact_match, generate, mask_tokens, masked_lm_loss, perplexity, reference_texts, rouge_l, token_loss
from adaptflow.tasks.modeling import META_FILE, MODEL_FORMAT, count_parameters, inspect_model
from adaptflow.tasks.strategies import get_strategy
from adaptflow.tasks.training.worker import Events, RunSpec, _generator, _peak_memory_mb, make_optimizer, resolve_precision
from adaptflow.tasks.training.worker import main as worker_main

ADAPTER_DIR = "adapter"
SENTENCE_TRANSFORMERS_FILES = ("1_Pooling", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def objective_of(cfg: AdaptConfig, is_decoder: bool) -> str:
    """'mlm' / 'clm' for continued pre-training, 'sft' for causal LM fine-tuning."""
    if isinstance(cfg.strategy, DomainAdaptation):
        return "clm" if is_decoder else "mlm"
    return "sft"


def check_lm_config(cfg: AdaptConfig, is_decoder: bool) -> list[Problem]:
    """Problems only visible once the base model is known (checked before launching)."""
    problems = []
    if cfg.task == "causal_lm" and not is_decoder:
        problems.append(Problem("model", "is an encoder; --task causal_lm needs a decoder model (GPT-2, Llama, Qwen...)", "pick a decoder model, or use --task classification"))
    if isinstance(cfg.strategy, Lora) and cfg.strategy.qlora:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            problems.append(Problem("strategy.qlora (--qlora)", "needs the bitsandbytes package", "pip install bitsandbytes (on a CUDA machine)"))
    return problems


# ---- model and strategies ----------------------------------------------------------


def load_lm(path: Path, objective: str, cfg: AdaptConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    kwargs: dict = {"use_safetensors": True, "trust_remote_code": cfg.trust_remote_code}
    if isinstance(cfg.strategy, Lora) and cfg.strategy.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(path, **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


# ---- data --------------------------------------------------------------------------


class LmCollator:
    """Right-pads input_ids (pad id) and labels (-100); masks tokens on the fly for masked LM."""

    def __init__(self, tokenizer, mlm_probability: float | None, seed: int):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mlm_probability = mlm_probability
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = int(math.ceil(max(len(r["input_ids"]) for r in rows) / 8) * 8)
        ids = torch.tensor([r["input_ids"] + [self.pad_id] * (width - len(r["input_ids"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
        if self.mlm_probability is not None:
            ids, labels = mask_tokens(ids, self.tokenizer, self.mlm_probability, self.generator)
            labels[mask == 0] = IGNORE
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---- measuring ---------------------------------------------------------------------


def scores(model, tokenizer, objective: str, eval_rows: list[dict], cfg: AdaptConfig) -> dict[str, float]:
    """Held-out and reference-text scores: masked-LM loss (encoders) or perplexity (decoders)."""
    bs = max(8, cfg.training.batch_size)
    reference = reference_texts()
    if objective == "mlm":
        assert isinstance(cfg.strategy, DomainAdaptation)
        p = cfg.strategy.mlm_probability
        ref_rows = [{"input_ids": ids, "labels": ids} for ids in tokenizer(reference, truncation=True, max_length=cfg.data.max_length)["input_ids"]]
        return {"eval_mlm_loss": masked_lm_loss(model, tokenizer, eval_rows, p, batch_size=bs), "reference_mlm_loss": masked_lm_loss(model, tokenizer, ref_rows, p, batch_size=bs)}
    return {
        "eval_perplexity": math.exp(token_loss(model, eval_rows, tokenizer.pad_token_id or 0, bs)),
        "reference_perplexity": perplexity(model, tokenizer, reference, cfg.data.max_length, bs),
    }


def generation_samples(model, tokenizer, eval_rows: list[dict], cfg: AdaptConfig) -> tuple[dict[str, float], list[dict]]:
    """Greedy answers to the first ``generation_samples`` evaluation prompts; mean exact match and ROUGE-L."""
    rows = eval_rows[: cfg.lm.generation_samples]
    if not rows:
        return {}, []
    prompts = [r["input_ids"][: r["prompt_length"]] for r in rows]
    answers = generate(model, tokenizer, prompts, max_new_tokens=cfg.lm.generation_max_new_tokens)
    samples = [
        {"prompt": tokenizer.decode(p, skip_special_tokens=True), "reference": r["response"], "generated": a,
         "exact_match": exact_match(a, r["response"]), "rouge_l": rouge_l(a, r["response"])}
        for p, r, a in zip(prompts, rows, answers)
    ]
    n = len(samples)
    return {"exact_match": sum(s["exact_match"] for s in samples) / n, "rouge_l": sum(s["rouge_l"] for s in samples) / n}, samples


# ---- the loop ----------------------------------------------------------------------


def lm_loss_step(model, batch) -> torch.Tensor:
    return model(**batch).loss


def train_lm(cfg: AdaptConfig, accelerator, model, optimizer, loader, events: Events, max_steps: int | None, epochs: int) -> dict:
    from transformers import get_scheduler

    t = cfg.training
    updates_per_epoch = max(1, math.ceil(len(loader) / t.gradient_accumulation_steps))
    total_steps = max_steps or epochs * updates_per_epoch
    epochs = math.ceil(total_steps / updates_per_epoch)
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    step, examples, history = 0, 0, []
    running, running_n = 0.0, 0
    events.emit("start", total_steps=total_steps, epochs=epochs, resumed_from_step=None)
    model.train()
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):  # a new shuffle each pass
            loader.set_epoch(epoch)
        for batch in loader:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = lm_loss_step(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running += loss.detach().float().item()
            running_n += 1
            examples += len(batch["input_ids"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            if step % t.log_every == 0 or step == total_steps:
                mean = accelerator.reduce(torch.tensor(running / running_n, device=accelerator.device), reduction="mean").item()
                running, running_n = 0.0, 0
                record = {"step": step, "epoch": round(step / updates_per_epoch, 4), "train_loss": mean, "learning_rate": scheduler.get_last_lr()[0]}
                history.append(record)
                events.emit("progress", total_steps=total_steps, examples_seen=examples, **record)
            if step >= total_steps:
                break
        if step >= total_steps:
            break
    return {"steps": step, "examples_seen": examples, "history": history}


# ---- saving ------------------------------------------------------------------------


def save_lm(model, tokenizer, out: Path, base_path: Path, meta: dict) -> None:
    """Full weights in Hugging Face layout in ``out``, or the LoRA adapter alone in ``out/adapter``."""
    out.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model, "peft_config")
    model.save_pretrained(out / ADAPTER_DIR if is_peft else out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for name in SENTENCE_TRANSFORMERS_FILES:  # keeps the checkpoint's pooling for a classification step afterwards
        src = base_path / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy(src, out / name)
    (out / META_FILE).write_text(json.dumps({"format": MODEL_FORMAT, "weights": "adapter" if is_peft else "full", **meta}, indent=2))


# ---- main --------------------------------------------------------------------------


def run(spec: RunSpec) -> dict:
    import datasets
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    from adaptflow.tasks.data import load_prepared

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    cfg, t = spec.config, spec.config.training
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(t.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=t.gradient_accumulation_steps)
    events = Events(accelerator)
    set_seed(t.seed)
    started = time.perf_counter()
    ds, manifest = load_prepared(spec.prepared_path)
    tokenizer = load_lm_tokenizer(spec.model_path)
    info = inspect_model(spec.model_path, cfg.trust_remote_code)
    problems = check_lm_config(cfg, info.is_decoder)
    if problems:
        raise ConfigError(problems)
    objective = objective_of(cfg, info.is_decoder)
    model = load_lm(spec.model_path, objective, cfg)
    model.to(accelerator.device)
    eval_rows = [dict(r) for r in ds["eval"]]

    before = scores(model, tokenizer, objective, eval_rows, cfg) if accelerator.is_main_process else {}
    events.log("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    if getattr(t, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_strategy(cfg.strategy.name).configure_decoder(model, cfg)
    trainable_params, total_params = count_parameters(model)
    events.log(
        f"{objective} / {cfg.strategy.name}: {trainable_params:,} of {total_params:,} parameters train "
        f"({100 * trainable_params / max(1, total_params):.2f}%), {accelerator.num_processes} process(es) on {accelerator.device}"
    )
    s = cfg.strategy
    domain = isinstance(s, DomainAdaptation)
    lr = s.domain_learning_rate if domain else cfg.learning_rate()
    max_steps, epochs = (s.domain_max_steps, s.domain_epochs) if domain else (t.max_steps, t.epochs)
    collate = LmCollator(tokenizer, s.mlm_probability if objective == "mlm" else None, t.seed)
    loader = DataLoader(ds["train"], batch_size=t.batch_size, shuffle=True, collate_fn=collate, generator=_generator(t.seed))
    optimizer = make_optimizer(model, lr, t.weight_decay, t.layer_lr_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop_start = time.perf_counter()
    trained = train_lm(cfg, accelerator, model, optimizer, loader, events, max_steps, epochs)
    loop_time = time.perf_counter() - loop_start
    accelerator.wait_for_everyone()
    metrics: dict = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        after = scores(unwrapped, tokenizer, objective, eval_rows, cfg)
        generation, samples = generation_samples(unwrapped, tokenizer, eval_rows, cfg) if objective == "sft" else ({}, [])
        metrics = {
            "task": "domain_adaptation" if domain else "causal_lm",
            "objective": objective,
            "strategy": cfg.strategy.name,
            "before": before,
            "after": after,
            "generation": generation,
            **trained,
            "train_runtime_s": loop_time,
            "samples_per_s": trained["examples_seen"] / max(1e-9, loop_time),
            "peak_memory_mb": _peak_memory_mb(accelerator),
            "trainable_params": trainable_params,
            "total_params": total_params,
            "num_processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "mixed_precision": precision,
            "eval_loss": math.log(after["eval_perplexity"]) if "eval_perplexity" in after else after["eval_mlm_loss"],
            "worker_wall_s": time.perf_counter() - started,
        }
        meta = {
            "kind": "masked_lm" if objective == "mlm" else "causal_lm",
            "objective": objective,
            "strategy": cfg.strategy.name,
            "base_model": cfg.model,
            "max_length": cfg.data.max_length,
            "prompt_format": manifest.get("format"),
        }
        save_lm(unwrapped, tokenizer, spec.run_dir / "model", spec.model_path, meta)
        (spec.run_dir / "generations.json").write_text(json.dumps(samples, indent=2))
        (spec.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        events.log("after training: " + ", ".join(f"{k} {v:.4f}" for k, v in {**after, **generation}.items()))
    events.emit("done", steps=trained["steps"], train_runtime_s=loop_time)
    accelerator.end_training()
    return metrics


def main(argv: list[str] | None = None) -> int:
    return worker_main(argv, run_spec=run, module="adaptflow.tasks.training.lm_worker")


if __name__ == "__main__":
    sys.exit(main())
