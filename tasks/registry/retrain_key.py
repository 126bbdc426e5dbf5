"""What the ``retrain`` flow decides with, as plain functions (no Prefect).

A retrain is identified by its **retrain key**: a sha256 over the content fingerprints of
the training (and fixed evaluation) data, the run configuration without its locations
(``data.data``, ``data.eval_data``, ``work_dir``) and the code version. Every registered
version's manifest already records those three (``data.source``, ``config``,
``code_version``), so the key of a version is computed from its manifest and nothing new
is stored: a retrain whose key matches a registered version does not train again.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from adaptflow.tasks.config import AdaptConfig, load_config
from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.registry.store import get_manifest, list_versions
from adaptflow.tasks.storage.s3 import S3Settings

LOCATION_FIELDS = (("data", "data"), ("data", "eval_data"), ("work_dir",))
"""Config fields that say where things are, not what is trained: left out of the key."""
SCAN_VERSIONS = 50
"""Newest versions whose manifests are read when looking for an identical earlier retrain."""


def content(fingerprint: dict[str, Any] | None) -> dict[str, Any] | None:
    """A data fingerprint without its location: the same bytes elsewhere are the same data."""
    if fingerprint is None:
        return None
    return {key: value for key, value in fingerprint.items() if key != "uri"}


def config_without_locations(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict (``AdaptConfig.model_dump(mode="json")``) minus the fields of :data:`LOCATION_FIELDS`."""
    stripped = copy.deepcopy(config)
    for path in LOCATION_FIELDS:
        holder = stripped
        for part in path[:-1]:
            holder = holder.get(part, {})
        holder.pop(path[-1], None)
    return stripped


def retrain_key(data: dict[str, Any], eval_data: dict[str, Any] | None, config: dict[str, Any], code: str) -> str:
    """sha256 over data content, evaluation data content, config (no locations) and code version."""
    payload = {
        "data": content(data),
        "eval_data": content(eval_data),
        "config": config_without_locations(config),
        "code_version": code,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def manifest_key(manifest: dict[str, Any]) -> str | None:
    """The retrain key of a registered version; ``None`` for a manifest without the lineage it needs."""
    try:
        source = manifest["data"]["source"]
        return retrain_key(source["data"], source.get("eval_data"), manifest["config"], manifest["code_version"])
    except (KeyError, TypeError):
        return None


def trained_on(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The training data fingerprint a version's manifest records (``None`` when it records none)."""
    return ((manifest.get("data") or {}).get("source") or {}).get("data")


def find_trained(settings: S3Settings, name: str, key: str, limit: int = SCAN_VERSIONS) -> int | None:
    """The newest registered version of ``name`` whose retrain key is ``key`` (among the last ``limit``)."""
    for info in reversed(list_versions(settings, name)[-limit:]):
        if manifest_key(get_manifest(settings, name, info.version)) == key:
            return info.version
    return None


def retrain_config(name: str, data: str, given: AdaptConfig | dict | None, champion: dict[str, Any] | None) -> AdaptConfig:
    """The configuration to retrain with: ``given``, else the one recorded in ``champion`` (a version's manifest), else the defaults.

    Either way the training data is ``data``, the model is registered under ``name``, and
    a recorded ``work_dir`` (a folder of the machine that trained the champion) is dropped.
    """
    if given is not None:
        raw = load_config(given).model_dump(mode="json")
    elif champion is not None:
        raw = copy.deepcopy(champion["config"])
        raw["work_dir"] = None
    else:
        raw = AdaptConfig().model_dump(mode="json")
    raw["data"]["data"] = data
    raw["registry"] = {**raw.get("registry", {}), "register_model": True, "model_name": name}
    return load_config(raw)


def export_eval_split(dataset_path: Path, label_names: list[str], dest: Path) -> Path:
    """Write the prepared ``eval`` split as a ``text,label`` CSV (label names), the file both versions are scored on."""
    from datasets import load_from_disk  # datasets loads slowly: imported where prepared data is read

    split = load_from_disk(str(dataset_path))["eval"]
    if "text_pair" in split.column_names:
        raise ConfigError(
            Problem(
                "data.text_pair_column",
                "the retrain gate scores single-text classification only",
                "promote sentence-pair models with `adaptflow models promote`",
            )
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(split["text"], split["labels"]):
            writer.writerow([text, label_names[label]])
    return dest


def retrain_markdown(result: dict[str, Any]) -> str:
    """The retrain decision for a Prefect artifact: what was compared, what happened, both sets of metrics."""
    lines = [
        f"# Retrain of `{result['model_name']}`: {result['status'].replace('_', ' ')}",
        "",
        result["explanation"],
        "",
        "| | |",
        "|---|---|",
        f"| data | `{result['data']}` |",
        f"| data sha256 | `{str(result['data_sha256'])[:16]}` |",
        f"| champion before | {_version(result['champion_before'])} |",
        f"| candidate | {_version(result['candidate_version'])} ({'trained now' if result['trained'] else 'not trained now'}) |",
        f"| champion after | {_version(result['champion_after'])} |",
        f"| retrain key | `{str(result['retrain_key'])[:16]}` |",
    ]
    if result.get("approval"):
        lines.append(f"| approval | {_table_safe(result['approval']['summary'])} |")
    candidate, champion = result.get("candidate_metrics") or {}, result.get("champion_metrics") or {}
    if candidate or champion:
        lines += ["", f"Both scored on `{result.get('eval_file')}`:", "", "| metric | candidate | champion |", "|---|---|---|"]
        for key in sorted(set(candidate) | set(champion)):
            lines.append(f"| {key} | {_cell(candidate.get(key))} | {_cell(champion.get(key))} |")
    return "\n".join(lines) + "\n"


def _table_safe(text: str) -> str:
    """Free text (a reviewer's note) as one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _version(version: int | None) -> str:
    return "none" if version is None else f"version {version}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
