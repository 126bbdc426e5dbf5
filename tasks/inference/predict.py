"""Batch inference with a registered model version, and scoring a version on labelled rows.

:func:`load_version` pulls a version from the registry (files checked against the
manifest) and loads it with :func:`adaptflow.tasks.registry.hf_folder.load_hf_classifier` (folder
layout 2) or :func:`adaptflow.tasks.modeling.load_classifier` (older versions), which read only
``safetensors``. A LoRA version holds only its adapter and head: its base model is
resolved from the manifest's ``base_model.ref`` and must hash to the
``base_model.sha256`` recorded when it was registered, or the adapter would silently run
on other weights.

:func:`predict_file` reads a CSV, TSV, JSON lines or Parquet file (also ``.csv.gz`` ...) with the
readers of ``tasks/data/readers.py`` (no labels needed), runs batched, length-sorted inference and
writes CSV or JSON lines (by the output's extension)::

    <the input's columns> | label | score | prob_<class> (one per class)

``label`` is the predicted class name and ``score`` its probability; an input column
already called ``label``, ``score`` or ``prob_<class>`` is kept as ``input_<name>``.

It streams: the input is checked line by line first (every problem at once, with the
output path and the model reference, before the model loads), then read, tokenized,
predicted and written :data:`CHUNK_ROWS` rows at a time, so memory does not grow with the
file. The output is written to a temporary file beside it, created with the umask's
permissions like any new file, renamed into place when complete and removed on failure;
one left by a killed process is removed by the next write of the same output.

:func:`evaluate_version` scores a version on a labelled file with
:func:`adaptflow.tasks.evaluation.classification.classification_metrics`; the promotion gate uses it so that a
candidate and the champion are scored on the same rows.

Plain functions down to the thin Prefect task at the end.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks.base_model import folder_digest, resolve_model
from adaptflow.tasks.config import adaptflow_home
from adaptflow.tasks.data.columns import text_column_of, texts_of
from adaptflow.tasks.data.labels import label_ids_of
from adaptflow.tasks.data.readers import FileScan, Table, iter_data_chunks, read_data_file, scan_data_file
from adaptflow.tasks.errors import ConfigError, DataError, ModelError, Problem, run_all
from adaptflow.tasks.evaluation.classification import classification_metrics
from adaptflow.tasks.modeling import AdaptClassifier, load_classifier
from adaptflow.tasks.registry.hf_folder import is_hf_folder, load_hf_classifier, read_meta
from adaptflow.tasks.registry.store import MANIFEST, pull_version, resolve_ref
from adaptflow.tasks.storage.s3 import S3Settings, download_file, download_prefix

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
PROB_PREFIX = "prob_"
INPUT_PREFIX = "input_"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_BATCH_SIZE = 32
CHUNK_ROWS = 4096
"""Rows read, tokenized, predicted and written at a time (also the rows the text column is detected on)."""
PREVIEW_ROWS = 20
FALLBACK_MAX_LENGTH = 512

Progress = Callable[[int, int], None]
"""Called after each batch with (rows done, rows in total)."""


# ---- loading a version ---------------------------------------------------------------


@dataclass(frozen=True)
class LoadedVersion:
    """A registered version, loaded for inference."""

    name: str
    version: int
    model: AdaptClassifier
    tokenizer: Any
    label_names: list[str]
    max_length: int
    """Tokens per text, as in training (longer texts are truncated)."""
    manifest: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def default_cache_dir() -> Path:
    """Where base models fetched from S3 or the hub are kept (the adapt flow's cache)."""
    return adaptflow_home() / "work" / "cache"


def load_version(settings: S3Settings, name: str, version: int, *, cache_dir: Path | None = None) -> LoadedVersion:
    """Pull a committed version (see :func:`adaptflow.tasks.registry.store.resolve_ref` for references) and load it for inference."""
    folder = pull_version(settings, name, version)
    manifest = json.loads((folder / MANIFEST).read_text())
    meta = read_meta(folder)
    if meta.get("kind", "sequence_classification") != "sequence_classification":
        raise ModelError(Problem(f"model {name}:{version}", f"is a {meta['kind']} model, not a classifier"))
    base_dir = None
    if meta.get("weights") == "adapter":
        base_dir = verified_base_model(settings, manifest, f"{name}:{version}", cache_dir or default_cache_dir())
    model, tokenizer, meta = (load_hf_classifier if is_hf_folder(folder) else load_classifier)(folder, base_dir)
    label_names = list(meta.get("label_names") or manifest["data"]["label_names"])
    if len(label_names) != model.head.linear.out_features:
        raise ModelError(
            Problem(f"model {name}:{version}", f"names {len(label_names)} labels but its head has {model.head.linear.out_features} outputs")
        )
    max_length = meta.get("max_length") or manifest.get("config", {}).get("data", {}).get("max_length")
    return LoadedVersion(name, version, model, tokenizer, label_names, int(max_length or FALLBACK_MAX_LENGTH), manifest)


def verified_base_model(settings: S3Settings, manifest: dict[str, Any], where: str, cache_dir: Path) -> Path:
    """The local folder of a LoRA version's base model, checked against the registered digest."""
    base = manifest.get("base_model") or {}
    ref, expected = base.get("ref"), base.get("sha256")
    if not ref or not expected:
        raise ModelError(
            Problem(
                f"model {where}",
                "is a LoRA adapter but its manifest names no base model (base_model.ref and sha256)",
                "register it again with AdaptFlow",
            )
        )
    path = resolve_model(ref, cache_dir, lambda uri, dest: download_prefix(settings, uri, dest))
    actual = folder_digest(path)
    if actual != expected:
        raise ModelError(
            Problem(
                f"model {where}",
                f"is a LoRA adapter trained on base model {ref!r} with sha256 {expected[:16]}..., but {path} now hashes "
                f"to {actual[:16]}...; the adapter would run on different weights",
                "restore the base model the adapter was trained on, or adapt and register again on this one",
            )
        )
    return path


# ---- inputs --------------------------------------------------------------------------


def local_input(settings: S3Settings | None, data: str, cache_dir: Path) -> Path:
    """A local data file as given, or an ``s3://`` object downloaded into ``cache_dir``."""
    if not data.startswith("s3://"):
        return Path(data).expanduser()
    if settings is None:
        raise DataError(Problem(data, "is on S3 but no S3 storage is configured", "set ADAPTFLOW_S3_ENDPOINT_URL and the S3 keys"))
    dest = cache_dir / "inputs" / hashlib.sha256(data.encode()).hexdigest()[:16]
    dest.mkdir(parents=True, exist_ok=True)
    return download_file(settings, data, dest)


def read_rows(settings: S3Settings | None, data: str, cache_dir: Path) -> Table:
    """The rows of a local data file or of an ``s3://`` object (named as given in messages)."""
    return read_data_file(data, local_input(settings, data, cache_dir))


def _rows_and_text_column(
    settings: S3Settings | None, data: str, cache_dir: Path, wanted: str | None, exclude: set[str | None]
) -> tuple[Table, str]:
    table = read_rows(settings, data, cache_dir)
    return table, text_column_of(table, wanted, exclude)


def _scan_and_text_column(
    settings: S3Settings | None, data: str, cache_dir: Path, wanted: str | None, exclude: set[str | None], chunk_rows: int
) -> tuple[FileScan, str]:
    scan = scan_data_file(data, local_input(settings, data, cache_dir))
    first = next(iter_data_chunks(scan, chunk_rows))
    return scan, text_column_of(first, wanted, exclude)


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ConfigError(Problem("batch_size", f"must be 1 or more (got {batch_size})"))
    return batch_size


def output_format(output: str | Path) -> str:
    """'csv' or 'jsonl' from the output file's extension."""
    fmt = OUTPUT_FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise DataError(Problem(f"--output {output}", "unsupported output file type", f"end the name with {' or '.join(OUTPUT_FORMATS)}"))
    return fmt


# ---- inference -----------------------------------------------------------------------


def predict_probabilities(
    loaded: LoadedVersion, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, on_progress: Progress | None = None
) -> np.ndarray:
    """Class probabilities [rows, classes] in the order of ``texts``.

    Texts are tokenized once, sorted by length and padded per batch, so batches hold
    texts of similar length and little padding.
    """
    check_batch_size(batch_size)
    tokenizer = loaded.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=loaded.max_length)
    inputs = [name for name in MODEL_INPUTS if name in encoded]
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
    probabilities = np.zeros((len(texts), len(loaded.label_names)), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            features = {name: [encoded[name][i] for i in rows] for name in inputs}
            batch = tokenizer.pad(features, padding=True, padding_side="right", return_tensors="pt")  # 'last' pooling expects right padding
            _, logits = loaded.model(**batch)
            probabilities[rows] = torch.softmax(logits.double(), dim=-1).numpy()
            if on_progress is not None:
                on_progress(min(start + batch_size, len(order)), len(order))
    return probabilities


def prediction_frame(frame: pd.DataFrame, label_names: Sequence[str], probabilities: np.ndarray) -> pd.DataFrame:
    """The input's columns (clashing names prefixed ``input_``) + label, score, prob_<class>."""
    added = ["label", "score", *(PROB_PREFIX + name for name in label_names)]
    out = frame.rename(columns={c: INPUT_PREFIX + str(c) for c in frame.columns if c in added}).reset_index(drop=True)
    best = probabilities.argmax(axis=1)
    out["label"] = [label_names[i] for i in best]
    out["score"] = probabilities[np.arange(len(best)), best]
    for j, name in enumerate(label_names):
        out[PROB_PREFIX + name] = probabilities[:, j]
    return out


def check_output(output: Path) -> str:
    """The output's format ('csv' or 'jsonl'); a folder, or a place that cannot be written, refused before any work."""
    where = f"--output {output}"
    if output.is_dir():
        raise DataError(
            Problem(where, "is a folder", f"give a file name ending in {' or '.join(OUTPUT_FORMATS)}, e.g. {output / 'predictions.csv'}")
        )
    parent = next(p for p in (output.parent, *output.parent.parents) if p.exists())
    fmt = output_format(output)
    if not parent.is_dir():
        raise DataError(Problem(where, f"{parent} is a file, not a folder", "choose an output path in a folder"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(Problem(where, f"cannot write in {parent} (permission denied)", "choose a folder you can write to"))
    return fmt


def remove_abandoned(output: Path) -> list[Path]:
    """Remove the temporary files a killed writer of ``output`` on this machine left (its process is gone); returns them.

    A process killed outright (SIGKILL, out of memory) cannot clean up after itself; the next
    write of the same output does. Files of live processes, or of other machines, are left alone.
    """
    removed = []
    host = socket.gethostname()
    for partial in output.parent.glob(f".{glob.escape(output.name)}.*.partial"):
        owner = partial.name[len(output.name) + 2 : -len(".partial")].rsplit("-", 2)
        if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not psutil.pid_exists(int(owner[1])):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


class OutputFile:
    """CSV or JSON lines written a frame at a time; the file appears complete or not at all.

    Rows go to a temporary file beside ``output`` (created like any new file: the umask's
    permissions), renamed into place when the ``with`` block ends, removed when it fails.
    """

    def __init__(self, output: Path):
        self.output = output
        self.fmt = check_output(output)
        self.partial = output.parent / f".{output.name}.{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.partial"
        self.header = True

    def __enter__(self) -> OutputFile:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.output)
        self.handle = open(self.partial, "x", encoding="utf-8", newline="")
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            frame.to_csv(self.handle, index=False, header=self.header)
        else:
            text = frame.to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
            self.handle.write(text if text.endswith("\n") else text + "\n")
        self.header = False

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.handle.close()
        if exc_type is None:
            os.replace(self.partial, self.output)
        else:
            self.partial.unlink(missing_ok=True)


def write_predictions(frame: pd.DataFrame, output: Path) -> Path:
    """Write CSV or JSON lines in one go (see :class:`OutputFile`)."""
    with OutputFile(output) as out:
        out.write(frame)
    return output


@dataclass(frozen=True)
class PredictionResult:
    """What a batch prediction did."""

    model: str
    """The version used, ``NAME:VERSION``."""
    data: str
    output: Path
    text_column: str
    rows: int
    label_counts: dict[str, int]
    """Rows per predicted label, every class listed."""
    preview: list[dict[str, Any]]
    """The first rows of the output, JSON-safe."""
    wall_s: float


def predict_file(
    settings: S3Settings,
    ref: str,
    data: str,
    output: str | Path,
    *,
    text_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Progress | None = None,
    cache_dir: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> PredictionResult:
    """Predict a label for every row of ``data`` with version ``ref``; write ``output``.

    The input file (every line) and its text column, the output path, the batch size and
    the model reference are all checked (every problem reported at once) before the model
    is loaded. Then ``chunk_rows`` rows at a time are read, predicted and written, in the
    input's order. A missing text is predicted as an empty string.
    """
    started = time.perf_counter()
    cache_dir = cache_dir or default_cache_dir()
    output = Path(output).expanduser()
    (scan, column), _, _, (name, version) = run_all(
        lambda: _scan_and_text_column(settings, data, cache_dir, text_column, {"label"}, chunk_rows),
        lambda: check_output(output),
        lambda: check_batch_size(batch_size),
        lambda: resolve_ref(settings, ref),
    )
    loaded = load_version(settings, name, version, cache_dir=cache_dir)
    counts: Counter[str] = Counter()
    preview: list[dict[str, Any]] = []
    done = 0
    with OutputFile(output) as out:
        for chunk in iter_data_chunks(scan, chunk_rows):
            progress = None if on_progress is None else (lambda n, _total, before=done: on_progress(before + n, scan.rows))
            probabilities = predict_probabilities(loaded, texts_of(chunk, column), batch_size=batch_size, on_progress=progress)
            frame = prediction_frame(chunk.frame, loaded.label_names, probabilities)
            out.write(frame)
            counts.update(frame["label"])
            if len(preview) < PREVIEW_ROWS:
                preview += json.loads(frame.head(PREVIEW_ROWS - len(preview)).to_json(orient="records", force_ascii=False))
            done += len(frame)
    return PredictionResult(
        model=loaded.ref,
        data=data,
        output=output,
        text_column=column,
        rows=done,
        label_counts={label: counts.get(label, 0) for label in loaded.label_names},
        preview=preview,
        wall_s=time.perf_counter() - started,
    )


def evaluate_version(
    settings: S3Settings,
    ref: str,
    data_file: str,
    text_column: str | None = None,
    label_column: str = "label",
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Classification metrics (:func:`adaptflow.tasks.evaluation.classification.classification_metrics`) of ``ref`` on a labelled file."""
    cache_dir = cache_dir or default_cache_dir()
    (table, column), _, (name, version) = run_all(
        lambda: _rows_and_text_column(settings, data_file, cache_dir, text_column, {label_column}),
        lambda: check_batch_size(batch_size),
        lambda: resolve_ref(settings, ref),
    )
    loaded = load_version(settings, name, version, cache_dir=cache_dir)
    labels = label_ids_of(table, label_column, loaded.label_names)
    probabilities = predict_probabilities(loaded, texts_of(table, column), batch_size=batch_size)
    return classification_metrics(labels, probabilities.argmax(axis=1).tolist(), loaded.label_names)


# ---- Prefect wrapper -----------------------------------------------------------------

# Callbacks that want the progress of every prediction in this process (the CLI's bar).
_listeners: list[Progress] = []


def add_progress_listener(listener: Progress) -> Callable[[], None]:
    """Register a ``(done, total)`` callback for predictions run here; returns its remover."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


class _Reporter:
    """Progress to the Prefect artifact (each percent), the log (each 10%) and the listeners."""

    def __init__(self, description: str):
        self.artifact = create_progress_artifact(progress=0.0, description=description)
        self.shown = 0.0
        self.logged = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100.0 * done / max(1, total)
        if pct - self.shown >= 1.0 or done == total:
            update_progress_artifact(self.artifact, progress=pct)
            self.shown = pct
        if int(pct // 10) > self.logged:
            self.logged = int(pct // 10)
            get_run_logger().info(f"predicted {done}/{total} rows")
        for listener in list(_listeners):
            listener(done, total)


@task(name="predict", cache_policy=NO_CACHE)
def predict_task(
    ref: str, data: str, output: str, text_column: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> PredictionResult:
    """Predict every row of ``data`` with a registered version; write ``output``."""
    result = predict_file(
        S3Settings.resolve(),
        ref,
        data,
        output,
        text_column=text_column,
        batch_size=batch_size,
        on_progress=_Reporter(f"Predicting {data} with {ref}"),
    )
    get_run_logger().info(
        f"{result.model}: {result.rows} rows from {data} -> {result.output} in {result.wall_s:.1f} s ({result.label_counts})"
    )
    return result
