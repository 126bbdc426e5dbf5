"""Where S3 settings come from (tasks/storage/settings.py), without an S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adaptflow.tasks.data.sources import download, needs_s3
from adaptflow.tasks.errors import DataError, StorageError
from adaptflow.tasks.storage.local_stack import StackFiles, StackInfo
from adaptflow.tasks.storage.settings import ENDPOINT_VARS, S3Settings, is_s3_uri, resolve_settings

UNSET = (*ENDPOINT_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "ADAPTFLOW_S3_BLOCK")


@pytest.fixture
def no_s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("ADAPTFLOW_HOME", str(home))
    return home


def _stack_info(files: StackFiles, pid: int) -> StackInfo:
    return StackInfo(pid, "http://127.0.0.1:1", {"s3": 1}, str(files.data_dir), str(files.log_path), "adaptflow", "now")


def test_environment_wins_and_the_secret_is_never_printed(no_s3_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTFLOW_S3_ENDPOINT_URL", "http://example.invalid:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("ADAPTFLOW_S3_PREFIX", "/team/")
    settings = S3Settings.resolve()
    assert (settings.endpoint_url, settings.bucket, settings.prefix, settings.source) == (
        "http://example.invalid:9000",
        "adaptflow",
        "team",
        "environment",
    )
    assert "very-secret" not in repr(settings) and "very-secret" not in json.dumps(settings.redacted())


def test_one_key_without_the_other_is_refused(no_s3_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY is not set"):
        resolve_settings()


def test_a_stopped_stack_is_not_used(no_s3_env: Path) -> None:
    """A state.json left behind by a server that is gone does not count as a running stack."""
    files = StackFiles(no_s3_env)
    files.write_credentials({"access_key_id": "AF1", "secret_access_key": "s"})
    files.write_state(_stack_info(files, pid=os.getpid()))  # alive, but not our server
    assert files.read_state() is not None and files.running() is None
    with pytest.raises(StorageError, match="adaptflow stack up"):
        S3Settings.resolve()


def test_stack_files_are_private_and_round_trip(tmp_path: Path) -> None:
    files = StackFiles(tmp_path / "home")
    info = _stack_info(files, pid=1)
    files.write_state(info)
    files.write_credentials({"access_key_id": "AF1", "secret_access_key": "s"})
    assert files.read_state() == info
    assert files.load_credentials() == {"access_key_id": "AF1", "secret_access_key": "s"}
    assert {p.stat().st_mode & 0o777 for p in (files.state_path, files.credentials_path)} == {0o600}
    assert files.dir.stat().st_mode & 0o777 == 0o700


def test_s3_inputs_need_a_fetch_and_say_so_once(tmp_path: Path) -> None:
    assert is_s3_uri("s3://b/k") and not is_s3_uri("data/s3.csv") and not is_s3_uri(None)
    assert needs_s3("local.csv", "s3://b/dev.csv") and not needs_s3("local.csv", None)
    with pytest.raises(DataError, match="is on S3 but no S3 storage is configured"):
        download("s3://b/train.csv", tmp_path, None)
