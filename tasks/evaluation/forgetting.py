"""Forgetting score: how far an adapted model drifted from its pre-trained base on general text.

Adapting a model to one task can change what it knows about language in general. The
score measures that drift on a reference set of plain English sentences that have
nothing to do with any task (``tasks/reference/general_text.txt``, shipped with AdaptFlow):

- **encoders** (BERT-style): every sentence is embedded by the base model and by the
  adapted backbone (mean of the token states); the score is ``1 - mean cosine
  similarity`` of the two embeddings. 0: the backbone is unchanged (transfer learning
  always scores 0); 0.01 is a small drift; above ~0.2 the general-purpose embeddings
  are largely gone.
- **decoders** (GPT-style): the score is ``perplexity(adapted) / perplexity(base) - 1``
  on the same sentences, so 0 is unchanged, 0.5 means the adapted model finds general
  text 50% more surprising (negative: it got better at it). For a classifier built on a
  decoder, the adapted backbone's states go through the base model's LM head.

``forgetting_score(base_path, adapted, kind)`` takes an adapted model folder (an
AdaptFlow ``model/`` folder, or a Hugging Face folder) or an in-memory module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from adaptflow.tasks.base_model import META_FILE, inspect_model
from adaptflow.tasks.evaluation.lm import REFERENCE_TEXT, perplexity, reference_texts
from adaptflow.tasks.modeling import AdaptClassifier, load_backbone, load_classifier, load_language_model, pool

Kind = Literal["auto", "encoder", "decoder"]


def _batches(tokenizer, texts: list[str], batch_size: int, max_length: int):
    for start in range(0, len(texts), batch_size):
        yield tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")


@torch.no_grad()
def mean_embeddings(backbone: nn.Module, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Mean-pooled last hidden states, one row per text (fp32, on CPU)."""
    backbone.eval()
    rows = []
    for batch in _batches(tokenizer, texts, batch_size, max_length):
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = backbone(**inputs).last_hidden_state
        rows.append(pool(hidden.float(), batch["attention_mask"], "mean"))
    return torch.cat(rows)


def embedding_drift(base: torch.Tensor, adapted: torch.Tensor) -> float:
    """1 - mean cosine similarity of paired rows; 0 when they are the same."""
    cosine = nn.functional.cosine_similarity(base.double(), adapted.double(), dim=-1)
    return max(0.0, float(1.0 - cosine.mean()))  # rounding can dip a hair below 0 for identical rows


def _tokenizer(base_path: Path):
    from transformers import AutoTokenizer  # transformers loads in seconds: imported where a model is read

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:  # decoders often have none; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def _adapted_module(base_path: Path, adapted: nn.Module | Path | str, kind: str) -> nn.Module:
    """The module to score: an AdaptFlow classifier's backbone, or the given model."""
    if isinstance(adapted, (str, Path)):
        folder = Path(adapted)
        if (folder / META_FILE).is_file():
            adapted = load_classifier(folder, base_path)[0]
        elif kind == "decoder":
            return load_language_model(folder, use_safetensors=True)
        else:
            return load_backbone(folder)
    return adapted.backbone if isinstance(adapted, AdaptClassifier) else adapted


def _as_causal_lm(base_path: Path, module: nn.Module) -> nn.Module:
    """A causal LM: the module itself when it has an LM head, else the base LM with this backbone inside."""
    get_head = getattr(module, "get_output_embeddings", None)
    if get_head is not None and get_head() is not None:
        return module
    lm = load_language_model(base_path, use_safetensors=True)
    setattr(lm, lm.base_model_prefix, module)  # the base's LM head reads the adapted states
    return lm


def forgetting_score(
    base_path: Path | str,
    adapted: nn.Module | Path | str,
    kind: Kind = "auto",
    texts: list[str] | None = None,
    max_length: int = 128,
) -> float:
    """How far ``adapted`` drifted from the model in ``base_path`` on general text (0 = not at all).

    ``kind`` 'encoder': 1 - mean cosine similarity of mean-pooled embeddings; 'decoder':
    perplexity ratio minus 1; 'auto': chosen from the base model's config.
    """
    base_path = Path(base_path)
    texts = texts if texts is not None else reference_texts()
    if kind == "auto":
        kind = "decoder" if inspect_model(base_path).is_decoder else "encoder"
    tokenizer = _tokenizer(base_path)
    module = _adapted_module(base_path, adapted, kind)
    if kind == "encoder":
        base = mean_embeddings(load_backbone(base_path), tokenizer, texts, max_length=max_length)
        return embedding_drift(base, mean_embeddings(module, tokenizer, texts, max_length=max_length))
    base_lm = load_language_model(base_path, use_safetensors=True)
    before = perplexity(base_lm, tokenizer, texts, max_length=max_length)
    after = perplexity(_as_causal_lm(base_path, module), tokenizer, texts, max_length=max_length)
    return after / before - 1.0


@task(name="forgetting-score", cache_policy=NO_CACHE)
def forgetting_task(base_path: Path, adapted_dir: Path) -> float:
    """Forgetting score of a trained run's model folder against its base model; written next to it."""
    score = forgetting_score(base_path, adapted_dir)
    (Path(adapted_dir).parent / "forgetting.json").write_text(
        json.dumps({"forgetting_score": score, "reference": REFERENCE_TEXT.name, "sentences": len(reference_texts())}, indent=2)
    )
    return score
