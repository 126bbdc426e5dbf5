"""Where the inputs come from: a local file or ``datasets`` folder, ``s3://``, the hub, ``sample://``.

:func:`resolve_source` turns what the user wrote (``--data``, ``--eval-data``) into a
:class:`Source`; :func:`fingerprint` says what identifies its contents. An ``s3://``
input is downloaded with a ``fetch(uri, dest_dir)`` function passed in (see
:func:`s3_fetcher`), into ``WORK_DIR/downloads/<hash of the URI>``: :func:`download`
is the one place that checks that S3 storage is configured for it. Classification and
LM data both read their inputs through this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from adaptflow.tasks.assets import asset
from adaptflow.tasks.errors import DataError, Problem
from adaptflow.tasks.storage.settings import S3Settings, is_s3_uri, s3_not_configured

if TYPE_CHECKING:
    from datasets import DatasetDict

SAMPLE_SCHEME = "sample://"
SAMPLES = {"reviews": asset("adaptflow.tasks", "sample_data", "reviews.csv")}
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
GZIP_SUFFIX = ".gz"
"""A text format compressed with gzip (``reviews.csv.gz``) is read as its plain version; Parquet compresses itself."""
SUPPORTED_FILES = ", ".join([*FILE_FORMATS, *(s + GZIP_SUFFIX for s, f in FILE_FORMATS.items() if f != "parquet")])
HASH_CHUNK = 1 << 20

Fetch = Callable[[str, Path], Path]
"""``fetch(uri, dest_dir)``: download an ``s3://`` object or folder, return its local path."""


def needs_s3(*refs: str | None) -> bool:
    """Whether any of the inputs is on S3 (and so needs a ``fetch``)."""
    return any(is_s3_uri(ref) for ref in refs)


def download(given: str, work_dir: Path, fetch: Fetch | None) -> Path:
    """The local copy of the ``s3://`` input ``given``; a DataError when no S3 storage is configured."""
    if fetch is None:
        raise DataError(s3_not_configured(given))
    dest = Path(work_dir) / "downloads" / hashlib.sha256(given.encode()).hexdigest()[:16]
    return _fetched_path(given, fetch(given, dest))


def fetcher_for(*refs: str | None) -> Fetch | None:
    """:func:`s3_fetcher` when one of the inputs is on S3, else None (no S3 settings needed)."""
    return s3_fetcher() if needs_s3(*refs) else None


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


def resolve_source(role: str, given: str, work_dir: Path, fetch: Fetch | None) -> Source:
    if given.startswith(SAMPLE_SCHEME):
        return local_source(role, given, _sample_path(given))
    if is_s3_uri(given):
        return local_source(role, given, download(given, work_dir, fetch))
    path = Path(given).expanduser()
    if path.exists():
        return local_source(role, given, path)
    if looks_like_path(given):
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


def file_format(path: Path | str) -> str | None:
    """'csv', 'tsv', 'jsonl' or 'parquet' from the file's name (``.gz`` for a gzip-compressed text file); None if unsupported."""
    name = Path(path).name.lower()
    compressed = name.endswith(GZIP_SUFFIX)
    fmt = FILE_FORMATS.get(Path(name.removesuffix(GZIP_SUFFIX)).suffix)
    return None if compressed and fmt == "parquet" else fmt


def is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(GZIP_SUFFIX)


def looks_like_path(given: str) -> bool:
    return file_format(given) is not None or given.startswith((".", "/", "~")) or given.count("/") > 1


def is_local(given: str) -> bool:
    return given.startswith(SAMPLE_SCHEME) or (not is_s3_uri(given) and (Path(given).expanduser().exists() or looks_like_path(given)))


def local_source(role: str, given: str, path: Path) -> Source:
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
    if file_format(path) is None:
        suffix = "".join(path.suffixes[-2:]) if is_gzip(path) else path.suffix
        raise DataError(Problem(given, f"unsupported file type {suffix or '(none)'!r}", f"use one of {SUPPORTED_FILES}"))
    return Source(role, given, "file", path)


def _is_datasets_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_hub(name: str) -> DatasetDict:
    # datasets is heavy: imported only when this runs
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
    return fingerprint(resolve_source(role, given, Path(work_dir), fetch))


def sha256_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size in bytes, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _sha256_folder(folder: Path) -> tuple[str, int]:
    """sha256 over the relative paths and contents of a folder's files (datasets' cache files left out)."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("cache-")):
        file_digest, size = sha256_file(path)
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_digest}\n".encode())
        total += size
    return digest.hexdigest(), total


def s3_fetcher() -> Fetch:
    """``fetch`` for :func:`prepare_data`: objects and folders (``s3://.../``) from the configured S3."""
    # boto3 loads only for S3 inputs: the training worker imports this module and must run without it (bench/gpu_check.py)
    from adaptflow.tasks.storage.s3 import download_file, download_prefix

    settings = S3Settings.resolve()

    def fetch(uri: str, dest_dir: Path) -> Path:
        if uri.endswith("/"):
            return download_prefix(settings, uri, dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        return download_file(settings, uri, dest_dir)

    return fetch
