"""Tokenizing the classification splits, and identifying a tokenizer by its files.

Rows are tokenized without padding (padding happens per batch in the training worker);
token lengths are measured before truncation so the report can say how many rows lost
tokens.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from adaptflow.tasks.data.sources import sha256_file
from adaptflow.tasks.errors import DataError, ModelError, Problem

if TYPE_CHECKING:
    from datasets import DatasetDict

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "merges.txt",
    "vocab.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def tokenizer_identity(tokenizer_dir: Path) -> dict[str, str]:
    """Folder name and a sha256 over the tokenizer files present in it."""
    digest = hashlib.sha256()
    found = [name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if not found:
        raise ModelError(Problem(str(tokenizer_dir), "holds no tokenizer files", f"expected one of {', '.join(TOKENIZER_FILES)}"))
    for name in found:
        digest.update(f"{name}\0{sha256_file(tokenizer_dir / name)[0]}\n".encode())
    return {"name": tokenizer_dir.name, "sha256": digest.hexdigest()}


def load_tokenizer(tokenizer_dir: Path) -> Any:
    # transformers is heavy: imported only when this runs
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise ModelError(Problem(str(tokenizer_dir), f"cannot load its tokenizer ({exc})", "check the base model folder")) from None


def check_max_length(tokenizer: Any, max_length: int) -> None:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and max_length > limit:
        raise DataError(
            Problem(
                "data.max_length",
                f"{max_length} exceeds the tokenizer's limit of {limit} tokens",
                f"use {limit} or less",
            )
        )


def tokenize(
    splits: dict[str, pd.DataFrame], names: list[str], tokenizer: Any, max_length: int, pair: bool
) -> tuple[DatasetDict, dict[str, dict[str, float]]]:
    """Tokenized DatasetDict (no padding) and token length statistics per split."""
    # datasets is heavy: imported only when this runs
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    text_columns = ["text", "text_pair"] if pair else ["text"]
    features = Features({**{c: Value("string") for c in text_columns}, "labels": ClassLabel(names=names)})

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[c] for c in text_columns]
        encoded = dict(tokenizer(*texts, truncation=True, max_length=max_length))
        lengths = [len(ids) for ids in encoded["input_ids"]]
        at_limit = [i for i, n in enumerate(lengths) if n >= max_length]
        if at_limit:
            full = tokenizer(*[[t[i] for i in at_limit] for t in texts], truncation=False, verbose=False)
            for i, ids in zip(at_limit, full["input_ids"], strict=True):
                lengths[i] = len(ids)
        return {**encoded, "full_length": lengths}

    tokenized, stats = {}, {}
    for name, rows in splits.items():
        data = {c: rows[c].tolist() for c in text_columns} | {"labels": rows["labels"].tolist()}
        mapped = Dataset.from_dict(data, features=features).map(encode, batched=True, desc=f"tokenizing {name}")
        stats[name] = _length_stats(np.array(list(mapped["full_length"])), max_length)
        tokenized[name] = mapped.remove_columns("full_length")
    return DatasetDict(tokenized), stats


def _length_stats(lengths: np.ndarray, max_length: int) -> dict[str, float]:
    truncated = int((lengths > max_length).sum())
    return {
        "rows": int(len(lengths)),
        "mean": round(float(lengths.mean()), 2),
        "p50": round(float(np.percentile(lengths, 50)), 2),
        "p95": round(float(np.percentile(lengths, 95)), 2),
        "max": int(lengths.max()),
        "truncated": truncated,
        "truncated_share": round(truncated / len(lengths), 4),
    }
