"""``adaptflow models export``: a registered classification version as a folder for serving.

- Without ``--merge``: the version's Hugging Face folder as registered (folder layout 2);
  a version registered before that layout is converted the same way registration now does.
- ``--merge`` (LoRA versions): the adapter merged into its base model (checked against the
  sha256 the manifest recorded) and written as a full classifier, on the route its pooling
  takes (tasks/registry/hf_folder.py). The merged model gives the adapter model's logits.
- ``--to-hub REPO``: the exported folder uploaded with ``huggingface_hub``; a failure is one
  :class:`ModelError` naming the repository, never a traceback.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from adaptflow.tasks.errors import ModelError, Problem
from adaptflow.tasks.inference.predict import default_cache_dir, load_version, verified_base_model
from adaptflow.tasks.registry.hf_folder import (
    ADAPTFLOW_DIR,
    finish_folder,
    is_hf_folder,
    read_meta,
    write_classifier_folder,
    write_full_classifier,
)
from adaptflow.tasks.registry.store import MANIFEST, pull_version, resolve_ref
from adaptflow.tasks.storage.s3 import S3Settings

OLD_LAYOUT_RUN_FILES = ("config.json", "metrics.json", "evaluation.json", "data_manifest.json", "plots", "README.md")
"""AdaptFlow's files at the root of a version registered before folder layout 2 (its card included: it describes that layout)."""


@dataclass(frozen=True)
class ExportResult:
    ref: str
    output: Path
    route: str
    merged: bool
    hub_url: str | None = None


def export_version(
    settings: S3Settings, ref: str, output: Path, *, merge: bool = False, to_hub: str | None = None, cache_dir: Path | None = None
) -> ExportResult:
    """Write version ``ref`` into ``output`` (which must not exist or be empty); optionally upload it."""
    output = Path(output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ModelError(Problem(f"--output {output}", "exists and is not an empty folder", "name a new folder"))
    name, version = resolve_ref(settings, ref)
    folder = pull_version(settings, name, version)
    manifest = json.loads((folder / MANIFEST).read_text())
    meta = read_meta(folder)
    if meta.get("kind", "sequence_classification") != "sequence_classification":
        raise ModelError(Problem(f"model {name}:{version}", f"is a {meta['kind']} model; export handles classifiers", "use models pull"))
    if merge and meta.get("weights") != "adapter":
        raise ModelError(Problem("--merge", f"{name}:{version} holds full weights, there is no adapter to merge", "drop --merge"))
    output.mkdir(parents=True, exist_ok=True)
    base_ref = manifest.get("base_model", {}).get("ref", meta.get("base_model", ""))
    if merge:
        route = _write_merged(settings, name, version, output, meta, base_ref, cache_dir)
    elif is_hf_folder(folder):
        shutil.copytree(folder, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))
        route = meta["route"]
    else:
        route = _convert_old_layout(settings, folder, output, manifest, meta, base_ref, cache_dir)
    shutil.copy(folder / MANIFEST, output / ADAPTFLOW_DIR / MANIFEST)
    hub_url = upload_to_hub(output, to_hub) if to_hub else None
    return ExportResult(f"{name}:{version}", output, route, merge, hub_url)


def _write_merged(settings: S3Settings, name: str, version: int, output: Path, meta: dict, base_ref: str, cache_dir: Path | None) -> str:
    loaded = load_version(settings, name, version, cache_dir=cache_dir)
    model = loaded.model
    backbone = model.backbone.merge_and_unload()
    route = write_full_classifier(
        output, backbone.config.to_dict(), backbone.state_dict(), model.head.linear.state_dict(), model.pooling, loaded.label_names
    )
    loaded.tokenizer.save_pretrained(output)
    (output / ADAPTFLOW_DIR).mkdir(exist_ok=True)
    finish_folder(output, {**meta, "merged_from": f"{name}:{version}"}, route, base_ref)
    return route


def _convert_old_layout(
    settings: S3Settings, folder: Path, output: Path, manifest: dict, meta: dict, base_ref: str, cache_dir: Path | None
) -> str:
    """A version registered before folder layout 2: its model rewritten, its other files under ``adaptflow/``."""
    model_type = None
    if meta.get("weights") == "adapter" and "model_type" not in meta:  # older metas did not record the base's type
        base_dir = verified_base_model(settings, manifest, str(folder), cache_dir or default_cache_dir())
        model_type = json.loads((base_dir / "config.json").read_text())["model_type"]
    route = write_classifier_folder(folder, output, base_ref, model_type)["route"]
    for entry in OLD_LAYOUT_RUN_FILES:
        if (folder / entry).is_dir():
            shutil.copytree(folder / entry, output / ADAPTFLOW_DIR / entry)
        elif (folder / entry).is_file():
            shutil.copy(folder / entry, output / ADAPTFLOW_DIR / entry)
    return route


def upload_to_hub(folder: Path, repo: str) -> str:
    """Create (if needed) the hub model repository ``repo`` and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi  # only for uploads to the hub

    try:
        api = HfApi()
        api.create_repo(repo, repo_type="model", exist_ok=True)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model"))
    except Exception as exc:  # the hub client raises many types (HTTP, network, auth, bad id); all end the export the same way
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(
            Problem(
                f"--to-hub {repo}",
                f"upload failed ({type(exc).__name__}: {first_line})",
                f"check the repository id, HF_TOKEN and network access; the exported folder is complete in {folder}",
            )
        ) from None
