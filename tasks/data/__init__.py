"""Data preparation: load -> validate -> clean -> split -> tokenize -> save_to_disk + manifest.

:func:`prepare_data` turns the user's data (CSV, TSV, JSON lines, Parquet, a ``datasets``
folder, a hub dataset, or ``sample://reviews``) into a tokenized ``DatasetDict`` with the
splits ``train``, ``eval`` and, when asked for, ``validation``. Each split holds the
columns ``text`` (``text_pair`` for sentence pairs), ``labels`` (class ids),
``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes them),
unpadded: padding happens per batch in the training worker.

The result lands in ``WORK_DIR/prepared/<key>/``: ``dataset/`` (``save_to_disk``) and
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

import csv
import hashlib
import io
import json
import math
import numbers
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks.assets import asset
from adaptflow.tasks.config import DataConfig
from adaptflow.tasks.errors import DataError, ModelError, Problem, run_all

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

PREP_FORMAT_VERSION = 1
"""Bump when a change to this module changes what a prepared folder holds."""

MANIFEST = "manifest.json"
DATASET_DIR = "dataset"
SAMPLE_SCHEME = "sample://"
SAMPLES = {"reviews": asset("adaptflow.tasks", "sample_data", "reviews.csv")}
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
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
DATA_SPLITS = ("train",)
EVAL_SPLITS = ("validation", "test")
DROP_REASONS = ("empty_text", "missing_label", "duplicate", "conflicting_duplicate", "overlaps_eval")
MAX_REPORTED = 5
"""Problems of one kind reported per file before the rest are summarised."""
HASH_CHUNK = 1 << 20
INTEGER = re.compile(r"[+-]?\d+")

Fetch = Callable[[str, Path], Path]
T = TypeVar("T")


# ---- public API ------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset folder: ``dataset/`` (save_to_disk) and ``manifest.json``."""

    path: Path
    """The folder ``WORK_DIR/prepared/<key>``."""
    dataset_path: Path
    """The ``save_to_disk`` folder inside it."""
    manifest: dict[str, Any]
    """The contents of ``manifest.json`` (see the module docstring)."""
    reused: bool
    """True when an earlier run had prepared the same inputs and nothing was recomputed."""

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def num_labels(self) -> int:
        return len(self.manifest["label_names"])


def prepare_data(cfg: DataConfig, tokenizer_dir: Path, work_dir: Path, *, fetch: Fetch | None = None) -> PreparedData:
    """Prepare ``cfg``'s data for training with the tokenizer in ``tokenizer_dir``.

    ``fetch(uri, dest_dir)`` downloads an ``s3://`` input and returns its local path.
    Raises one :class:`DataError` listing every problem found in the inputs.
    """
    sources = _collect(
        lambda: _resolve_source("data", cfg.data, work_dir, fetch),
        lambda: _resolve_source("eval_data", cfg.eval_data, work_dir, fetch) if cfg.eval_data else None,
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
    _publish(folder, dataset, manifest)
    return open_prepared(folder, reused=False)


def load_prepared(path: Path | str) -> tuple[DatasetDict, dict[str, Any]]:
    """The tokenized ``DatasetDict`` and the manifest of a prepared folder (for the training worker)."""
    prepared = open_prepared(Path(path), reused=True)
    from datasets import load_from_disk

    return load_from_disk(str(prepared.dataset_path)), prepared.manifest


def open_prepared(folder: Path, *, reused: bool) -> PreparedData:
    """Read a prepared folder's manifest; a DataError when the folder is incomplete."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            Problem(
                str(folder), "not a prepared dataset folder (no manifest.json)", "run the data preparation step again"
            )
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(
            Problem(str(manifest_path), f"unreadable manifest ({exc})", "delete the folder and prepare again")
        ) from None
    return PreparedData(folder, folder / DATASET_DIR, manifest, reused)


def prep_key(cfg: DataConfig, inputs: dict[str, Any], tokenizer: dict[str, str]) -> str:
    """First 16 hex digits of a sha256 over everything that decides a prepared dataset."""
    payload = {
        "format_version": PREP_FORMAT_VERSION,
        "inputs": inputs,
        "data_config": cfg.model_dump(mode="json"),
        "tokenizer": tokenizer["sha256"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_identity(tokenizer_dir: Path) -> dict[str, str]:
    """Folder name and a sha256 over the tokenizer files present in it."""
    digest = hashlib.sha256()
    found = [name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if not found:
        raise ModelError(
            Problem(str(tokenizer_dir), "holds no tokenizer files", f"expected one of {', '.join(TOKENIZER_FILES)}")
        )
    for name in found:
        digest.update(f"{name}\0{sha256_file(tokenizer_dir / name)[0]}\n".encode())
    return {"name": tokenizer_dir.name, "sha256": digest.hexdigest()}


def sha256_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size in bytes, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# ---- inputs: where they are ------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input (``data`` or ``eval_data``) and where it was found."""

    role: str
    """The DataConfig field it came from."""
    given: str
    """As the user wrote it; used to name it in messages."""
    kind: Literal["file", "datasets", "hub"]
    path: Path | None = None
    """Local file or ``save_to_disk`` folder (None for hub datasets)."""
    hub: Any = None
    """The loaded DatasetDict of a hub dataset."""


def _flag(role: str) -> str:
    """The CLI option of a DataConfig field."""
    return "--" + role.replace("_", "-")


def _resolve_source(role: str, given: str, work_dir: Path, fetch: Fetch | None) -> Source:
    if given.startswith(SAMPLE_SCHEME):
        return _local_source(role, given, _sample_path(given))
    if given.startswith("s3://"):
        if fetch is None:
            raise DataError(
                Problem(
                    given, "is on S3 but no S3 storage is configured", "set ADAPTFLOW_S3_ENDPOINT_URL and the S3 keys"
                )
            )
        dest = Path(work_dir) / "downloads" / hashlib.sha256(given.encode()).hexdigest()[:16]
        return _local_source(role, given, _fetched_path(given, fetch(given, dest)))
    path = Path(given).expanduser()
    if path.exists():
        return _local_source(role, given, path)
    if _looks_like_path(given):
        raise DataError(Problem(given, "no such file or folder", f"check the path given as {_flag(role)}"))
    return Source(role, given, "hub", hub=_load_hub(given))


def _sample_path(given: str) -> Path:
    name = given.removeprefix(SAMPLE_SCHEME)
    if name not in SAMPLES:
        known = ", ".join(SAMPLE_SCHEME + n for n in SAMPLES)
        raise DataError(Problem(given, "no bundled sample of that name", f"use one of: {known}"))
    return SAMPLES[name]


def _fetched_path(uri: str, got: Path) -> Path:
    """The downloaded file itself when ``fetch`` returned the folder holding it."""
    inner = Path(got) / PurePosixPath(uri).name
    return inner if Path(got).is_dir() and inner.is_file() else Path(got)


def _looks_like_path(given: str) -> bool:
    return Path(given).suffix.lower() in FILE_FORMATS or given.startswith((".", "/", "~")) or given.count("/") > 1


def _local_source(role: str, given: str, path: Path) -> Source:
    if path.is_dir():
        if not _is_datasets_folder(path):
            raise DataError(
                Problem(
                    given,
                    "is a folder but not one written by datasets' save_to_disk",
                    "give a data file or such a folder",
                )
            )
        return Source(role, given, "datasets", path)
    if path.suffix.lower() not in FILE_FORMATS:
        raise DataError(
            Problem(
                given, f"unsupported file type {path.suffix or '(none)'!r}", f"use one of {', '.join(FILE_FORMATS)}"
            )
        )
    return Source(role, given, "file", path)


def _is_datasets_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_hub(name: str) -> DatasetDict:
    from datasets import load_dataset

    try:
        return load_dataset(name)
    except (OSError, ValueError) as exc:
        raise DataError(
            Problem(
                name,
                f"not a local file or folder, and loading it as a Hugging Face hub dataset failed ({exc})",
                "check the path; for a hub dataset without hub access, save it with save_to_disk "
                "where the hub is reachable and give that folder",
            )
        ) from None


def fingerprint(src: Source) -> dict[str, Any]:
    """What identifies an input's contents: sha256 and size, or the hub dataset's fingerprint."""
    if src.kind == "hub":
        parts = {split: ds._fingerprint for split, ds in sorted(src.hub.items())}
        return {"uri": src.given, "kind": "hub", "fingerprint": parts}
    assert src.path is not None
    digest, size = sha256_file(src.path) if src.kind == "file" else _sha256_folder(src.path)
    return {"uri": src.given, "kind": src.kind, "sha256": digest, "size": size}


def input_fingerprint(given: str, work_dir: Path, fetch: Fetch | None = None, role: str = "data") -> dict[str, Any]:
    """The fingerprint :func:`prepare_data` records for one input (``manifest["source"][role]``), without preparing it."""
    return fingerprint(_resolve_source(role, given, Path(work_dir), fetch))


def _sha256_folder(folder: Path) -> tuple[str, int]:
    """sha256 over the relative paths and contents of a folder's files (datasets' cache files left out)."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("cache-")):
        file_digest, size = sha256_file(path)
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_digest}\n".encode())
        total += size
    return digest.hexdigest(), total


# ---- inputs: reading -------------------------------------------------------------------


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


def _read_source(src: Source, splits: tuple[str, ...]) -> Table:
    if src.kind == "file":
        assert src.path is not None
        return _read_file(src.path, src.given)
    split, dataset = _pick_split(_open_datasets(src), splits, src)
    return _table_from_dataset(dataset, src.given if split is None else f"{src.given} [{split}]")


def _held_out_split(src: Source) -> Table | None:
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
    from datasets import load_from_disk

    try:
        return load_from_disk(str(src.path))
    except (OSError, ValueError) as exc:
        raise DataError(
            Problem(src.given, f"cannot load this datasets folder ({exc})", "save it again with save_to_disk")
        ) from None


def _is_dataset_dict(obj: Any) -> bool:
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
    from datasets import ClassLabel

    frame = dataset.to_pandas()
    for name, feature in dataset.features.items():
        if isinstance(feature, ClassLabel):
            frame[name] = (
                frame[name]
                .map(lambda v, f=feature: None if _is_missing(v) or v < 0 else f.int2str(int(v)))
                .astype(object)
            )
    return Table(origin, frame)


def _read_file(path: Path, origin: str) -> Table:
    fmt = FILE_FORMATS[path.suffix.lower()]
    table = _read_parquet(path, origin) if fmt == "parquet" else _parse_text(_decode(path, origin), origin, fmt)
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


def _decode(path: Path, origin: str) -> str:
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
    fix = (
        "fix the line (quote fields containing the delimiter or quotes)"
        if quoting != csv.QUOTE_NONE
        else "fix the line"
    )
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
                problems.append(
                    Problem(f"{origin}, line {line}", f"{len(record)} fields where the header has {len(header)}", fix)
                )
            else:
                rows.append(record)
                lines.append(line)
    except csv.Error as exc:
        problems.append(
            Problem(
                f"{origin}, line {start}", f"malformed {'TSV' if quoting == csv.QUOTE_NONE else 'CSV'} ({exc})", fix
            )
        )
    if problems:
        raise DataError(_capped(problems, origin))
    return Table(origin, pd.DataFrame(rows, columns=header, dtype=object), lines)


def _header_problems(header: list[str], origin: str) -> list[Problem]:
    repeated = sorted({name for name in header if header.count(name) > 1})
    return [
        Problem(f"{origin}, line 1", f"column {name!r} appears more than once", "give each column a unique name")
        for name in repeated
    ]


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
        raise DataError(_capped(problems, origin))
    return Table(origin, pd.DataFrame.from_records(records), lines)


def _parse_json_array(text: str, origin: str) -> Table:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            Problem(f"{origin}, line {exc.lineno}", f"not valid JSON ({exc.msg})", "fix the JSON syntax")
        ) from None
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
        raise DataError(
            Problem(origin, f"not a readable Parquet file ({exc})", "write it again with pandas or pyarrow")
        ) from None


def _capped(problems: list[Problem], origin: str) -> list[Problem]:
    if len(problems) <= MAX_REPORTED:
        return problems
    more = Problem(origin, f"{len(problems) - MAX_REPORTED} more problems like the ones above")
    return problems[:MAX_REPORTED] + [more]


# ---- columns ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    text_pair: str | None
    eval_text: str | None
    """Text column of the evaluation input (None when the evaluation split is held out of ``data``)."""


def _resolve_columns(cfg: DataConfig, train: Table, held: Table | None) -> Columns:
    """The column mapping, every problem with it reported at once."""
    problems: list[Problem] = []
    required = {"label": (cfg.label_column, "--label-column")}
    if cfg.text_pair_column:
        required["text pair"] = (cfg.text_pair_column, "--text-pair-column")
    for table in (train, held) if held is not None else (train,):
        problems += [
            _missing_column(table, name, role, flag)
            for role, (name, flag) in required.items()
            if name not in table.frame.columns
        ]
    exclude = {cfg.label_column, cfg.text_pair_column}
    text = cfg.text_column or _detect_text_column(train, exclude, problems)
    if cfg.text_column and text not in train.frame.columns:
        problems.append(_missing_column(train, text, "text", "--text-column"))
    eval_text = _eval_text_column(cfg, text, held, exclude, problems) if held is not None else None
    if problems:
        raise DataError(problems)
    assert text is not None
    return Columns(text, cfg.label_column, cfg.text_pair_column, eval_text)


def _eval_text_column(
    cfg: DataConfig, text: str | None, held: Table, exclude: set[str | None], problems: list[Problem]
) -> str | None:
    wanted = cfg.eval_text_column or text
    if wanted is None or wanted in held.frame.columns:
        return wanted
    others = _text_columns(held.frame, exclude)
    if cfg.eval_text_column is None and cfg.text_column is None and len(others) == 1:
        return others[0]
    problems.append(_missing_column(held, wanted, "text", "--eval-text-column"))
    return None


def _detect_text_column(table: Table, exclude: set[str | None], problems: list[Problem]) -> str | None:
    candidates = _text_columns(table.frame, exclude)
    if len(candidates) == 1:
        return candidates[0]
    columns = ", ".join(map(str, table.frame.columns))
    if candidates:
        problems.append(
            Problem(table.origin, f"several text columns ({', '.join(candidates)})", "choose one with --text-column")
        )
    else:
        problems.append(
            Problem(table.origin, f"no text column found (columns: {columns})", "name it with --text-column")
        )
    return None


def _text_columns(frame: pd.DataFrame, exclude: set[str | None]) -> list[str]:
    """Columns holding strings that are not all numbers."""
    return [str(c) for c in frame.columns if c not in exclude and _holds_text(frame[c])]


def _holds_text(series: pd.Series) -> bool:
    values = [v for v in series if isinstance(v, str) or not _is_missing(v)]  # None and NaN left out
    filled = [v for v in values if not _is_missing(v)]
    numeric = bool(filled) and all(_is_integral(v) or _is_float(v) for v in filled)
    return bool(values) and all(isinstance(v, str) for v in values) and not numeric


def _missing_column(table: Table, name: str, role: str, flag: str) -> Problem:
    columns = ", ".join(map(str, table.frame.columns))
    return Problem(
        table.origin, f"no {role} column {name!r} (columns: {columns})", f"name the {role} column with {flag}"
    )


# ---- cleaning and labels ---------------------------------------------------------------


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
    rows = pd.DataFrame({"text": frame[text].map(_as_text).to_numpy(dtype=object)})
    if columns.text_pair:
        rows["text_pair"] = frame[columns.text_pair].map(_as_text).to_numpy(dtype=object)
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
    _drop(split, split.rows["label"].map(_is_missing), "missing_label")


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


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if _is_missing(value) else str(value)


def _is_missing(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(value)
    return value is None or value is pd.NA


def _is_integral(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, numbers.Real):
        return float(value).is_integer()
    return isinstance(value, str) and INTEGER.fullmatch(value.strip()) is not None


def _is_float(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _label_kind(labels: Iterable[Any]) -> Literal["int", "str"]:
    values = list(labels)
    return "int" if values and all(_is_integral(v) for v in values) else "str"


def _canonical_label(value: Any, kind: Literal["int", "str"]) -> str:
    """The label as a string; integers written plainly so that 1, 1.0 and '01' agree."""
    if kind == "int" and _is_integral(value):
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
                    f"label {value!r} does not occur in the training data "
                    f"({len(group)} rows; training labels: {', '.join(names)})",
                    "fix the label, or add training rows with it",
                )
            )
    return problems


def _empty_problem(split: Split) -> Problem | None:
    if len(split.rows):
        return None
    dropped = ", ".join(f"{n} {reason}" for reason, n in split.dropped.items() if n) or "nothing"
    return Problem(
        split.table.origin, f"no rows left after cleaning (dropped: {dropped})", "check the text and label columns"
    )


def _clean(columns: Columns, train_table: Table, held_table: Table | None) -> tuple[Split, Split | None, list[str]]:
    """Clean both inputs and settle the label names; one DataError for all problems."""
    train = _extract(train_table, columns.text, columns)
    held = _extract(held_table, columns.eval_text or columns.text, columns) if held_table is not None else None
    splits = [train] if held is None else [train, held]
    for split in splits:
        _strip_and_drop_empty(split)
    kind = _label_kind(train.rows["label"])
    for split in splits:
        split.rows["label"] = split.rows["label"].map(lambda v: _canonical_label(v, kind))
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


# ---- splits ----------------------------------------------------------------------------

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


def _make_splits(cfg: DataConfig, train: Split, held: Split | None, names: list[str]) -> dict[str, pd.DataFrame]:
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


# ---- tokenization ----------------------------------------------------------------------


def _load_tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise ModelError(
            Problem(str(tokenizer_dir), f"cannot load its tokenizer ({exc})", "check the base model folder")
        ) from None


def _check_max_length(tokenizer: Any, max_length: int) -> None:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and max_length > limit:
        raise DataError(
            Problem(
                "data.max_length",
                f"{max_length} exceeds the tokenizer's limit of {limit} tokens",
                f"use {limit} or less",
            )
        )


def _tokenize(
    splits: dict[str, pd.DataFrame], names: list[str], tokenizer: Any, max_length: int, pair: bool
) -> tuple[DatasetDict, dict[str, dict[str, float]]]:
    """Tokenized DatasetDict (no padding) and token length statistics per split."""
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


# ---- the whole build -------------------------------------------------------------------


def check_data(cfg: DataConfig, work_dir: Path) -> None:
    """Read, validate and split local inputs exactly as :func:`prepare_data` does, without a tokenizer.

    For the checks before a run starts (no model, no Prefect server needed): raises one
    :class:`DataError` naming every bad file, column, row or label. Inputs on S3 or the
    hub are left to :func:`prepare_data`, which fetches them.
    """
    if any(ref and not _is_local(ref) for ref in (cfg.data, cfg.eval_data)):
        return
    sources = _collect(
        lambda: _resolve_source("data", cfg.data, work_dir, None),
        lambda: _resolve_source("eval_data", cfg.eval_data, work_dir, None) if cfg.eval_data else None,
    )
    _validated(cfg, sources[0], sources[1])


def _is_local(given: str) -> bool:
    return given.startswith(SAMPLE_SCHEME) or (not given.startswith("s3://") and (Path(given).expanduser().exists() or _looks_like_path(given)))


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


def _validated(cfg: DataConfig, data: Source, eval_data: Source | None) -> _Validated:
    """Tables -> columns -> clean -> splits; one DataError for every problem found."""
    train_table, held_table = _collect(
        lambda: _read_source(data, DATA_SPLITS),
        lambda: _read_source(eval_data, EVAL_SPLITS) if eval_data is not None else _held_out_split(data),
    )
    columns = _resolve_columns(cfg, train_table, held_table)
    train, held, names = _clean(columns, train_table, held_table)
    return _Validated(train_table, held_table, columns, train, held, names, _make_splits(cfg, train, held, names))


def _build(
    cfg: DataConfig, data: Source, eval_data: Source | None, tokenizer_dir: Path
) -> tuple[DatasetDict, dict[str, Any]]:
    """Everything but the key and the folder: validated splits -> tokens."""
    v = _validated(cfg, data, eval_data)
    train_table, held_table, columns, train, held, names, splits = (
        v.train_table, v.held_table, v.columns, v.train, v.held, v.names, v.splits
    )
    tokenizer = _load_tokenizer(tokenizer_dir)
    _check_max_length(tokenizer, cfg.max_length)
    dataset, lengths = _tokenize(splits, names, tokenizer, cfg.max_length, pair=columns.text_pair is not None)
    cleaned = {"train": train} | ({"eval": held} if held is not None else {})
    report = {
        "source": {
            "train_from": train_table.origin,
            "eval_from": held_table.origin
            if held_table is not None
            else f"{cfg.eval_fraction:g} of data held out (seed {cfg.data_seed})",
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


def _publish(folder: Path, dataset: DatasetDict, manifest: dict[str, Any]) -> None:
    """Write the folder under a temporary name, manifest last, then rename it into place.

    When a concurrent run published the same key first, its folder is kept.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        dataset.save_to_disk(str(staging / DATASET_DIR))
        partial = staging / f"{MANIFEST}.partial"
        partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        partial.replace(staging / MANIFEST)
        if folder.exists() and not (folder / MANIFEST).exists():
            shutil.rmtree(folder)  # an incomplete leftover
        _rename_unless_published(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _rename_unless_published(staging: Path, folder: Path) -> None:
    try:
        staging.rename(folder)
    except OSError:
        if not (folder / MANIFEST).exists():
            raise


def _collect(*steps: Callable[[], T]) -> list[T]:
    """Run every step; one DataError with all their problems when any fails."""
    return run_all(*steps, catch=DataError)


# ---- one file for batch inference and scoring -------------------------------------------


def read_data_file(given: str, path: Path | None = None) -> Table:
    """The rows of one CSV, TSV, JSON lines or Parquet file, read as the preparation reads them.

    ``given`` names the file in messages; ``path`` is where it is locally when that differs
    (a downloaded ``s3://`` object).
    """
    local = path if path is not None else Path(given).expanduser()
    if not local.is_file():
        what = "is a folder, not a data file" if local.is_dir() else "no such file"
        raise DataError(Problem(given, what, f"give a {', '.join(FILE_FORMATS)} file"))
    src = _local_source("data", given, local)
    assert src.path is not None
    return _read_file(src.path, given)


def text_column_of(table: Table, wanted: str | None, exclude: set[str | None]) -> str:
    """``wanted`` if the table has it, else the only text column outside ``exclude``."""
    if wanted is not None:
        if wanted not in table.frame.columns:
            raise DataError(_missing_column(table, wanted, "text", "--text-column"))
        return wanted
    problems: list[Problem] = []
    found = _detect_text_column(table, exclude, problems)
    if problems:
        raise DataError(problems)
    assert found is not None
    return found


def texts_of(table: Table, column: str) -> list[str]:
    """The column's values as strings, missing values as empty strings."""
    return [_as_text(value) for value in table.frame[column]]


def label_ids_of(table: Table, column: str, label_names: list[str]) -> list[int]:
    """Class ids (indices into ``label_names``) of a label column; every unusable row reported."""
    if column not in table.frame.columns:
        raise DataError(_missing_column(table, column, "label", "--label-column"))
    kind: Literal["int", "str"] = "int" if all(_is_integral(name) for name in label_names) else "str"
    ids = {name: i for i, name in enumerate(label_names)}
    found: list[int] = []
    problems: list[Problem] = []
    for row, value in enumerate(table.frame[column]):
        name = None if _is_missing(value) else _canonical_label(value, kind)
        if name in ids:
            found.append(ids[name])
            continue
        what = "has no label" if name is None else f"label {name!r} is not one the model knows"
        problems.append(Problem(table.where(row), what, f"the model's labels: {', '.join(label_names)}"))
    if problems:
        raise DataError(_capped(problems, table.origin))
    return found


# ---- Prefect wrapper -----------------------------------------------------------------


def s3_fetcher() -> Callable[[str, Path], Path]:
    """``fetch`` for :func:`prepare_data`: objects and folders (``s3://.../``) from the configured S3."""
    from adaptflow.tasks.storage.s3 import S3Settings, download_file, download_prefix

    settings = S3Settings.resolve()

    def fetch(uri: str, dest_dir: Path) -> Path:
        if uri.endswith("/"):
            return download_prefix(settings, uri, dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        return download_file(settings, uri, dest_dir)

    return fetch


@task(name="prepare-data", cache_policy=NO_CACHE, retries=0)
def prepare_data_task(cfg: DataConfig, tokenizer_dir: Path, work_dir: Path) -> PreparedData:
    """Prepare (or reuse) the tokenized dataset; publish its data-quality report."""
    uses_s3 = any(ref and ref.startswith("s3://") for ref in (cfg.data, cfg.eval_data))
    prepared = prepare_data(cfg, tokenizer_dir, work_dir, fetch=s3_fetcher() if uses_s3 else None)
    logger = get_run_logger()
    m = prepared.manifest
    verb = "reused prepared data" if prepared.reused else "prepared data"
    logger.info(f"{verb} {m['key']}: splits {m['splits']}, labels {m['label_names']} -> {prepared.path}")
    create_markdown_artifact(data_report_markdown(m), key="data-report", description="Data-quality report")
    return prepared


def data_report_markdown(manifest: dict[str, Any]) -> str:
    """The data-quality report: sizes, balance, what cleaning dropped, token lengths."""
    lines = [f"### Prepared data `{manifest['key']}`", "", "| split | rows | label balance | dropped | tokens p50 / p95 / max | truncated |", "|---|---|---|---|---|---|"]
    for split, rows in manifest["splits"].items():
        balance = ", ".join(f"{k}: {v}" for k, v in manifest["label_balance"].get(split, {}).items())
        dropped = ", ".join(f"{k}: {v}" for k, v in manifest["dropped"].get(split, {}).items() if v) or "none"
        t = manifest["token_lengths"].get(split, {})
        lengths = f"{t.get('p50', '?')} / {t.get('p95', '?')} / {t.get('max', '?')}"
        lines.append(f"| {split} | {rows} | {balance} | {dropped} | {lengths} | {t.get('truncated', 0)} |")
    return "\n".join(lines) + "\n"
