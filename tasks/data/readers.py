"""Reading inputs into rows: CSV, TSV, JSON lines / JSON arrays, Parquet, ``datasets`` splits.

One set of readers for classification data, LM data, batch inference and scoring. Text
files are decoded strictly as UTF-8, and read through gzip when their name ends in ``.gz``;
every malformed line is reported (up to :data:`MAX_REPORTED` of a kind) with its file and
line, in one :class:`DataError`.

:func:`read_data_file` reads a whole file; :func:`scan_data_file` checks one line by line
and :func:`iter_data_chunks` then reads it a chunk of rows at a time, so that batch
inference holds one chunk in memory, whatever the file's size.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

from adaptflow.tasks.data.sources import SUPPORTED_FILES, Source, file_format, is_gzip, local_source
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
        raise DataError(Problem(given, what, f"give a {SUPPORTED_FILES} file"))
    src = local_source("data", given, local)
    assert src.path is not None
    return read_file(src.path, given)


def read_file(path: Path, origin: str) -> Table:
    fmt = file_format(path)
    assert fmt is not None  # local_source refused other files
    table = _read_parquet(path, origin) if fmt == "parquet" else _parse_text(read_text(path, origin), origin, fmt)
    if table.frame.empty:
        raise DataError(_no_rows(origin))
    return table


def _no_rows(origin: str) -> Problem:
    return Problem(origin, "holds no data rows", "add rows below the header")


def _open_binary(path: Path, origin: str) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (``.gz``)."""
    try:
        return gzip.open(path, "rb") if is_gzip(path) else path.open("rb")
    except OSError as exc:
        raise DataError(Problem(origin, f"cannot be read ({exc.strerror})", "check the file's permissions")) from None


def _read_bytes(path: Path, origin: str) -> bytes:
    try:
        with _open_binary(path, origin) as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # also a damaged gzip stream
        raise DataError(Problem(origin, f"cannot be read ({getattr(exc, 'strerror', None) or exc})", "check the file")) from None
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
        raise DataError(_not_utf8(origin, line, raw[exc.start], exc.start)) from None
    return text.removeprefix("\ufeff")


def _not_utf8(origin: str, line: int, byte: int, offset: int) -> Problem:
    return Problem(f"{origin}, line {line}", f"not valid UTF-8 (byte 0x{byte:02x} at offset {offset})", "save the file as UTF-8")


def _text_lines(path: Path, origin: str) -> Iterator[str]:
    """The file's lines (ends kept), one at a time, each decoded strictly as UTF-8 (a leading BOM is dropped)."""
    offset = 0
    blank = True
    try:
        with _open_binary(path, origin) as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(_not_utf8(origin, number, raw[exc.start], offset + exc.start)) from None
                offset += len(raw)
                blank = blank and not line.strip()
                yield line.removeprefix("\ufeff") if number == 1 else line
    except (OSError, EOFError) as exc:  # also a damaged gzip stream
        raise DataError(Problem(origin, f"cannot be read ({getattr(exc, 'strerror', None) or exc})", "check the file")) from None
    if blank:
        raise DataError(_empty_file(origin))


def _parse_text(text: str, origin: str, fmt: str) -> Table:
    if fmt == "jsonl":
        return _parse_json(text, origin)
    delimiter, quoting = DELIMITED[fmt]
    return _parse_delimited(text, origin, delimiter=delimiter, quoting=quoting)


DELIMITED = {"csv": (",", csv.QUOTE_MINIMAL), "tsv": ("\t", csv.QUOTE_NONE)}  # TSV without quoting, as GLUE ships it


def _parse_delimited(text: str, origin: str, *, delimiter: str, quoting: int) -> Table:
    """CSV/TSV rows with the line each starts on; every malformed line is reported."""
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    problems: list[Problem] = []
    for item in _delimited_rows(io.StringIO(text, newline=""), origin, delimiter, quoting):
        if isinstance(item, Problem):
            problems.append(item)
        elif header is None:
            header = item[1]
        else:
            rows.append(item[1])
            lines.append(item[0])
    if problems:
        raise DataError(capped(problems, origin))
    return Table(origin, pd.DataFrame(rows, columns=header, dtype=object), lines)


def _delimited_rows(lines: Iterable[str], origin: str, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]] | Problem]:
    """The header, then every row, each as (the line it starts on, its fields); a Problem for each malformed line."""
    fix = "fix the line (quote fields containing the delimiter or quotes)" if quoting != csv.QUOTE_NONE else "fix the line"
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=True)
    width: int | None = None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:
                continue
            if width is None:
                width = len(record)
                yield from _header_problems(record, origin)
                yield line, record
            elif len(record) != width:
                yield Problem(f"{origin}, line {line}", f"{len(record)} fields where the header has {width}", fix)
            else:
                yield line, record
    except csv.Error as exc:
        yield Problem(f"{origin}, line {start}", f"malformed {'TSV' if quoting == csv.QUOTE_NONE else 'CSV'} ({exc})", fix)


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
    for item in _json_rows(text.split("\n"), origin):
        if isinstance(item, Problem):
            problems.append(item)
        else:
            lines.append(item[0])
            records.append(item[1])
    if problems:
        raise DataError(capped(problems, origin))
    return Table(origin, pd.DataFrame.from_records(records), lines)


def _json_rows(lines: Iterable[str], origin: str) -> Iterator[tuple[int, dict[str, Any]] | Problem]:
    """Every JSON line's object as (its line, the object); a Problem for each line that is not one."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Problem(f"{origin}, line {number}", f"not valid JSON ({exc.msg} at column {exc.colno})", "write one JSON object per line")
            continue
        if not isinstance(record, dict):
            yield Problem(f"{origin}, line {number}", f"a JSON {type(record).__name__}, not an object", "write one JSON object per line")
            continue
        yield number, record


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


# ---- reading a large file a chunk at a time ---------------------------------------------


@dataclass(frozen=True)
class FileScan:
    """What a pass over a data file found, holding no rows: how many, and the columns in order."""

    path: Path
    origin: str
    rows: int
    columns: list[str]


def scan_data_file(given: str, path: Path | None = None) -> FileScan:
    """Check every line of a data file, as :func:`read_data_file` does, keeping none of its rows in memory.

    Every problem is reported at once, before any work on the rows; then
    :func:`iter_data_chunks` reads them. A JSON array (not JSON lines) is read whole.
    """
    local = path if path is not None else Path(given).expanduser()
    if not local.is_file():
        read_data_file(given, local)  # its message for a folder or a missing file
    src = local_source("data", given, local)
    assert src.path is not None
    fmt = file_format(src.path)
    if fmt == "parquet":
        rows, columns = _parquet_shape(src.path, given)
    elif fmt == "jsonl" and _is_json_array(src.path, given):
        frame = read_file(src.path, given).frame
        rows, columns = len(frame), [str(c) for c in frame.columns]
    else:
        rows, columns = _scan_text(src.path, given, fmt)
    if rows == 0:
        raise DataError(_no_rows(given))
    return FileScan(src.path, given, rows, columns)


def _scan_text(path: Path, origin: str, fmt: str | None) -> tuple[int, list[str]]:
    problems: list[Problem] = []
    columns: dict[str, None] = {}  # JSON lines: every key, in the order first seen (as pandas orders them)
    rows = 0
    for item in _text_rows(path, origin, fmt):
        if isinstance(item, Problem):
            problems.append(item)
        elif fmt == "jsonl":
            columns.update(dict.fromkeys(item[1]))
            rows += 1
        elif not columns:
            columns = dict.fromkeys(item[1])
        else:
            rows += 1
    if problems:
        raise DataError(capped(problems, origin))
    return rows, list(columns)


def _text_rows(path: Path, origin: str, fmt: str | None) -> Iterator[tuple[int, Any] | Problem]:
    if fmt == "jsonl":
        return _json_rows(_text_lines(path, origin), origin)
    delimiter, quoting = DELIMITED[fmt or "csv"]
    return _delimited_rows(_text_lines(path, origin), origin, delimiter, quoting)


def _is_json_array(path: Path, origin: str) -> bool:
    for line in _text_lines(path, origin):
        if line.strip():
            return line.lstrip().startswith("[")
    return False


def _parquet_shape(path: Path, origin: str) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq  # pandas' Parquet engine: imported where Parquet is read

    if path.stat().st_size == 0:
        raise DataError(_empty_file(origin))
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, ValueError) as exc:
        raise DataError(Problem(origin, f"not a readable Parquet file ({exc})", "write it again with pandas or pyarrow")) from None
    return meta.num_rows, [str(c) for c in meta.schema.to_arrow_schema().names]


def iter_data_chunks(scan: FileScan, rows: int) -> Iterator[Table]:
    """The rows of a scanned file, ``rows`` at a time, in file order, each chunk with the file's columns."""
    fmt = file_format(scan.path)
    if fmt == "parquet":
        import pyarrow.parquet as pq  # pandas' Parquet engine: imported where Parquet is read

        for batch in pq.ParquetFile(scan.path).iter_batches(batch_size=rows):
            yield Table(scan.origin, batch.to_pandas())
        return
    if fmt == "jsonl" and _is_json_array(scan.path, scan.origin):
        frame = read_file(scan.path, scan.origin).frame
        for start in range(0, len(frame), rows):
            yield Table(scan.origin, frame.iloc[start : start + rows].reset_index(drop=True))
        return
    records: list[Any] = []
    lines: list[int] = []
    header: list[str] | None = None if fmt != "jsonl" else scan.columns
    for item in _text_rows(scan.path, scan.origin, fmt):
        if isinstance(item, Problem):  # the file changed since it was scanned
            raise DataError(item)
        if header is None:
            header = item[1]
            continue
        lines.append(item[0])
        records.append(item[1])
        if len(records) == rows:
            yield _chunk(scan, fmt, header, records, lines)
            records, lines = [], []
    if records:
        yield _chunk(scan, fmt, header or [], records, lines)


def _chunk(scan: FileScan, fmt: str | None, header: list[str], records: list[Any], lines: list[int]) -> Table:
    if fmt == "jsonl":
        frame = pd.DataFrame.from_records(records).reindex(columns=header)
    else:
        frame = pd.DataFrame(records, columns=header, dtype=object)
    return Table(scan.origin, frame, lines)
