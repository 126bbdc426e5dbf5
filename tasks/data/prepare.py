"""Data preparation: load -> validate -> clean -> split -> tokenize -> save_to_disk + manifest.

:func:`prepare_data` turns the user's data (CSV, TSV, JSON lines, Parquet, a ``datasets``
folder, a hub dataset, or ``sample://reviews``) into a tokenized ``DatasetDict`` with the
splits ``train``, ``eval`` and, when asked for, ``validation``. Each split holds the
columns ``text`` (``text_pair`` for sentence pairs), ``labels`` (class ids),
``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes them),
unpadded: padding happens per batch in the training worker.

The result lands in the prepared-data store (:mod:`adaptflow.tasks.data.store`), ``WORK_DIR/prepared/<key>/``: ``dataset/`` (``save_to_disk``) and
``manifest.json``. The key hashes the raw input bytes, the :class:`DataConfig`, the
tokenizer files and :data:`PREP_FORMAT_VERSION`, so the same inputs are prepared once
and reused. The folder is built under a temporary name and renamed into place, with the
manifest written last, so a folder holding ``manifest.json`` is always complete.

Manifest fields:
  format_version, key, created_at (ISO 8601, UTC)
  source               {"data": {...}, "eval_data": {...} | None, "train_from": str,
                       "eval_from": str}; each input: uri (as given), kind (file |
                       datasets | hub), sha256 and size (bytes) for files and datasets
                       folders (a hash over the folder's files), the `datasets`
                       fingerprint of each split for hub datasets. train_from/eval_from
                       say which input (and split) each came from, or the share held out.
  columns              {"text", "text_pair", "label", "eval_text"}
  label_names          class names; the id of a class is its index here
  splits               {split: rows}
  label_balance        {split: {label name: rows}}
  dropped              {split: {reason: rows}}; reasons: empty_text, empty_text_pair (pairs
                       only), missing_label, duplicate, conflicting_duplicate (the duplicates
                       among those whose label differs from the kept row's), overlaps_eval
                       (training rows whose text also is in the evaluation data). Counted
                       where the rows were read: 'train' covers the whole `data` input
                       when the evaluation split is held out of it.
  whitespace_stripped  {split: rows whose text lost leading/trailing whitespace}
  token_lengths        {split: {rows, mean, p50, p95, max, truncated, truncated_share}};
                       lengths are before truncation, `truncated` counts rows longer than
                       max_length
  tokenizer            {"name": folder name, "sha256": hash of its tokenizer files}
  max_length, data_config (the DataConfig as a dict)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from adaptflow.tasks.config import DataConfig
from adaptflow.tasks.data.columns import Columns, resolve_columns
from adaptflow.tasks.data.labels import Split, clean
from adaptflow.tasks.data.readers import DATA_SPLITS, EVAL_SPLITS, Table, held_out_split, read_source
from adaptflow.tasks.data.sources import Fetch, Source, fingerprint, resolve_source
from adaptflow.tasks.data.splits import make_splits
from adaptflow.tasks.data.store import MANIFEST, PreparedData, open_prepared, publish
from adaptflow.tasks.data.tokenize import check_max_length, load_tokenizer, tokenize, tokenizer_identity
from adaptflow.tasks.errors import DataError, run_all

if TYPE_CHECKING:
    from datasets import DatasetDict

PREP_FORMAT_VERSION = 1
"""Bump when a change to this package changes what a prepared folder holds."""

T = TypeVar("T")


def prepare_data(cfg: DataConfig, tokenizer_dir: Path, work_dir: Path, *, fetch: Fetch | None = None) -> PreparedData:
    """Prepare ``cfg``'s data for training with the tokenizer in ``tokenizer_dir``.

    ``fetch(uri, dest_dir)`` downloads an ``s3://`` input and returns its local path.
    Raises one :class:`DataError` listing every problem found in the inputs.
    """
    sources = _collect(
        lambda: resolve_source("data", cfg.data, work_dir, fetch),
        lambda: resolve_source("eval_data", cfg.eval_data, work_dir, fetch) if cfg.eval_data else None,
    )
    inputs = {src.role: fingerprint(src) for src in sources if src is not None}
    tokenizer = tokenizer_identity(Path(tokenizer_dir))
    key = prep_key(cfg, inputs, tokenizer)
    folder = Path(work_dir) / "prepared" / key
    if (folder / MANIFEST).exists():
        return open_prepared(folder, reused=True)
    dataset, report = _build(cfg, sources[0], sources[1], Path(tokenizer_dir))
    manifest = {
        "format_version": PREP_FORMAT_VERSION,
        "key": key,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"data": inputs["data"], "eval_data": inputs.get("eval_data"), **report["source"]},
        **{k: v for k, v in report.items() if k != "source"},
        "tokenizer": tokenizer,
        "max_length": cfg.max_length,
        "data_config": cfg.model_dump(mode="json"),
    }
    publish(folder, dataset, manifest)
    return open_prepared(folder, reused=False)


def prep_key(cfg: DataConfig, inputs: dict[str, Any], tokenizer: dict[str, str]) -> str:
    """First 16 hex digits of a sha256 over everything that decides a prepared dataset."""
    payload = {
        "format_version": PREP_FORMAT_VERSION,
        "inputs": inputs,
        "data_config": cfg.model_dump(mode="json"),
        "tokenizer": tokenizer["sha256"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _Validated:
    """The inputs read, cleaned and split: what tokenizing starts from."""

    train_table: Table
    held_table: Table | None
    columns: Columns
    train: Split
    held: Split | None
    names: list[str]
    splits: dict[str, pd.DataFrame]


def validated(cfg: DataConfig, data: Source, eval_data: Source | None) -> _Validated:
    """Tables -> columns -> clean -> splits; one DataError for every problem found (also the check before a run, data/check.py)."""
    train_table, held_table = _collect(
        lambda: read_source(data, DATA_SPLITS),
        lambda: read_source(eval_data, EVAL_SPLITS) if eval_data is not None else held_out_split(data),
    )
    columns = resolve_columns(cfg, train_table, held_table)
    train, held, names = clean(columns, train_table, held_table)
    return _Validated(train_table, held_table, columns, train, held, names, make_splits(cfg, train, held, names))


def _build(cfg: DataConfig, data: Source, eval_data: Source | None, tokenizer_dir: Path) -> tuple[DatasetDict, dict[str, Any]]:
    """Everything but the key and the folder: validated splits -> tokens."""
    v = validated(cfg, data, eval_data)
    train_table, held_table, columns, train, held, names, splits = (
        v.train_table,
        v.held_table,
        v.columns,
        v.train,
        v.held,
        v.names,
        v.splits,
    )
    tokenizer = load_tokenizer(tokenizer_dir)
    check_max_length(tokenizer, cfg.max_length)
    dataset, lengths = tokenize(splits, names, tokenizer, cfg.max_length, pair=columns.text_pair is not None)
    cleaned = {"train": train} | ({"eval": held} if held is not None else {})
    report = {
        "source": {
            "train_from": train_table.origin,
            "eval_from": held_table.origin if held_table is not None else f"{cfg.eval_fraction:g} of data held out (seed {cfg.data_seed})",
        },
        "columns": {
            "text": columns.text,
            "text_pair": columns.text_pair,
            "label": columns.label,
            "eval_text": columns.eval_text,
        },
        "label_names": names,
        "splits": {name: len(rows) for name, rows in splits.items()},
        "label_balance": {name: _balance(rows, names) for name, rows in splits.items()},
        "dropped": {name: split.dropped for name, split in cleaned.items()},
        "whitespace_stripped": {name: split.stripped for name, split in cleaned.items()},
        "token_lengths": lengths,
    }
    return dataset, report


def _balance(rows: pd.DataFrame, names: list[str]) -> dict[str, int]:
    counts = np.bincount(rows["labels"].to_numpy(dtype=int), minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts, strict=True)}


def _collect(*steps: Callable[[], T]) -> list[T]:
    """Run every step; one DataError with all their problems when any fails."""
    return run_all(*steps, catch=DataError)


def data_report_markdown(manifest: dict[str, Any]) -> str:
    """The data-quality report: sizes, balance, what cleaning dropped, token lengths."""
    lines = [
        f"### Prepared data `{manifest['key']}`",
        "",
        "| split | rows | label balance | dropped | tokens p50 / p95 / max | truncated |",
        "|---|---|---|---|---|---|",
    ]
    for split, rows in manifest["splits"].items():
        balance = ", ".join(f"{k}: {v}" for k, v in manifest["label_balance"].get(split, {}).items())
        dropped = ", ".join(f"{k}: {v}" for k, v in manifest["dropped"].get(split, {}).items() if v) or "none"
        t = manifest["token_lengths"].get(split, {})
        lengths = f"{t.get('p50', '?')} / {t.get('p95', '?')} / {t.get('max', '?')}"
        lines.append(f"| {split} | {rows} | {balance} | {dropped} | {lengths} | {t.get('truncated', 0)} |")
    return "\n".join(lines) + "\n"
