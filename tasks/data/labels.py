"""Cleaning rows and settling the labels.

Whitespace is stripped; rows with empty text or no label, repeated texts and training
rows whose text is also in the evaluation data are dropped and counted per reason
(:data:`DROP_REASONS`). Integer labels are compared as integers (1, 1.0 and '01' are one
class); the class names are sorted and the id of a class is its index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from adaptflow.tasks.data.columns import Columns, missing_column
from adaptflow.tasks.data.readers import MAX_REPORTED, Table, capped
from adaptflow.tasks.data.values import as_text, is_integral, is_missing
from adaptflow.tasks.errors import DataError, Problem

DROP_REASONS = ("empty_text", "missing_label", "duplicate", "conflicting_duplicate", "overlaps_eval")


@dataclass
class Split:
    """Rows of one split with canonical columns, and what cleaning did to them."""

    table: Table
    rows: pd.DataFrame
    """Columns: text, [text_pair], label, row (index into ``table.frame``)."""
    dropped: dict[str, int]
    stripped: int = 0


def _extract(table: Table, text: str, columns: Columns) -> Split:
    frame = table.frame
    rows = pd.DataFrame({"text": frame[text].map(as_text).to_numpy(dtype=object)})
    if columns.text_pair:
        rows["text_pair"] = frame[columns.text_pair].map(as_text).to_numpy(dtype=object)
    rows["label"] = frame[columns.label].to_numpy(dtype=object)
    rows["row"] = np.arange(len(frame))
    reasons = DROP_REASONS if not columns.text_pair else ("empty_text", "empty_text_pair", *DROP_REASONS[1:])
    return Split(table, rows, dict.fromkeys(reasons, 0))


def _strip_and_drop_empty(split: Split) -> None:
    """Strip whitespace; drop rows with empty text or no label."""
    rows = split.rows
    changed = np.zeros(len(rows), dtype=bool)
    for col in _key_columns(rows):
        stripped = rows[col].map(str.strip)
        changed |= (stripped != rows[col]).to_numpy()
        rows[col] = stripped
    kept = (rows[_key_columns(rows)] != "").all(axis=1).to_numpy()
    split.stripped = int((changed & kept).sum())
    _drop(split, split.rows["text"] == "", "empty_text")
    if "text_pair" in split.rows:
        _drop(split, split.rows["text_pair"] == "", "empty_text_pair")
    _drop(split, split.rows["label"].map(is_missing), "missing_label")


def _drop_duplicates(split: Split) -> None:
    """Drop repeated texts keeping the first; also count those whose label disagrees with it."""
    keys = _key_columns(split.rows)
    repeated = split.rows.duplicated(subset=keys, keep="first")
    first_label = split.rows.groupby(keys, sort=False)["label"].transform("first")
    split.dropped["conflicting_duplicate"] = int((repeated & (split.rows["label"] != first_label)).sum())
    _drop(split, repeated, "duplicate")


def _drop_overlap(train: Split, held: Split) -> None:
    """Drop training rows whose text (and pair) also is in the evaluation data."""
    keys = _key_columns(train.rows)
    in_eval = pd.MultiIndex.from_frame(train.rows[keys]).isin(pd.MultiIndex.from_frame(held.rows[keys]))
    _drop(train, in_eval, "overlaps_eval")


def _key_columns(rows: pd.DataFrame) -> list[str]:
    return [c for c in ("text", "text_pair") if c in rows]


def _drop(split: Split, mask: pd.Series | np.ndarray, reason: str) -> None:
    drop = np.asarray(mask, dtype=bool)
    split.dropped[reason] += int(drop.sum())
    split.rows = split.rows[~drop]


def label_kind(labels: Iterable[Any]) -> Literal["int", "str"]:
    values = list(labels)
    return "int" if values and all(is_integral(v) for v in values) else "str"


def canonical_label(value: Any, kind: Literal["int", "str"]) -> str:
    """The label as a string; integers written plainly so that 1, 1.0 and '01' agree."""
    if kind == "int" and is_integral(value):
        return str(int(value.strip()) if isinstance(value, str) else int(value))
    return str(value).strip()


def _label_names(labels: Iterable[str], kind: Literal["int", "str"]) -> list[str]:
    return sorted(set(labels), key=int if kind == "int" else None)


def _label_problems(train: Split, held: Split | None, names: list[str]) -> list[Problem]:
    problems = []
    if len(names) == 1:
        problems.append(
            Problem(
                train.table.origin,
                f"only one class ({names[0]!r}) after cleaning",
                "a classifier needs at least two; check --label-column",
            )
        )
    if held is not None:
        unseen = held.rows[~held.rows["label"].isin(names)]
        for value, group in list(unseen.groupby("label", sort=False))[:MAX_REPORTED]:
            problems.append(
                Problem(
                    held.table.where(int(group["row"].iloc[0])),
                    f"label {value!r} does not occur in the training data ({len(group)} rows; training labels: {', '.join(names)})",
                    "fix the label, or add training rows with it",
                )
            )
    return problems


def _empty_problem(split: Split) -> Problem | None:
    if len(split.rows):
        return None
    dropped = ", ".join(f"{n} {reason}" for reason, n in split.dropped.items() if n) or "nothing"
    return Problem(split.table.origin, f"no rows left after cleaning (dropped: {dropped})", "check the text and label columns")


def clean(columns: Columns, train_table: Table, held_table: Table | None) -> tuple[Split, Split | None, list[str]]:
    """Clean both inputs and settle the label names; one DataError for all problems."""
    train = _extract(train_table, columns.text, columns)
    held = _extract(held_table, columns.eval_text or columns.text, columns) if held_table is not None else None
    splits = [train] if held is None else [train, held]
    for split in splits:
        _strip_and_drop_empty(split)
    kind = label_kind(train.rows["label"])
    for split in splits:
        split.rows["label"] = split.rows["label"].map(lambda v: canonical_label(v, kind))
        _drop_duplicates(split)
    if held is not None:
        _drop_overlap(train, held)
    empty = [p for p in map(_empty_problem, splits) if p is not None]
    if empty:
        raise DataError(empty)
    names = _label_names(train.rows["label"], kind)
    problems = _label_problems(train, held, names)
    if problems:
        raise DataError(problems)
    return train, held, names


def label_ids_of(table: Table, column: str, label_names: list[str]) -> list[int]:
    """Class ids (indices into ``label_names``) of a label column; every unusable row reported."""
    if column not in table.frame.columns:
        raise DataError(missing_column(table, column, "label", "--label-column"))
    kind: Literal["int", "str"] = "int" if all(is_integral(name) for name in label_names) else "str"
    ids = {name: i for i, name in enumerate(label_names)}
    found: list[int] = []
    problems: list[Problem] = []
    for row, value in enumerate(table.frame[column]):
        name = None if is_missing(value) else canonical_label(value, kind)
        if name in ids:
            found.append(ids[name])
            continue
        what = "has no label" if name is None else f"label {name!r} is not one the model knows"
        problems.append(Problem(table.where(row), what, f"the model's labels: {', '.join(label_names)}"))
    if problems:
        raise DataError(capped(problems, table.origin))
    return found
