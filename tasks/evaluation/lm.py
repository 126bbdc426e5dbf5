"""Evaluation of language models: perplexity, masked-LM loss, exact match and ROUGE-L.

- :func:`perplexity` ``exp(mean negative log-likelihood)`` of every next token of some
  texts (each text tokenized alone, truncated to ``max_length``). Used for held-out
  domain text, the evaluation split and the general reference text (forgetting).
- :func:`token_loss` the same mean NLL over rows that already carry ``labels`` (-100:
  not scored), for prepared SFT examples (response tokens only).
- :func:`masked_lm_loss` encoder models: the mean loss on a fixed, seeded masking of the
  rows, so "before" and "after" score the very same masked tokens.
- :func:`exact_match`, :func:`rouge_l` generation metrics, no downloads
  (ROUGE-L is the LCS-based F-measure over lower-cased whitespace tokens).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch

from adaptflow.tasks.assets import asset

IGNORE = -100
REFERENCE_TEXT = asset("adaptflow.tasks", "reference", "general_text.txt")


def reference_texts() -> list[str]:
    """The general English reference text (one sentence a line) for forgetting scores."""
    lines = REFERENCE_TEXT.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _batches(rows: Sequence[dict], batch_size: int, pad_id: int, device) -> Any:
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        yield ids.to(device), mask.to(device), labels.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def token_loss(model, rows: Sequence[dict], pad_id: int, batch_size: int = 16) -> float:
    """Mean next-token NLL over every labelled token of ``rows`` (label at t predicted from tokens < t)."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for ids, mask, labels in _batches(rows, batch_size, pad_id, _device(model)):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            total += nll.item()
            count += int((shifted_labels != IGNORE).sum())
    model.train(was_training)
    return total / max(1, count)


def perplexity(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 16) -> float:
    """Perplexity of a causal LM on ``texts``: exp of the mean NLL of every predicted token."""
    rows = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) >= 2:
            rows.append({"input_ids": ids, "labels": ids})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return math.exp(token_loss(model, rows, pad_id, batch_size))


def mask_tokens(input_ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: ``probability`` of the non-special tokens are chosen; of those 80% become
    [MASK], 10% a random token, 10% stay. Returns (inputs, labels with -100 where not chosen)."""
    labels = input_ids.clone()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in tokenizer.all_special_ids:
        special |= input_ids == token_id
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = IGNORE
    inputs = input_ids.clone()
    draw = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    randomize = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[randomize] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[randomize]
    return inputs, labels


def masked_lm_loss(model, tokenizer, rows: Sequence[dict], probability: float, seed: int = 0, batch_size: int = 16) -> float:
    """Mean masked-LM loss over a fixed seeded masking of ``rows`` (same masks on every call)."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for ids, mask, _ in _batches(rows, batch_size, tokenizer.pad_token_id or 0, torch.device("cpu")):
            inputs, labels = mask_tokens(ids, tokenizer, probability, generator)
            labels[mask == 0] = IGNORE
            device = _device(model)
            logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.to(device).reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            total += nll.item()
            count += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / max(1, count)


# ---- generation metrics --------------------------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both are equal after lower-casing and dropping punctuation and extra spaces."""
    return float(_normalize(prediction) == _normalize(reference))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of the normalized tokens."""
    pred, ref = _normalize(prediction).split(), _normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = _lcs(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def generate(
    model,
    tokenizer,
    prompts_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
) -> list[str]:
    """Continuations of already tokenized prompts (left-padded in batches), decoded without special tokens."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    device = _device(model)
    with torch.no_grad():
        for start in range(0, len(prompts_ids), batch_size):
            chunk = [list(p) for p in prompts_ids[start : start + batch_size]]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "do_sample": do_sample,
                "pad_token_id": pad_id,
                "eos_token_id": tokenizer.eos_token_id,
            }
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            outputs += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return [o.strip() for o in outputs]
