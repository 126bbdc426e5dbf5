"""Which columns hold the text, the text pair and the label: given, or detected.

A text column is one holding strings that are not all numbers; when the user names no
text column and exactly one such column exists, it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from adaptflow.tasks.config import DataConfig
from adaptflow.tasks.data.readers import Table
from adaptflow.tasks.data.values import as_text, is_float, is_integral, is_missing
from adaptflow.tasks.errors import DataError, Problem


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    text_pair: str | None
    eval_text: str | None
    """Text column of the evaluation input (None when the evaluation split is held out of ``data``)."""


def resolve_columns(cfg: DataConfig, train: Table, held: Table | None) -> Columns:
    """The column mapping, every problem with it reported at once."""
    problems: list[Problem] = []
    required = {"label": (cfg.label_column, "--label-column")}
    if cfg.text_pair_column:
        required["text pair"] = (cfg.text_pair_column, "--text-pair-column")
    for table in (train, held) if held is not None else (train,):
        problems += [missing_column(table, name, role, flag) for role, (name, flag) in required.items() if name not in table.frame.columns]
    exclude = {cfg.label_column, cfg.text_pair_column}
    text = cfg.text_column or detect_text_column(train, exclude, problems)
    if cfg.text_column and text not in train.frame.columns:
        problems.append(missing_column(train, text, "text", "--text-column"))
    eval_text = _eval_text_column(cfg, text, held, exclude, problems) if held is not None else None
    if problems:
        raise DataError(problems)
    assert text is not None
    return Columns(text, cfg.label_column, cfg.text_pair_column, eval_text)


def _eval_text_column(cfg: DataConfig, text: str | None, held: Table, exclude: set[str | None], problems: list[Problem]) -> str | None:
    wanted = cfg.eval_text_column or text
    if wanted is None or wanted in held.frame.columns:
        return wanted
    others = _text_columns(held.frame, exclude)
    if cfg.eval_text_column is None and cfg.text_column is None and len(others) == 1:
        return others[0]
    problems.append(missing_column(held, wanted, "text", "--eval-text-column"))
    return None


def detect_text_column(table: Table, exclude: set[str | None], problems: list[Problem]) -> str | None:
    candidates = _text_columns(table.frame, exclude)
    if len(candidates) == 1:
        return candidates[0]
    columns = ", ".join(map(str, table.frame.columns))
    if candidates:
        problems.append(Problem(table.origin, f"several text columns ({', '.join(candidates)})", "choose one with --text-column"))
    else:
        problems.append(Problem(table.origin, f"no text column found (columns: {columns})", "name it with --text-column"))
    return None


def _text_columns(frame: pd.DataFrame, exclude: set[str | None]) -> list[str]:
    """Columns holding strings that are not all numbers."""
    return [str(c) for c in frame.columns if c not in exclude and _holds_text(frame[c])]


def _holds_text(series: pd.Series) -> bool:
    values = [v for v in series if isinstance(v, str) or not is_missing(v)]  # None and NaN left out
    filled = [v for v in values if not is_missing(v)]
    numeric = bool(filled) and all(is_integral(v) or is_float(v) for v in filled)
    return bool(values) and all(isinstance(v, str) for v in values) and not numeric


def missing_column(table: Table, name: str, role: str, flag: str) -> Problem:
    columns = ", ".join(map(str, table.frame.columns))
    return Problem(table.origin, f"no {role} column {name!r} (columns: {columns})", f"name the {role} column with {flag}")


def text_column_of(table: Table, wanted: str | None, exclude: set[str | None]) -> str:
    """``wanted`` if the table has it, else the only text column outside ``exclude``."""
    if wanted is not None:
        if wanted not in table.frame.columns:
            raise DataError(missing_column(table, wanted, "text", "--text-column"))
        return wanted
    problems: list[Problem] = []
    found = detect_text_column(table, exclude, problems)
    if problems:
        raise DataError(problems)
    assert found is not None
    return found


def texts_of(table: Table, column: str) -> list[str]:
    """The column's values as strings, missing values as empty strings."""
    return [as_text(value) for value in table.frame[column]]
