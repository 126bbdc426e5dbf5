"""Language-model training, as a :class:`~adaptflow.tasks.training.engine.TrainingTask`.

Three objectives:

- ``mlm``: masked-LM continued pre-training of an encoder (``domain_adaptation``),
- ``clm``: causal-LM continued pre-training of a decoder (``domain_adaptation``),
- ``sft``: causal LM fine-tuning on prompt/response data, loss on response tokens only
  (``task: causal_lm`` with lora / partial / full / transfer_learning).

The engine's loop is the classification one: gradient accumulation, ``eval_every`` (or
once per epoch) on the evaluation split (its token loss), early stopping, the time limit
and resumable checkpoints all apply. Batches are padded like classification batches: to
the longest row, rounded to a multiple of 8 on GPUs only.

Before and after training it scores the held-out text (masked-LM loss or perplexity) and
the general reference text (``tasks/reference/general_text.txt``: the forgetting score);
``sft`` runs also answer ``generation_samples`` evaluation prompts for exact match and
ROUGE-L. Output in the run directory (main process): ``metrics.json``,
``generations.json`` and ``model/``: the full weights in Hugging Face layout (loadable with
``AutoModelForCausalLM`` / ``AutoModelForMaskedLM``) or, for LoRA, ``model/adapter/``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from adaptflow.tasks.base_model import META_FILE, MODEL_FORMAT, inspect_model
from adaptflow.tasks.config import AdaptConfig, DomainAdaptation, Lora
from adaptflow.tasks.data.lm import IGNORE, load_lm_tokenizer
from adaptflow.tasks.data.store import load_prepared
from adaptflow.tasks.errors import ConfigError
from adaptflow.tasks.evaluation.lm import (
    exact_match,
    generate,
    mask_tokens,
    masked_lm_loss,
    perplexity,
    reference_texts,
    rouge_l,
    token_loss,
)
from adaptflow.tasks.modeling import count_parameters, load_language_model
from adaptflow.tasks.strategies import get_strategy
from adaptflow.tasks.training.checks import check_lm_config
from adaptflow.tasks.training.engine import EXAMPLE_ID, LoopState, Plan, Run, pad_multiple, padded_width, seeded_generator, train_sampler

ADAPTER_DIR = "adapter"
SENTENCE_TRANSFORMERS_FILES = ("1_Pooling", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def is_language_model_run(cfg: AdaptConfig) -> bool:
    """Continued pre-training or causal LM fine-tuning (everything else trains a classifier)."""
    return cfg.task == "causal_lm" or isinstance(cfg.strategy, DomainAdaptation)


def objective_of(cfg: AdaptConfig, is_decoder: bool) -> str:
    """'mlm' / 'clm' for continued pre-training, 'sft' for causal LM fine-tuning."""
    if isinstance(cfg.strategy, DomainAdaptation):
        return "clm" if is_decoder else "mlm"
    return "sft"


# ---- model -------------------------------------------------------------------------


def load_lm(path: Path, objective: str, cfg: AdaptConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM  # heavy: loads only inside the worker

    kwargs: dict = {"use_safetensors": True, "trust_remote_code": cfg.trust_remote_code}
    if isinstance(cfg.strategy, Lora) and cfg.strategy.qlora:
        from transformers import BitsAndBytesConfig  # optional: needs bitsandbytes (QLoRA only)

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    model = load_language_model(path, auto, **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


# ---- data --------------------------------------------------------------------------


class LmCollator:
    """Right-pads input_ids (pad id) and labels (-100); masks tokens on the fly for masked LM.

    Rows are padded to the longest in the batch, rounded up to a multiple of ``multiple``:
    the worker passes ``pad_multiple(device)``, 8 on GPUs and 1 (exact) elsewhere.
    Its masking generator is saved with every checkpoint (``state_dict``), so a resumed
    masked-LM run draws the masks an uninterrupted one would.
    """

    def __init__(self, tokenizer, mlm_probability: float | None, seed: int, multiple: int = 8):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.multiple = multiple
        self.generator = torch.Generator().manual_seed(seed)

    def restart(self) -> None:
        """Draw the masks of the first call again (evaluation scores the same masked tokens every time)."""
        self.generator.manual_seed(self.seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = padded_width([len(r["input_ids"]) for r in rows], self.multiple)
        ids = torch.tensor([r["input_ids"] + [self.pad_id] * (width - len(r["input_ids"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
        if self.mlm_probability is not None:
            ids, labels = mask_tokens(ids, self.tokenizer, self.mlm_probability, self.generator)
            labels[mask == 0] = IGNORE
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if EXAMPLE_ID in rows[0]:
            batch[EXAMPLE_ID] = torch.tensor([r[EXAMPLE_ID] for r in rows], dtype=torch.long)
        return batch


# ---- measuring ---------------------------------------------------------------------


def scores(model, tokenizer, objective: str, eval_rows: list[dict], cfg: AdaptConfig) -> dict[str, float]:
    """Held-out and reference-text scores: masked-LM loss (encoders) or perplexity (decoders)."""
    bs = max(8, cfg.training.batch_size)
    reference = reference_texts()
    if objective == "mlm":
        assert isinstance(cfg.strategy, DomainAdaptation)
        p = cfg.strategy.mlm_probability
        ref_rows = [
            {"input_ids": ids, "labels": ids} for ids in tokenizer(reference, truncation=True, max_length=cfg.data.max_length)["input_ids"]
        ]
        return {
            "eval_mlm_loss": masked_lm_loss(model, tokenizer, eval_rows, p, batch_size=bs),
            "reference_mlm_loss": masked_lm_loss(model, tokenizer, ref_rows, p, batch_size=bs),
        }
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
        {
            "prompt": tokenizer.decode(p, skip_special_tokens=True),
            "reference": r["response"],
            "generated": a,
            "exact_match": exact_match(a, r["response"]),
            "rouge_l": rouge_l(a, r["response"]),
        }
        for p, r, a in zip(prompts, rows, answers)
    ]
    n = len(samples)
    return {"exact_match": sum(s["exact_match"] for s in samples) / n, "rouge_l": sum(s["rouge_l"] for s in samples) / n}, samples


@dataclass
class TokenLoss:
    """An evaluation inside the loop: the mean loss per scored token of a split."""

    step: int
    split: str
    loss: float

    def scores(self) -> dict[str, float]:
        return {}


def evaluate_tokens(module, loader, accelerator, step: int, split: str, causal: bool) -> TokenLoss:
    """Mean loss per scored token over ``loader``, summed over every rank (a causal LM scores each label from the tokens before it)."""
    module.eval()
    total = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    with torch.no_grad():
        for batch in loader:
            with accelerator.autocast():
                loss = module(**batch).loss
            scored = ((batch["labels"][:, 1:] if causal else batch["labels"]) != IGNORE).sum()
            total += loss.float() * scored
            count += scored
    module.train()
    if accelerator.num_processes > 1:
        total, count = accelerator.reduce(total, reduction="sum"), accelerator.reduce(count, reduction="sum")
    return TokenLoss(step, split, (total / count.clamp(min=1)).item())


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


# ---- the task ----------------------------------------------------------------------


class LanguageModelTask:
    """Continued pre-training (masked or causal LM) or causal LM fine-tuning of a pre-trained model."""

    def build(self, run: Run) -> Plan:
        from transformers.utils import logging as hf_logging  # heavy: loads only inside the worker

        hf_logging.set_verbosity_error()
        spec, cfg, accelerator, events = run.spec, run.cfg, run.accelerator, run.events
        t = cfg.training
        ds, self.data_manifest = load_prepared(spec.prepared_path)
        self.tokenizer = tokenizer = load_lm_tokenizer(spec.model_path)
        info = inspect_model(spec.model_path, cfg.trust_remote_code)
        problems = check_lm_config(cfg, info.is_decoder)
        if problems:
            raise ConfigError(problems)
        self.objective = objective = objective_of(cfg, info.is_decoder)
        model = load_lm(spec.model_path, objective, cfg)
        model.to(accelerator.device)
        self.eval_rows = [dict(r) for r in ds["eval"]]

        self.before = scores(model, tokenizer, objective, self.eval_rows, cfg) if accelerator.is_main_process else {}
        events.log("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in self.before.items()))
        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_strategy(cfg.strategy.name).configure_decoder(model, cfg)
        self.trainable_params, self.total_params = count_parameters(model)
        events.log(
            f"{objective} / {cfg.strategy.name}: {self.trainable_params:,} of {self.total_params:,} parameters train "
            f"({100 * self.trainable_params / max(1, self.total_params):.2f}%), {accelerator.num_processes} process(es) on {accelerator.device}"
        )
        s = cfg.strategy
        self.domain = isinstance(s, DomainAdaptation)
        mlm_probability = s.mlm_probability if objective == "mlm" else None
        multiple = pad_multiple(accelerator.device)
        collate = LmCollator(tokenizer, mlm_probability, t.seed, multiple)
        self.eval_collate = LmCollator(tokenizer, mlm_probability, t.seed + 1, multiple)
        train = ds["train"].add_column(EXAMPLE_ID, list(range(len(ds["train"]))))
        sampler = train_sampler([len(x) for x in ds["train"]["input_ids"]], cfg, accelerator.num_processes)
        train_loader = DataLoader(train, batch_size=t.batch_size, sampler=sampler, collate_fn=collate, generator=seeded_generator(t.seed))
        eval_loader = DataLoader(ds["eval"], batch_size=t.batch_size * 2, collate_fn=self.eval_collate, generator=seeded_generator(t.seed))
        return Plan(
            module=model,
            train_loader=train_loader,
            eval_loaders={"eval": eval_loader},
            monitor_split="eval",
            learning_rate=s.domain_learning_rate if self.domain else cfg.learning_rate(),
            max_steps=s.domain_max_steps if self.domain else t.max_steps,
            epochs=s.domain_epochs if self.domain else t.epochs,
            checkpointed=[collate] if mlm_probability is not None else [],
        )

    def loss_step(self, module, batch) -> torch.Tensor:
        return module(**batch).loss

    def evaluate(self, module, loader, accelerator, step: int, split: str) -> TokenLoss:
        self.eval_collate.restart()
        return evaluate_tokens(module, loader, accelerator, step, split, causal=self.objective != "mlm")

    def finish(self, run: Run, plan: Plan, module, state: LoopState, loop_time: float) -> tuple[dict, dict]:
        cfg, accelerator, spec, objective = run.cfg, run.accelerator, run.spec, self.objective
        accelerator.wait_for_everyone()
        metrics: dict = {}
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(module)
            after = scores(unwrapped, self.tokenizer, objective, self.eval_rows, cfg)
            generation, samples = generation_samples(unwrapped, self.tokenizer, self.eval_rows, cfg) if objective == "sft" else ({}, [])
            base = run.base_metrics(state, loop_time, self.trainable_params, self.total_params)
            metrics = {
                "task": "domain_adaptation" if self.domain else "causal_lm",
                "objective": objective,
                "strategy": cfg.strategy.name,
                "before": self.before,
                "after": after,
                "generation": generation,
                "steps": base.pop("steps"),
                "examples_seen": base.pop("examples_seen"),
                "history": base.pop("history"),
                "train_runtime_s": loop_time,
                "eval_time_s": state.eval_time,
                # training throughput: evaluations inside the loop are not training
                "samples_per_s": state.examples_seen / max(1e-9, loop_time - state.eval_time),
                **base,
                "eval_loss": math.log(after["eval_perplexity"]) if "eval_perplexity" in after else after["eval_mlm_loss"],
            }
            metrics["worker_wall_s"] = metrics.pop("worker_wall_s")  # last, as before
            meta = {
                "kind": "masked_lm" if objective == "mlm" else "causal_lm",
                "objective": objective,
                "strategy": cfg.strategy.name,
                "base_model": cfg.model,
                "max_length": cfg.data.max_length,
                "prompt_format": self.data_manifest.get("format"),
            }
            save_lm(unwrapped, self.tokenizer, spec.run_dir / "model", spec.model_path, meta)
            (spec.run_dir / "generations.json").write_text(json.dumps(samples, indent=2))
            (spec.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
            run.events.log("after training: " + ", ".join(f"{k} {v:.4f}" for k, v in {**after, **generation}.items()))
        return metrics, {"train_runtime_s": loop_time}
