"""`adaptflow models ...` against a real SeaweedFS server: output a person can read, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptflow.flows.cli.app import app
from adaptflow.tasks.registry import store as registry
from adaptflow.tasks.storage.s3 import S3Settings

FILES = {
    "adaptflow_model.json": b'{"weights": "backbone"}',
    "backbone/model.safetensors": os.urandom(50_000),
    "vocab.txt": b"[PAD]\nhello\n",
}


def manifest(strategy: str, accuracy: float) -> dict:
    return {
        "strategy": strategy,
        "task": "sequence_classification",
        "base_model": {"ref": "sentence-transformers/all-MiniLM-L6-v2", "sha256": "ab" * 32},
        "data": {
            "key": "reviews-3f2a",
            "source": {"data": {"uri": "s3://data/reviews.csv", "sha256": "cd" * 32}},
            "label_names": ["negative", "positive"],
            "splits": {"train": 96, "eval": 24},
        },
        "metrics": {"accuracy": accuracy, "macro_f1": accuracy - 0.01},
        "training": {"trainable_params": 1000, "total_params": 20000, "train_runtime_s": 12.5, "device": "cpu"},
        "code_version": "0123abc",
        "package_versions": {"torch": "2.13.0", "transformers": "5.23.0"},
    }


@pytest.fixture
def models(s3_env: S3Settings, tmp_path: Path) -> S3Settings:
    """Model 'reviews' with versions 1 (full fine-tuning) and 2 (LoRA)."""
    folder = tmp_path / "model"
    for relative, content in FILES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    registry.register_version(s3_env, "reviews", folder, manifest("full_fine_tuning", 0.9))
    registry.register_version(s3_env, "reviews", folder, manifest("lora", 0.92))
    return s3_env


def models_cli(*args: str):
    return CliRunner().invoke(app, ["models", *args], env={"COLUMNS": "160"})


def test_list_show_promote_pull(models: S3Settings, tmp_path: Path) -> None:
    listed = models_cli("list")
    assert listed.exit_code == 0, listed.output
    assert "Registered models" in listed.stdout and "reviews" in listed.stdout

    promoted = models_cli("promote", "reviews:1", "--alias", "champion", "--reason", "first good one")
    assert promoted.exit_code == 0, promoted.output
    assert "reviews@champion -> version 1" in promoted.stdout
    moved = models_cli("promote", "reviews:2")
    assert "reviews@champion -> version 2 (was version 1)" in moved.stdout
    again = models_cli("promote", "reviews:2")
    assert again.exit_code == 0 and "already points at version 2" in again.stdout

    versions = models_cli("list", "reviews")
    assert versions.exit_code == 0, versions.output
    rows = {line.split("│")[1].strip(): line for line in versions.stdout.splitlines() if line.count("│") > 5}
    assert "full_fine_tuning" in rows["1"] and "0.9000" in rows["1"] and "0.8900" in rows["1"]
    assert "lora" in rows["2"] and "0.9200" in rows["2"] and "champion" in rows["2"]

    shown = models_cli("show", "reviews@champion")
    assert shown.exit_code == 0, shown.output
    for text in (
        "reviews:2",
        "aliases: champion",
        "lora",
        "sentence-transformers/all-MiniLM-L6-v2",
        "reviews-3f2a",
        "accuracy 0.9200",
        "5.00%",
        "0123abc",
        "torch 2.13.0",
        "backbone/model.safetensors",
        "3 files",
    ):
        assert text in shown.stdout, text

    decisions = registry.list_decisions(models, "reviews")
    assert [(d["candidate_version"], d["previous_version"], d["reason"]) for d in decisions] == [
        (1, None, "first good one"),
        (2, 1, "manual promotion"),
    ]

    pulled = models_cli("pull", "reviews@champion", "--output", str(tmp_path / "pulled"))
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.strip() == str(tmp_path / "pulled")
    assert (tmp_path / "pulled" / "backbone/model.safetensors").read_bytes() == FILES["backbone/model.safetensors"]
    cached = models_cli("pull", "reviews:1")
    assert Path(cached.stdout.strip()).parent == registry.pull_cache_dir()


def test_rollback_and_delete_need_force(models: S3Settings) -> None:
    models_cli("promote", "reviews:2")
    rollback = models_cli("promote", "reviews:1")
    assert rollback.exit_code == 2 and "pass --force to roll back" in rollback.stderr
    assert models_cli("promote", "reviews:1", "--force").exit_code == 0

    refused = models_cli("delete", "reviews:1")
    assert refused.exit_code == 3
    assert "alias 'champion' points at this version" in refused.stderr and "--force" in refused.stderr
    deleted = models_cli("delete", "reviews:2")
    assert deleted.exit_code == 0 and "deleted reviews:2" in deleted.stdout
    assert [v.version for v in registry.list_versions(models, "reviews")] == [1]
    assert models_cli("delete", "reviews").exit_code == 2  # a version must be named

    forced = models_cli("delete", "reviews:1", "--force")
    assert forced.exit_code == 0 and "removed alias champion" in forced.stdout
    empty = models_cli("list", "reviews")
    assert empty.exit_code == 0 and "no committed version" in empty.stdout


def test_gc_reports_what_it_removes(models: S3Settings) -> None:
    (tmp_blob,) = [f for f in registry.get_manifest(models, "reviews", 1)["files"] if f["path"].endswith("safetensors")]
    registry.delete_version(models, "reviews", 1)
    registry.delete_version(models, "reviews", 2)
    time.sleep(1.1)  # S3 times have one-second resolution

    refused = models_cli("gc", "reviews", "--grace-hours", "0")
    assert refused.exit_code == 2 and "below the safe minimum" in refused.stderr and "--force" in refused.stderr
    dry = models_cli("gc", "reviews", "--grace-hours", "0", "--dry-run", "--force")
    assert dry.exit_code == 0, dry.output
    assert "would remove: 0 abandoned registration(s), 3 unused file(s)" in dry.stdout
    assert tmp_blob["sha256"] in dry.stdout
    done = models_cli("gc", "--grace-hours", "0", "--force")
    assert done.exit_code == 0 and "removed: 0 abandoned registration(s), 3 unused file(s)" in done.stdout
    assert "0 unused file(s)" in models_cli("gc", "--grace-hours", "0", "--force").stdout


def test_errors_are_one_message_with_an_exit_code(models: S3Settings) -> None:
    unknown = models_cli("show", "nobody")
    assert unknown.exit_code == 3 and "has no committed version" in unknown.stderr and "Traceback" not in unknown.output
    missing = models_cli("show", "reviews:9")
    assert missing.exit_code == 3 and "committed versions: 1, 2" in missing.stderr
    no_alias = models_cli("pull", "reviews@staging")
    assert no_alias.exit_code == 3 and "has no alias 'staging'" in no_alias.stderr
    malformed = models_cli("show", "reviews:latest")
    assert malformed.exit_code == 2 and "not a positive number" in malformed.stderr


def test_models_command_runs_as_a_module(models: S3Settings) -> None:
    """`python -m adaptflow.flows.cli models ...`: the app root registers the subcommands, which never import it back."""
    result = subprocess.run(
        [sys.executable, "-m", "adaptflow.flows.cli", "models", "list", "reviews"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stderr
    assert "Versions of reviews" in result.stdout
