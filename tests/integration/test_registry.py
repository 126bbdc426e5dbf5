"""The S3 model registry and the S3 helpers against a real SeaweedFS server."""

from __future__ import annotations

import hashlib
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from tasks import registry
from tasks.errors import StorageError
from tasks.s3 import S3Settings, check_access, download_file, download_prefix, iter_objects, make_client

MODEL_FILES = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    for relative, content in MODEL_FILES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    (folder / "manifest.json").write_text('{"stale": true}')  # the registry writes its own
    return folder


def _all_keys(settings: S3Settings) -> list[str]:
    return [obj["Key"] for obj in iter_objects(settings, settings.bucket, settings.key("models") + "/")]


class FailingClient:
    """A real client that fails like a dropped connection on a chosen call."""

    def __init__(self, client: Any, fail_on: str, after: int):
        self._client, self._fail_on, self._left = client, fail_on, after

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name != self._fail_on:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "put_object" and not kwargs["Key"].endswith(registry.MANIFEST):
                return attribute(*args, **kwargs)  # only the manifest write fails
            if self._left == 0:
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
            self._left -= 1
            return attribute(*args, **kwargs)

        return call


def test_register_list_and_pull(s3_settings: S3Settings, model_dir: Path, tmp_path: Path) -> None:
    registered = registry.register_version(s3_settings, "sentiment", model_dir, {"metrics": {"accuracy": 0.9}})

    assert registered.version == 1
    assert registered.uri == f"s3://adaptflow/{s3_settings.prefix}/models/sentiment/versions/000001/"
    assert {entry["path"] for entry in registered.files} == set(MODEL_FILES)
    [listed] = registry.list_versions(s3_settings, "sentiment")
    assert (listed.version, listed.manifest_uri) == (1, registered.manifest_uri)

    manifest = registry.get_manifest(s3_settings, "sentiment", 1)
    assert manifest["metrics"] == {"accuracy": 0.9}
    assert (manifest["name"], manifest["version"]) == ("sentiment", 1)
    assert manifest["registered_at"]
    expected = {
        path: {"path": path, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
        for path, content in MODEL_FILES.items()
    }
    assert {entry["path"]: entry for entry in manifest["files"]} == expected
    assert "stale" not in manifest

    second = registry.register_version(s3_settings, "sentiment", model_dir, {})
    assert second.version == 2
    assert registry.latest_version(s3_settings, "sentiment").version == 2
    assert registry.latest_version(s3_settings, "never-registered") is None

    pulled = registry.pull_version(s3_settings, "sentiment", 1, tmp_path / "pulled")
    for relative, content in MODEL_FILES.items():
        assert (pulled / relative).read_bytes() == content
    assert (pulled / "manifest.json").is_file()
    assert not (pulled / registry.CLAIM).exists()

    folder = download_prefix(s3_settings, registered.uri, tmp_path / "raw")
    assert (folder / "tokenizer" / "vocab.txt").read_bytes() == MODEL_FILES["tokenizer/vocab.txt"]
    single = download_file(s3_settings, registered.manifest_uri, tmp_path / "single")
    assert single == tmp_path / "single"


@pytest.mark.parametrize(("fail_on", "after"), [("upload_file", 1), ("put_object", 0)])
def test_failed_registration_leaves_nothing(
    s3_settings: S3Settings, model_dir: Path, fail_on: str, after: int
) -> None:
    """A connection lost mid-upload, or at the manifest write: no version listed, no object left."""
    client = FailingClient(make_client(s3_settings), fail_on, after)
    with pytest.raises(StorageError, match="unreachable"):
        registry.register_version(s3_settings, "broken", model_dir, {}, client=client)

    assert registry.list_versions(s3_settings, "broken") == []
    assert _all_keys(s3_settings) == []
    retried = registry.register_version(s3_settings, "broken", model_dir, {})
    assert [info.version for info in registry.list_versions(s3_settings, "broken")] == [retried.version]


def test_concurrent_registrations_get_distinct_complete_versions(s3_settings: S3Settings, model_dir: Path) -> None:
    def register(worker: int) -> int:
        return registry.register_version(s3_settings, "racer", model_dir, {"worker": worker}).version

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(register, range(8)))

    assert sorted(versions) == list(range(1, 9))
    listed = registry.list_versions(s3_settings, "racer")
    assert [info.version for info in listed] == list(range(1, 9))
    workers = set()
    for info in listed:
        manifest = registry.get_manifest(s3_settings, "racer", info.version)
        assert {entry["path"] for entry in manifest["files"]} == set(MODEL_FILES)
        workers.add(manifest["worker"])
    assert workers == set(range(8))


def test_refusals_happen_before_any_write(s3_settings: S3Settings, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a valid registry name"):
        registry.register_version(s3_settings, "../escape", model_dir, {})
    with pytest.raises(StorageError, match="secret"):
        registry.register_version(s3_settings, "leaky", model_dir, {"env": {"key": s3_settings.secret_access_key}})
    with pytest.raises(StorageError, match="no files"):
        (tmp_path / "empty").mkdir()
        registry.register_version(s3_settings, "empty", tmp_path / "empty", {})
    with pytest.raises(ValueError, match="set by the registry"):
        registry.register_version(s3_settings, "clash", model_dir, {"version": 99})
    assert _all_keys(s3_settings) == []


def test_missing_version_and_object_are_named(s3_settings: S3Settings, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="has no registered version 3"):
        registry.get_manifest(s3_settings, "ghost", 3)
    with pytest.raises(StorageError, match="no such object") as caught:
        download_file(s3_settings, s3_settings.uri(s3_settings.key("nothing.bin")), tmp_path / "nothing.bin")
    assert "nothing.bin" in str(caught.value)
    assert not (tmp_path / "nothing.bin").exists()


def test_check_access_passes_and_cleans_up(s3_settings: S3Settings) -> None:
    check_access(s3_settings)
    assert list(iter_objects(s3_settings, s3_settings.bucket, s3_settings.prefix + "/")) == []


def test_check_access_unreachable_endpoint(s3_settings: S3Settings) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = replace(s3_settings, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError) as caught:
        check_access(settings, make_client(settings, max_attempts=1))
    message = str(caught.value)
    assert "unreachable" in message and f"127.0.0.1:{port}" in message and "adaptflow stack up" in message


def test_check_access_wrong_keys(s3_settings: S3Settings) -> None:
    settings = replace(s3_settings, secret_access_key="wrong-secret-wrong-secret")
    with pytest.raises(StorageError) as caught:
        check_access(settings, make_client(settings, max_attempts=1))
    message = str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY" in message
    assert s3_settings.secret_access_key not in message and "wrong-secret" not in message


def test_check_access_missing_bucket(s3_settings: S3Settings) -> None:
    settings = replace(s3_settings, bucket="no-such-bucket-here")
    with pytest.raises(StorageError) as caught:
        check_access(settings)
    message = str(caught.value)
    assert "'no-such-bucket-here' does not exist" in message and "ADAPTFLOW_S3_BUCKET" in message


def test_settings_never_show_the_secret(s3_settings: S3Settings) -> None:
    secret = s3_settings.secret_access_key
    assert secret
    assert secret not in repr(s3_settings)
    assert secret not in str(s3_settings)
    assert secret not in str(s3_settings.redacted())
    assert s3_settings.redacted()["secret_access_key"] == "***"


def test_resolve_reads_the_environment(s3_env: S3Settings) -> None:
    resolved = S3Settings.resolve()
    assert replace(resolved, source="local stack") == s3_env
    assert resolved.source == "environment"
    check_access(resolved)
