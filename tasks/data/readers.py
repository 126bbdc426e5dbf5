"""Reading inputs into rows: CSV, TSV, JSON lines / JSON arrays, Parquet, ``datasets`` splits.

One set of readers for classification data, LM data, batch inference and scoring. Text
files are decoded strictly as UTF-8; every malformed line is reported (up to
:data:`MAX_REPORTED` of a kind) with its file and line, in one :class:`DataError`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from adaptflow.tasks.data.sources import FILE_FORMATS, Source, local_source
from adaptflow.tasks.data.values import is_missing
from adaptflow.tasks.errors import DataError, Problem

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

DATA_SPLITS = ("train",)
EVAL_SPLITS = ("validation", "test")
MAX_REPORTED = 5
"""Problems of one kind reported per file before the rest are summarised."""


@dataclass(frozen=True)
class Table:
    """The rows of one input as read, and where each came from."""

    origin: str
    """The input as named in messages (with the split for datasets)."""
    frame: pd.DataFrame
    lines: list[int] | None = None
    """File line on which each row starts, for line-based formats."""

    def where(self, row: int) -> str:
        """Location of the 0-based ``row``: its 1-based data row, and its line when known."""
        line = f", line {self.lines[row]}" if self.lines is not None else ""
        return f"{self.origin}, row {row + 1}{line}"


def read_source(src: Source, splits: tuple[str, ...]) -> Table:
    if src.kind == "file":
        assert src.path is not None
        return read_file(src.path, src.given)
    split, dataset = _pick_split(_open_datasets(src), splits, src)
    return _table_from_dataset(dataset, src.given if split is None else f"{src.given} [{split}]")


def held_out_split(src: Source) -> Table | None:
    """The validation/test split of a datasets folder or hub dataset given as ``data``, if it has one."""
    if src.kind == "file":
        return None
    obj = _open_datasets(src)
    if not _is_dataset_dict(obj):
        return None
    split = next((s for s in EVAL_SPLITS if s in obj), None)
    return None if split is None else _table_from_dataset(obj[split], f"{src.given} [{split}]")


def _open_datasets(src: Source) -> Dataset | DatasetDict:
    if src.kind == "hub":
        return src.hub
    # datasets is heavy: imported only when this runs
    from datasets import load_from_disk

    try:
        return load_from_disk(str(src.path))
    except (OSError, ValueError) as exc:
        raise DataError(Problem(src.given, f"cannot load this datasets folder ({exc})", "save it again with save_to_disk")) from None


def _is_dataset_dict(obj: Any) -> bool:
    # datasets is heavy: imported only when this runs
    from datasets import DatasetDict

    return isinstance(obj, DatasetDict)


def _pick_split(obj: Dataset | DatasetDict, splits: tuple[str, ...], src: Source) -> tuple[str | None, Dataset]:
    """The first of ``splits`` present, else the only split; (None, obj) for a single Dataset."""
    if not _is_dataset_dict(obj):
        return None, obj
    names = list(obj.keys())
    chosen = next((s for s in splits if s in obj), names[0] if len(names) == 1 else None)
    if chosen is None:
        raise DataError(
            Problem(
                src.given,
                f"has splits {', '.join(names)} but none named {' or '.join(splits)}",
                "save the split to use on its own",
            )
        )
    return chosen, obj[chosen]


def _table_from_dataset(dataset: Dataset, origin: str) -> Table:
    """Rows of a ``datasets`` split; ClassLabel ids become their names (-1, 'no label', becomes missing)."""
    # datasets is heavy: imported only when this runs
    from datasets import ClassLabel

    frame = dataset.to_pandas()
    for name, feature in dataset.features.items():
        if isinstance(feature, ClassLabel):
            frame[name] = frame[name].map(lambda v, f=feature: None if is_missing(v) or v < 0 else f.int2str(int(v))).astype(object)
    return Table(origin, frame)


def read_data_file(given: str, path: Path | None = None) -> Table:
    """The rows of one CSV, TSV, JSON lines or Parquet file, read as the preparation reads them.

    ``given`` names the file in messages; ``path`` is where it is locally when that differs
    (a downloaded ``s3://`` object).
    """
    local = path if path is not None else Path(given).expanduser()
    if not local.is_file():
        what = "is a folder, not a data file" if local.is_dir() else "no such file"
        raise DataError(Problem(given, what, f"give a {', '.join(FILE_FORMATS)} file"))
    src = local_source("data", given, local)
    assert src.path is not None
    return read_file(src.path, given)


def read_file(path: Path, origin: str) -> Table:
    fmt = FILE_FORMATS[path.suffix.lower()]
    table = _read_parquet(path, origin) if fmt == "parquet" else _parse_text(read_text(path, origin), origin, fmt)
    if table.frame.empty:
        raise DataError(Problem(origin, "holds no data rows", "add rows below the header"))
    return table


def _read_bytes(path: Path, origin: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(Problem(origin, f"cannot be read ({exc.strerror})", "check the file's permissions")) from None
    if not raw.strip():
        raise DataError(_empty_file(origin))
    return raw


def _empty_file(origin: str) -> Problem:
    return Problem(origin, "the file is empty", "give a file with a header and data rows")


def read_text(path: Path, origin: str) -> str:
    """The file's text, decoded strictly as UTF-8 (a leading BOM is dropped)."""
    raw = _read_bytes(path, origin)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            Problem(
                f"{origin}, line {line}",
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                "save the file as UTF-8",
            )
        ) from None
    return text.removeprefix("\ufeff")


def _parse_text(text: str, origin: str, fmt: str) -> Table:
    if fmt == "jsonl":
        return _parse_json(text, origin)
    if fmt == "tsv":
        return _parse_delimited(text, origin, delimiter="\t", quoting=csv.QUOTE_NONE)
    return _parse_delimited(text, origin, delimiter=",", quoting=csv.QUOTE_MINIMAL)


def _parse_delimited(text: str, origin: str, *, delimiter: str, quoting: int) -> Table:
    """CSV/TSV rows with the line each starts on; every malformed line is reported."""
    fix = "fix the line (quote fields containing the delimiter or quotes)" if quoting != csv.QUOTE_NONE else "fix the line"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    problems: list[Problem] = []
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:
                continue
            if header is None:
                header = record
                problems += _header_problems(header, origin)
            elif len(record) != len(header):
                problems.append(Problem(f"{origin}, line {line}", f"{len(record)} fields where the header has {len(header)}", fix))
            else:
                rows.append(record)
                lines.append(line)
    except csv.Error as exc:
        problems.append(Problem(f"{origin}, line {start}", f"malformed {'TSV' if quoting == csv.QUOTE_NONE else 'CSV'} ({exc})", fix))
    if problems:
        raise DataError(capped(problems, origin))
    return Table(origin, pd.DataFrame(rows, columns=header, dtype=object), lines)


def _header_problems(header: list[str], origin: str) -> list[Problem]:
    repeated = sorted({name for name in header if header.count(name) > 1})
    return [Problem(f"{origin}, line 1", f"column {name!r} appears more than once", "give each column a unique name") for name in repeated]


def _parse_json(text: str, origin: str) -> Table:
    """JSON lines (one object per line), or a JSON array of objects."""
    if text.lstrip().startswith("["):
        return _parse_json_array(text, origin)
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    problems: list[Problem] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(
                    f"{origin}, line {number}",
                    f"not valid JSON ({exc.msg} at column {exc.colno})",
                    "write one JSON object per line",
                )
            )
            continue
        if not isinstance(record, dict):
            problems.append(
                Problem(
                    f"{origin}, line {number}",
                    f"a JSON {type(record).__name__}, not an object",
                    "write one JSON object per line",
                )
            )
            continue
        records.append(record)
        lines.append(number)
    if problems:
        raise DataError(capped(problems, origin))
    return Table(origin, pd.DataFrame.from_records(records), lines)


def _parse_json_array(text: str, origin: str) -> Table:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(Problem(f"{origin}, line {exc.lineno}", f"not valid JSON ({exc.msg})", "fix the JSON syntax")) from None
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None) if isinstance(records, list) else -1
    if bad is not None:
        where = origin if bad < 0 else f"{origin}, item {bad + 1}"
        raise DataError(Problem(where, "expected a JSON array of objects", "give one object per row, or JSON lines"))
    return Table(origin, pd.DataFrame.from_records(records))


def _read_parquet(path: Path, origin: str) -> Table:
    if path.stat().st_size == 0:
        raise DataError(_empty_file(origin))
    try:
        return Table(origin, pd.read_parquet(path))
    except (OSError, ValueError) as exc:
        raise DataError(Problem(origin, f"not a readable Parquet file ({exc})", "write it again with pandas or pyarrow")) from None


def capped(problems: list[Problem], origin: str) -> list[Problem]:
    if len(problems) <= MAX_REPORTED:
        return problems
    more = Problem(origin, f"{len(problems) - MAX_REPORTED} more problems like the ones above")
    return problems[:MAX_REPORTED] + [more]
