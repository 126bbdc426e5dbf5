"""Stratified, seeded splits and samples: every random choice is decided by ``data_seed``."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from adaptflow.tasks.config import DataConfig
from adaptflow.tasks.data.labels import Split
from adaptflow.tasks.errors import DataError, Problem

Seed = int | np.random.SeedSequence


def stratified_split(labels: np.ndarray, fraction: float, seed: Seed) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with ``fraction`` of each class held out.

    Every class with two or more rows keeps at least one row on each side; a class with
    one row stays on the kept side. Indices come back sorted.
    """
    classes, counts = np.unique(labels, return_counts=True)
    floor = np.where(counts >= 2, 1, 0)
    cap = np.maximum(counts - 1, 0)
    quotas = _quotas(counts, round(fraction * len(labels)), floor, cap)
    held = _pick(labels, classes, quotas, seed)
    return np.setdiff1d(np.arange(len(labels)), held), held


def stratified_sample(labels: np.ndarray, size: int, seed: Seed) -> np.ndarray:
    """Sorted indices of ``size`` rows keeping class proportions; every class keeps a row when size allows."""
    classes, counts = np.unique(labels, return_counts=True)
    floor = np.ones_like(counts) if size >= len(classes) else np.zeros_like(counts)
    return _pick(labels, classes, _quotas(counts, size, floor, counts), seed)


def _quotas(counts: np.ndarray, total: int, floor: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Rows per class summing to ``total`` (within floor..cap), by largest remainder."""
    total = int(min(max(total, floor.sum()), cap.sum()))
    exact = counts * total / counts.sum()
    quotas = np.clip(np.floor(exact).astype(int), floor, cap)
    while quotas.sum() < total:
        room = np.where(quotas < cap, exact - quotas, -np.inf)
        quotas[int(np.argmax(room))] += 1
    while quotas.sum() > total:
        excess = np.where(quotas > floor, quotas - exact, -np.inf)
        quotas[int(np.argmax(excess))] -= 1
    return quotas


def _pick(labels: np.ndarray, classes: np.ndarray, quotas: np.ndarray, seed: Seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quotas, strict=True)]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def make_splits(cfg: DataConfig, train: Split, held: Split | None, names: list[str]) -> dict[str, pd.DataFrame]:
    """train / validation / eval frames with label ids, sampled as configured."""
    ids = {name: i for i, name in enumerate(names)}
    rows = train.rows.assign(labels=train.rows["label"].map(ids).astype(int))
    if held is None:
        kept, out = stratified_split(rows["labels"].to_numpy(), cfg.eval_fraction, _seed(cfg, "eval"))
        rows, evaluation = rows.iloc[kept], rows.iloc[out]
    else:
        evaluation = held.rows.assign(labels=held.rows["label"].map(ids).astype(int))
    splits = {"train": rows}
    if cfg.validation_fraction > 0:
        kept, out = stratified_split(rows["labels"].to_numpy(), cfg.validation_fraction, _seed(cfg, "validation"))
        splits = {"train": rows.iloc[kept], "validation": rows.iloc[out]}
    splits["eval"] = evaluation
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "eval": cfg.max_eval_samples}
    splits = {name: _limit(rows, limits[name], _seed(cfg, f"sample {name}")) for name, rows in splits.items()}
    empty = [name for name, frame in splits.items() if frame.empty]
    if empty:
        raise DataError(
            Problem(
                train.table.origin,
                f"too few rows per class to hold out the {', '.join(empty)} split",
                "add rows, lower the fractions, or give --eval-data",
            )
        )
    return splits


def _seed(cfg: DataConfig, purpose: str) -> np.random.SeedSequence:
    """A random stream per purpose, all decided by ``data_seed``."""
    return np.random.SeedSequence([cfg.data_seed % (1 << 64), zlib.crc32(purpose.encode())])


def _limit(rows: pd.DataFrame, size: int | None, seed: np.random.SeedSequence) -> pd.DataFrame:
    if size is None or size >= len(rows):
        return rows
    return rows.iloc[stratified_sample(rows["labels"].to_numpy(), size, seed)]
