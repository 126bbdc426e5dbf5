"""The S3 model registry and the S3 helpers against a real SeaweedFS server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from adaptflow.infra.stack import LocalS3Stack
from adaptflow.tasks.errors import ConfigError, StorageError
from adaptflow.tasks.registry import store as registry
from adaptflow.tasks.storage.s3 import S3Settings, check_access, download_file, download_prefix, iter_objects, make_client

MODEL_FILES = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
}
MiB = 1 << 20


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    write_files(folder, MODEL_FILES)
    (folder / "manifest.json").write_text('{"stale": true}')  # the registry writes its own
    return folder


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return folder


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _keys(settings: S3Settings, prefix: str) -> list[str]:
    return sorted(obj["Key"] for obj in iter_objects(settings, settings.bucket, prefix))


def _all_keys(settings: S3Settings) -> list[str]:
    return _keys(settings, settings.key("models") + "/")


def _blob_keys(settings: S3Settings, name: str) -> list[str]:
    return _keys(settings, registry.blobs_key(settings, name))


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


class CountingClient:
    """A real client that counts the calls made through it."""

    def __init__(self, client: Any):
        self._client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self._client, name)


class PausingClient:
    """A real client whose large-file upload stops once, mid-transfer, until the test lets it go on."""

    def __init__(self, client: Any, after_bytes: int):
        self._client, self._after = client, after_bytes
        self.paused, self.resume = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_file(self, **kwargs: Any) -> Any:
        sent = 0

        def progress(count: int) -> None:
            nonlocal sent
            with self._lock:
                sent += count
                pause = sent >= self._after and not self.paused.is_set()
                if pause:
                    self.paused.set()
            if pause:
                self.resume.wait(120)

        return self._client.upload_file(**kwargs, Callback=progress)


# ---- registering ----------------------------------------------------------------------
def test_register_list_and_pull(s3_settings: S3Settings, model_dir: Path, tmp_path: Path) -> None:
    registered = registry.register_version(s3_settings, "sentiment", model_dir, {"metrics": {"accuracy": 0.9}})

    assert registered.version == 1
    assert registered.uri == f"s3://adaptflow/{s3_settings.prefix}/models/sentiment/versions/000001/"
    assert {entry["path"] for entry in registered.files} == set(MODEL_FILES)
    assert registered.uploaded_bytes == registered.total_bytes == sum(map(len, MODEL_FILES.values()))
    [listed] = registry.list_versions(s3_settings, "sentiment")
    assert (listed.version, listed.manifest_uri) == (1, registered.manifest_uri)
    assert registry.list_models(s3_settings) == ["sentiment"]

    manifest = registry.get_manifest(s3_settings, "sentiment", 1)
    assert manifest["metrics"] == {"accuracy": 0.9}
    assert (manifest["name"], manifest["version"], manifest["layout"]) == ("sentiment", 1, registry.LAYOUT)
    assert manifest["registered_at"]
    expected = {path: {"path": path, "size": len(content), "sha256": sha256(content)} for path, content in MODEL_FILES.items()}
    assert {entry["path"]: entry for entry in manifest["files"]} == expected
    assert "stale" not in manifest

    # the version folder holds the claim and the manifest; file bodies are blobs named by their sha256
    folder = registry.version_key(s3_settings, "sentiment", 1)
    assert _keys(s3_settings, folder) == [folder + registry.CLAIM, folder + registry.MANIFEST]
    assert _blob_keys(s3_settings, "sentiment") == sorted(
        registry.blob_key(s3_settings, "sentiment", sha256(content)) for content in MODEL_FILES.values()
    )
    vocab_blob = s3_settings.uri(registry.blob_key(s3_settings, "sentiment", sha256(MODEL_FILES["tokenizer/vocab.txt"])))
    assert download_file(s3_settings, vocab_blob, tmp_path / "vocab").read_bytes() == MODEL_FILES["tokenizer/vocab.txt"]

    second = registry.register_version(s3_settings, "sentiment", model_dir, {})
    assert second.version == 2
    assert registry.latest_version(s3_settings, "sentiment").version == 2
    assert registry.latest_version(s3_settings, "never-registered") is None

    pulled = registry.pull_version(s3_settings, "sentiment", 1, tmp_path / "pulled")
    assert pulled == tmp_path / "pulled"
    for relative, content in MODEL_FILES.items():
        assert (pulled / relative).read_bytes() == content
    assert json.loads((pulled / "manifest.json").read_text()) == manifest
    assert not (pulled / registry.CLAIM).exists()

    raw = download_prefix(s3_settings, registered.uri, tmp_path / "raw")
    assert json.loads((raw / "manifest.json").read_text()) == manifest
    single = download_file(s3_settings, registered.manifest_uri, tmp_path / "single")
    assert single == tmp_path / "single"


def test_unchanged_files_are_uploaded_once(s3_settings: S3Settings, model_dir: Path, tmp_path: Path) -> None:
    first = registry.register_version(s3_settings, "dedup", model_dir, {})
    second = registry.register_version(s3_settings, "dedup", model_dir, {})
    assert first.uploaded_bytes == first.total_bytes > 0
    assert (second.uploaded_bytes, second.total_bytes) == (0, first.total_bytes)

    changed = os.urandom(1_000)
    (model_dir / "model.safetensors").write_bytes(changed)
    third = registry.register_version(s3_settings, "dedup", model_dir, {})
    assert third.uploaded_bytes == len(changed)
    assert len(_blob_keys(s3_settings, "dedup")) == len(MODEL_FILES) + 1

    assert (registry.pull_version(s3_settings, "dedup", 2, tmp_path / "v2") / "model.safetensors").read_bytes() == MODEL_FILES[
        "model.safetensors"
    ]
    assert (registry.pull_version(s3_settings, "dedup", 3, tmp_path / "v3") / "model.safetensors").read_bytes() == changed


@pytest.mark.parametrize(("fail_on", "after"), [("head_object", 2), ("put_object", 0)])
def test_failed_registration_lists_nothing(s3_settings: S3Settings, model_dir: Path, fail_on: str, after: int) -> None:
    """A connection lost while uploading the files, or at the manifest write: no version, no claim left."""
    client = FailingClient(make_client(s3_settings), fail_on, after)
    with pytest.raises(StorageError, match="unreachable"):
        registry.register_version(s3_settings, "broken", model_dir, {}, client=client)

    assert registry.list_versions(s3_settings, "broken") == []
    assert _keys(s3_settings, registry.versions_key(s3_settings, "broken")) == []
    retried = registry.register_version(s3_settings, "broken", model_dir, {})
    assert [info.version for info in registry.list_versions(s3_settings, "broken")] == [retried.version]


def test_concurrent_registrations_get_distinct_complete_versions(s3_settings: S3Settings, model_dir: Path) -> None:
    def register(worker: int) -> registry.RegisteredVersion:
        return registry.register_version(s3_settings, "racer", model_dir, {"worker": worker})

    with ThreadPoolExecutor(max_workers=8) as pool:
        registered = list(pool.map(register, range(8)))

    assert sorted(r.version for r in registered) == list(range(1, 9))
    listed = registry.list_versions(s3_settings, "racer")
    assert [info.version for info in listed] == list(range(1, 9))
    workers = set()
    for info in listed:
        manifest = registry.get_manifest(s3_settings, "racer", info.version)
        assert {entry["path"] for entry in manifest["files"]} == set(MODEL_FILES)
        workers.add(manifest["worker"])
    assert workers == set(range(8))
    # each file body stored once, and counted once however the uploads raced
    assert len(_blob_keys(s3_settings, "racer")) == len(MODEL_FILES)
    assert sum(r.uploaded_bytes for r in registered) == registered[0].total_bytes


def test_server_stopped_mid_upload_then_retry(weed_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 server dies during a multipart upload: nothing listed; after a restart the retry commits."""
    monkeypatch.setattr(registry, "CLAIM_LEASE", registry.CLAIM_LEASE)
    stack = LocalS3Stack(tmp_path / "home")
    stack.up(timeout=90)
    try:
        settings = stack.settings("crash")
        big = os.urandom(30 * MiB)
        folder = write_files(tmp_path / "model", {**MODEL_FILES, "backbone/model.safetensors": big})
        client = PausingClient(make_client(settings, connect_timeout=2, max_attempts=1), after_bytes=8 * MiB)
        outcome: dict[str, Any] = {}

        def register() -> None:
            try:
                outcome["version"] = registry.register_version(settings, "crashy", folder, {}, client=client)
            except StorageError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=register)
        worker.start()
        assert client.paused.wait(60), "the large upload never started"
        stack.down()
        client.resume.set()
        worker.join(180)
        assert not worker.is_alive()
        # unreachable, or an internal error from a server shutting down: either way one StorageError naming the file
        assert isinstance(outcome.get("error"), StorageError), outcome
        assert "backbone/model.safetensors" in str(outcome["error"])

        stack.up(timeout=90)
        restarted = stack.settings("crash")
        assert restarted.endpoint_url == settings.endpoint_url  # the stack reuses its last ports
        assert registry.list_versions(restarted, "crashy") == []

        retried = registry.register_version(restarted, "crashy", folder, {})
        assert [info.version for info in registry.list_versions(restarted, "crashy")] == [retried.version]
        pulled = registry.pull_version(restarted, "crashy", retried.version, tmp_path / "pulled")
        assert (pulled / "backbone/model.safetensors").read_bytes() == big

        # the claim the dead server kept and the unfinished multipart upload are cleaned up; nothing needed goes
        registry.CLAIM_LEASE = timedelta(seconds=1)  # restored by the monkeypatch: the dead registration's claim has expired
        time.sleep(1.1)
        report = registry.gc(restarted, "crashy", grace_seconds=0, force=True)
        assert report.removed_versions == [f"crashy:{v}" for v in range(1, retried.version)]
        assert report.removed_blobs == [] and report.aborted_uploads == 1
        registry.pull_version(restarted, "crashy", retried.version, tmp_path / "after-gc")
    finally:
        stack.down()


def test_refusals_happen_before_any_write(s3_settings: S3Settings, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid registry name"):
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


# ---- aliases, references, decisions ---------------------------------------------------
def test_alias_compare_and_swap(s3_settings: S3Settings, model_dir: Path) -> None:
    for _ in range(3):
        registry.register_version(s3_settings, "cas", model_dir, {})
    created = registry.set_alias(s3_settings, "cas", "champion", 1, expected_etag=None, reason="first")
    assert registry.get_alias(s3_settings, "cas", "champion") == created
    assert (created.version, created.previous, created.reason) == (1, None, "first")
    with pytest.raises(registry.AliasConflict) as exists:
        registry.set_alias(s3_settings, "cas", "champion", 2, expected_etag=None)
    assert exists.value.current == created

    def move(version: int) -> registry.AliasInfo | registry.AliasConflict:
        try:
            return registry.set_alias(s3_settings, "cas", "champion", version, expected_etag=created.etag)
        except registry.AliasConflict as exc:
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(move, [2, 3]))
    [winner] = [o for o in outcomes if isinstance(o, registry.AliasInfo)]
    [loser] = [o for o in outcomes if isinstance(o, registry.AliasConflict)]
    assert loser.current == winner and "read it again and retry" in str(loser)
    assert registry.get_alias(s3_settings, "cas", "champion") == winner
    assert winner.previous == 1

    with pytest.raises(registry.AliasConflict):
        registry.delete_alias(s3_settings, "cas", "champion", expected_etag=created.etag)
    registry.set_alias(s3_settings, "cas", "staging", 1, expected_etag=None)
    assert [a.alias for a in registry.list_aliases(s3_settings, "cas")] == ["champion", "staging"]
    registry.delete_alias(s3_settings, "cas", "staging")
    assert registry.get_alias(s3_settings, "cas", "staging") is None


def test_alias_needs_a_committed_version(s3_settings: S3Settings, model_dir: Path) -> None:
    registry.register_version(s3_settings, "pending", model_dir, {})
    claimed = registry.claim_next_version(s3_settings, "pending", make_client(s3_settings))  # no manifest yet
    for version in (claimed, 99):
        with pytest.raises(StorageError, match=f"no registered version {version}"):
            registry.set_alias(s3_settings, "pending", "champion", version, expected_etag=None)
    assert registry.get_alias(s3_settings, "pending", "champion") is None
    with pytest.raises(ConfigError, match="not a valid registry name"):
        registry.set_alias(s3_settings, "pending", "../up", 1, expected_etag=None)


def test_resolve_ref(s3_settings: S3Settings, model_dir: Path) -> None:
    for _ in range(2):
        registry.register_version(s3_settings, "refs", model_dir, {})
    registry.set_alias(s3_settings, "refs", "champion", 1, expected_etag=None)

    assert registry.resolve_ref(s3_settings, "refs") == ("refs", 2)
    assert registry.resolve_ref(s3_settings, "refs:1") == ("refs", 1)
    assert registry.resolve_ref(s3_settings, "refs@champion") == ("refs", 1)

    with pytest.raises(StorageError, match="no registered version 7") as missing:
        registry.resolve_ref(s3_settings, "refs:7")
    assert "committed versions: 1, 2" in str(missing.value)
    with pytest.raises(StorageError, match="has no alias 'staging'") as no_alias:
        registry.resolve_ref(s3_settings, "refs@staging")
    assert "champion" in str(no_alias.value)
    with pytest.raises(StorageError, match="has no committed version"):
        registry.resolve_ref(s3_settings, "nobody")
    for bad in ("refs:", "refs:x", "refs:0", "refs@", "a:1:2", "a@b:1"):
        with pytest.raises(ConfigError, match="model reference"):
            registry.resolve_ref(s3_settings, bad)
    for bad in ("../refs", "Refs", "refs@../x"):
        with pytest.raises(ConfigError, match="not a valid registry name"):
            registry.resolve_ref(s3_settings, bad)


def test_decisions_are_appended_never_lost(s3_settings: S3Settings) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: registry.append_decision(s3_settings, "log", {"kind": "test", "i": i}), range(8)))
    decisions = registry.list_decisions(s3_settings, "log")
    assert sorted(d["i"] for d in decisions) == list(range(8))
    assert all(d["recorded_at"] and d["kind"] == "test" for d in decisions)


# ---- delete and gc --------------------------------------------------------------------
def test_delete_version_refused_while_aliased(s3_settings: S3Settings, model_dir: Path) -> None:
    for _ in range(2):
        registry.register_version(s3_settings, "doomed", model_dir, {})
    registry.set_alias(s3_settings, "doomed", "champion", 2, expected_etag=None)

    with pytest.raises(StorageError, match="alias 'champion' points at this version"):
        registry.delete_version(s3_settings, "doomed", 2)
    assert [v.version for v in registry.list_versions(s3_settings, "doomed")] == [1, 2]

    assert registry.delete_version(s3_settings, "doomed", 1) == []
    assert registry.delete_version(s3_settings, "doomed", 2, force=True) == ["champion"]
    assert registry.list_versions(s3_settings, "doomed") == []
    assert registry.get_alias(s3_settings, "doomed", "champion") is None
    with pytest.raises(StorageError, match="version 2 of model 'doomed' was deleted"):
        registry.resolve_ref(s3_settings, "doomed:2")
    # numbers are never reused, and the blobs stay until gc
    assert registry.register_version(s3_settings, "doomed", model_dir, {}).version == 3
    assert len(_blob_keys(s3_settings, "doomed")) == len(MODEL_FILES)


def test_gc_removes_abandoned_registrations_after_the_grace_period(
    s3_settings: S3Settings, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "CLAIM_LEASE", timedelta(seconds=5))  # claims that nothing renews: both leases run out
    registry.register_version(s3_settings, "claims", model_dir, {})
    client = make_client(s3_settings)
    abandoned = registry.claim_next_version(s3_settings, "claims", client)  # a registration that died
    time.sleep(8)
    fresh = registry.claim_next_version(s3_settings, "claims", client)  # one still uploading

    # grace 5 s: the abandoned claim is 8+ s old, the fresh one stays younger through both gc passes
    # even on a loaded machine (with 2 s, a slow dry run aged it past the grace period)
    dry = registry.gc(s3_settings, "claims", grace_seconds=5, dry_run=True, force=True)
    assert dry.removed_versions == [f"claims:{abandoned}"]
    assert registry.version_key(s3_settings, "claims", abandoned) + registry.CLAIM in _all_keys(s3_settings)

    report = registry.gc(s3_settings, "claims", grace_seconds=5, force=True)
    assert report.removed_versions == [f"claims:{abandoned}"]
    assert report.skipped == [f"claims: registration of version {fresh} in progress; blobs not swept"]
    keys = _all_keys(s3_settings)
    assert registry.version_key(s3_settings, "claims", abandoned) + registry.CLAIM not in keys
    assert registry.version_key(s3_settings, "claims", fresh) + registry.CLAIM in keys
    assert registry.model_key(s3_settings, "claims") + registry.GC_LOCK not in keys
    registry.pull_version(s3_settings, "claims", 1, tmp_path / "pulled")


def test_gc_removes_unreferenced_blobs_after_the_grace_period(s3_settings: S3Settings, model_dir: Path, tmp_path: Path) -> None:
    registry.register_version(s3_settings, "blobs", model_dir, {})
    only_in_v2 = os.urandom(2_000)
    (model_dir / "model.safetensors").write_bytes(only_in_v2)
    registry.register_version(s3_settings, "blobs", model_dir, {})
    registry.delete_version(s3_settings, "blobs", 2)
    orphan = registry.blob_key(s3_settings, "blobs", sha256(only_in_v2))
    time.sleep(1.1)  # S3 times have one-second resolution

    assert registry.gc(s3_settings, "blobs", grace_seconds=3600).removed_blobs == []  # too young
    dry = registry.gc(s3_settings, "blobs", grace_seconds=0, dry_run=True, force=True)
    assert (dry.removed_blobs, dry.freed_bytes) == ([s3_settings.uri(orphan)], len(only_in_v2))
    assert orphan in _blob_keys(s3_settings, "blobs")

    report = registry.gc(s3_settings, "blobs", grace_seconds=0, force=True)
    assert (report.removed_blobs, report.freed_bytes, report.skipped) == ([s3_settings.uri(orphan)], len(only_in_v2), [])
    assert len(_blob_keys(s3_settings, "blobs")) == len(MODEL_FILES)
    pulled = registry.pull_version(s3_settings, "blobs", 1, tmp_path / "pulled")
    assert (pulled / "model.safetensors").read_bytes() == MODEL_FILES["model.safetensors"]


def test_registration_waits_for_a_running_gc(s3_settings: S3Settings, model_dir: Path, s3_client: Any) -> None:
    lock = registry.model_key(s3_settings, "locked") + registry.GC_LOCK
    s3_client.put_object(Bucket=s3_settings.bucket, Key=lock, Body=b"{}")
    with pytest.raises(StorageError, match="another gc of model 'locked' is running"):
        registry.gc(s3_settings, "locked")

    threading.Timer(2.0, lambda: s3_client.delete_object(Bucket=s3_settings.bucket, Key=lock)).start()
    started = time.monotonic()
    registry.register_version(s3_settings, "locked", model_dir, {})
    assert time.monotonic() - started >= 2.0


# ---- pull ---------------------------------------------------------------------------
def test_pull_is_cached_by_manifest_digest(s3_settings: S3Settings, model_dir: Path, tmp_path: Path) -> None:
    registry.register_version(s3_settings, "cached", model_dir, {})
    client = CountingClient(make_client(s3_settings))

    cached = registry.pull_version(s3_settings, "cached", 1, client=client)
    digest = sha256(registry._manifest_bytes(s3_settings, "cached", 1, make_client(s3_settings)))
    assert cached == registry.pull_cache_dir() / digest
    assert client.calls["download_file"] == len(MODEL_FILES)
    assert (cached / "model.safetensors").stat().st_mode & 0o222 == 0  # shared: read-only

    copy = registry.pull_version(s3_settings, "cached", 1, tmp_path / "copy", client=client)
    assert client.calls["download_file"] == len(MODEL_FILES)  # nothing downloaded the second time
    for relative, content in MODEL_FILES.items():
        assert (copy / relative).read_bytes() == content
    assert (copy / "model.safetensors").stat().st_mode & 0o200  # the caller's own, writable copy


def test_damaged_blob_fails_the_pull_and_is_replaced_by_a_new_registration(
    s3_settings: S3Settings, model_dir: Path, s3_client: Any, tmp_path: Path
) -> None:
    registry.register_version(s3_settings, "damaged", model_dir, {})
    blob = registry.blob_key(s3_settings, "damaged", sha256(MODEL_FILES["model.safetensors"]))
    s3_client.put_object(Bucket=s3_settings.bucket, Key=blob, Body=os.urandom(len(MODEL_FILES["model.safetensors"])))

    with pytest.raises(StorageError, match="do not match the manifest's sha256") as caught:
        registry.pull_version(s3_settings, "damaged", 1, tmp_path / "pulled")
    assert "'model.safetensors' of damaged:1" in str(caught.value)
    digest = sha256(registry._manifest_bytes(s3_settings, "damaged", 1, s3_client))
    assert [p.name for p in registry.pull_cache_dir().glob(f"*{digest}*")] == []  # no folder, no partial download
    assert not (tmp_path / "pulled").exists()

    healed = registry.register_version(s3_settings, "damaged", model_dir, {})
    assert healed.uploaded_bytes == len(MODEL_FILES["model.safetensors"])
    pulled = registry.pull_version(s3_settings, "damaged", 1, tmp_path / "pulled")
    assert (pulled / "model.safetensors").read_bytes() == MODEL_FILES["model.safetensors"]


def test_versions_from_before_blobs_still_pull(s3_settings: S3Settings, s3_client: Any, tmp_path: Path) -> None:
    """Layout 1: files inside the version folder, no "layout" key in the manifest."""
    folder = registry.version_key(s3_settings, "old", 1)
    files = []
    for relative, content in MODEL_FILES.items():
        s3_client.put_object(Bucket=s3_settings.bucket, Key=folder + relative, Body=content)
        files.append({"path": relative, "size": len(content), "sha256": sha256(content)})
    s3_client.put_object(Bucket=s3_settings.bucket, Key=folder + registry.CLAIM, Body=b"{}")
    manifest = {"name": "old", "version": 1, "registered_at": "2026-01-01T00:00:00+00:00", "files": files}
    s3_client.put_object(Bucket=s3_settings.bucket, Key=folder + registry.MANIFEST, Body=json.dumps(manifest).encode())

    pulled = registry.pull_version(s3_settings, "old", 1, tmp_path / "pulled")
    assert (pulled / "tokenizer/vocab.txt").read_bytes() == MODEL_FILES["tokenizer/vocab.txt"]
    registry.delete_version(s3_settings, "old", 1)
    assert _keys(s3_settings, folder) == [folder + registry.TOMBSTONE]


def test_pulled_versions_load_with_transformers_and_peft(s3_settings: S3Settings, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    from adaptflow.tasks.modeling import load_backbone
    from adaptflow.tasks.registry.hf_folder import load_hf_classifier
    from bench.registry_sizes import build_version_folder

    for strategy in ("full_fine_tuning", "lora"):
        folder = build_version_folder(tiny_bert_dir, strategy, tmp_path / strategy)
        registry.register_version(s3_settings, f"tiny-{strategy}".replace("_", "-"), folder, {"strategy": strategy})

    full = registry.pull_version(s3_settings, "tiny-full-fine-tuning", 1)
    config = json.loads((full / "config.json").read_text())
    assert config["model_type"] == "adaptflow_pooled" and config["backbone"]["hidden_size"] == 32  # mean pooling: the remote-code route
    assert load_hf_classifier(full)[2]["weights"] == "full"

    lora = registry.pull_version(s3_settings, "tiny-lora", 1, tmp_path / "lora-pulled")
    assert not (lora / "model.safetensors").exists()
    adapted = PeftModel.from_pretrained(load_backbone(tiny_bert_dir), lora)  # the encoder's adapter, at the root
    assert adapted.peft_config
    assert load_hf_classifier(lora, base_model_dir=tiny_bert_dir)[2]["weights"] == "adapter"


def test_lora_version_uploads_under_5_percent_of_full_fine_tuning(s3_settings: S3Settings, minilm_dir: Path, tmp_path: Path) -> None:
    from bench.registry_sizes import lora_ratio, measure

    rows = measure(s3_settings, minilm_dir, tmp_path)
    assert lora_ratio(rows) < 0.05
    by_label = {row.label: row.version for row in rows}
    assert by_label["full_fine_tuning"].uploaded_bytes > 80 * MiB
    assert by_label["lora, same name as full"].uploaded_bytes < by_label["lora"].uploaded_bytes  # tokenizer reused


# ---- S3 helpers -----------------------------------------------------------------------
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
