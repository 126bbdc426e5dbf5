"""The prepared-data store: ``WORK_DIR/prepared/<key>/`` holding ``dataset/`` and ``manifest.json``.

Rules every writer (classification and LM data) follows:

- the key hashes everything that decides the contents, so a folder is never rewritten:
  the same inputs are prepared once and reused;
- a folder is built under a temporary name, with ``manifest.json`` written last, then
  renamed into place; a folder holding ``manifest.json`` is therefore always complete,
  and one without it is a leftover that may be deleted;
- when two runs publish the same key at once, the first folder in place is kept.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptflow.tasks.errors import DataError, Problem

if TYPE_CHECKING:
    from datasets import DatasetDict

MANIFEST = "manifest.json"
DATASET_DIR = "dataset"


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


def open_prepared(folder: Path, *, reused: bool) -> PreparedData:
    """Read a prepared folder's manifest; a DataError when the folder is incomplete."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            Problem(str(folder), "not a prepared dataset folder (no manifest.json)", "run the data preparation step again")
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(Problem(str(manifest_path), f"unreadable manifest ({exc})", "delete the folder and prepare again")) from None
    return PreparedData(folder, folder / DATASET_DIR, manifest, reused)


def load_prepared(path: Path | str) -> tuple[DatasetDict, dict[str, Any]]:
    """The tokenized ``DatasetDict`` and the manifest of a prepared folder (for the training worker)."""
    prepared = open_prepared(Path(path), reused=True)
    # datasets is heavy: imported only when this runs
    from datasets import load_from_disk

    return load_from_disk(str(prepared.dataset_path)), prepared.manifest


def publish(folder: Path, dataset: DatasetDict, manifest: dict[str, Any]) -> None:
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
