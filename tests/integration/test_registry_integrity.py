"""Registry integrity against a real SeaweedFS server: gc racing registrations, a damaged pull cache,
tampered and corrupt manifests, bad references, shared blobs uploaded once (issue 15, part A)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adaptflow.flows.cli.app import app
from adaptflow.tasks.errors import StorageError
from adaptflow.tasks.registry import store as registry
from adaptflow.tasks.storage.s3 import S3Settings, iter_objects, make_client
from tests.integration.test_registry import sha256, write_files

MiB = 1 << 20


class SlowBlobClient:
    """A real client whose blob uploads take ``delay`` seconds longer, counted per key (thread-safe)."""

    def __init__(self, client: Any, delay: float, puts: Counter[str] | None = None):
        self._client, self._delay = client, delay
        self.puts = puts if puts is not None else Counter()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _count(self, key: str) -> None:
        if "/blobs/sha256/" in key:
            with self._lock:
                self.puts[key] += 1
            time.sleep(self._delay)

    def put_object(self, **kwargs: Any) -> Any:
        self._count(kwargs["Key"])
        return self._client.put_object(**kwargs)

    def upload_file(self, **kwargs: Any) -> Any:  # multipart, above 16 MiB
        self._count(kwargs["Key"])
        return self._client.upload_file(**kwargs)


def models_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["models", *args], env={"COLUMNS": "200", **(env or {})})


def one_error_line(output: str) -> str:
    """The output's single error line (a user error is one message, never a traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def put_manifest(settings: S3Settings, name: str, version: int, body: bytes) -> None:
    key = registry.version_key(settings, name, version) + registry.MANIFEST
    make_client(settings).put_object(Bucket=settings.bucket, Key=key, Body=body)


def edit_manifest(settings: S3Settings, name: str, version: int, change) -> None:
    manifest = registry.get_manifest(settings, name, version)
    change(manifest)
    put_manifest(settings, name, version, json.dumps(manifest, indent=2, sort_keys=True).encode())


@pytest.fixture
def shared_files() -> dict[str, bytes]:
    return {"backbone.safetensors": os.urandom(2 * MiB), "config.json": b'{"hidden_size": 8}', "vocab.txt": b"[PAD]\nhello\n"}


# ---- gc against registrations ----------------------------------------------------------
def test_gc_in_a_loop_never_leaves_a_listed_version_incomplete(
    s3_settings: S3Settings, tmp_path: Path, shared_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gc --grace-hours 0 --force` in a loop while 4 registrations upload: every listed version pulls complete."""
    monkeypatch.setattr(registry, "CLAIM_RENEW_S", 0.3)  # leases renewed several times during each upload
    monkeypatch.setattr(registry, "CLAIM_LEASE", timedelta(seconds=5))
    folders = [write_files(tmp_path / f"model{i}", {**shared_files, "head.safetensors": os.urandom(MiB)}) for i in range(4)]
    done = threading.Event()
    passes: list[registry.GcReport] = []

    def gc_loop() -> None:
        while not done.is_set():
            try:
                passes.append(registry.gc(s3_settings, "race", grace_seconds=0, force=True))
            except StorageError as exc:
                assert "another gc" in str(exc)

    def register(folder: Path) -> registry.RegisteredVersion:
        client = SlowBlobClient(make_client(s3_settings), delay=0.4)
        return registry.register_version(s3_settings, "race", folder, {"source": folder.name}, client=client)

    sweeper = threading.Thread(target=gc_loop)
    sweeper.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(4) as pool:
            registered = list(pool.map(register, folders))
    finally:
        done.set()
        sweeper.join(60)
    elapsed = time.monotonic() - started
    final = registry.gc(s3_settings, "race", grace_seconds=0, force=True)  # nothing in progress now: a full sweep

    listed = registry.list_versions(s3_settings, "race")
    assert sorted(info.version for info in listed) == sorted(version.version for version in registered)
    for info in listed:
        pulled = registry.pull_version(s3_settings, "race", info.version, tmp_path / f"pulled{info.version}")
        source = tmp_path / registry.get_manifest(s3_settings, "race", info.version)["source"]
        for path in source.iterdir():
            assert (pulled / path.name).read_bytes() == path.read_bytes()
    assert len(passes) >= 3, "gc never overlapped the uploads"
    assert any(report.skipped for report in passes)  # at least one pass saw a live registration and held back
    assert final.removed_blobs == [] and final.removed_versions == []
    print(f"\n4 registrations in {elapsed:.1f} s against {len(passes)} forced gc passes (grace 0); {len(listed)} listed, all pull")


def test_a_registration_whose_claim_was_removed_fails_and_lists_nothing(
    s3_settings: S3Settings, tmp_path: Path, shared_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration stalled past its lease: gc removes the claim and the blobs, the registration fails, nothing is listed."""
    monkeypatch.setattr(registry, "CLAIM_RENEW_S", 60.0)  # a stalled registration: no renewal in time
    monkeypatch.setattr(registry, "CLAIM_LEASE", timedelta(seconds=1))
    folder = write_files(tmp_path / "model", shared_files)
    client = SlowBlobClient(make_client(s3_settings), delay=3.0)
    outcome: dict[str, Any] = {}

    def register() -> None:
        try:
            outcome["version"] = registry.register_version(s3_settings, "stalled", folder, {}, client=client)
        except StorageError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=register)
    worker.start()
    time.sleep(2.5)  # the claim is now older than its lease
    report = registry.gc(s3_settings, "stalled", grace_seconds=0, force=True)
    worker.join(60)

    assert report.removed_versions == ["stalled:1"]
    assert "claim was removed or replaced" in str(outcome.get("error")), outcome
    assert registry.list_versions(s3_settings, "stalled") == []


class ClaimRemovedAtCommit:
    """A real client; right before the manifest is written, the claim is deleted (a gc that listed it as dead)."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"].endswith(registry.MANIFEST):
            self._client.delete_object(Bucket=kwargs["Bucket"], Key=kwargs["Key"].replace(registry.MANIFEST, registry.CLAIM))
        return self._client.put_object(**kwargs)


def test_a_claim_removed_while_the_manifest_is_written_undoes_the_commit(
    s3_settings: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]
) -> None:
    folder = write_files(tmp_path / "model", shared_files)
    with pytest.raises(StorageError, match="claim was removed or replaced") as caught:
        registry.register_version(s3_settings, "late", folder, {}, client=ClaimRemovedAtCommit(make_client(s3_settings)))
    assert "nothing of this version is listed" in str(caught.value)
    assert registry.list_versions(s3_settings, "late") == []


def test_short_grace_needs_force(s3_env: S3Settings) -> None:
    refused = models_cli("gc", "--grace-hours", "0.1")
    assert refused.exit_code == 2
    assert "below the safe minimum" in one_error_line(refused.stderr) and "--force" in refused.stderr
    assert models_cli("gc", "--grace-hours", "0.1", "--force").exit_code == 0


# ---- integrity of what is pulled --------------------------------------------------------
def test_a_flipped_byte_in_the_pull_cache_is_detected_and_repaired(
    s3_settings: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]
) -> None:
    folder = write_files(tmp_path / "model", shared_files)
    registry.register_version(s3_settings, "cached", folder, {})
    cached = registry.pull_version(s3_settings, "cached", 1)
    target = cached / "backbone.safetensors"
    target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    damaged = bytearray(target.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # same size
    target.write_bytes(bytes(damaged))

    started = time.monotonic()
    again = registry.pull_version(s3_settings, "cached", 1)
    took = time.monotonic() - started
    assert again == cached
    assert (again / "backbone.safetensors").read_bytes() == shared_files["backbone.safetensors"]
    assert hashlib.sha256((again / "backbone.safetensors").read_bytes()).hexdigest() == sha256(shared_files["backbone.safetensors"])
    print(f"\nflipped byte detected and the version downloaded again in {took:.2f} s")


LAYOUT_2 = {"folder_layout": 2, "hf": {"route": "transformers"}, "task": "causal_lm", "metrics": {"accuracy": 0.61}}


@pytest.fixture
def pinned(s3_env: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]) -> S3Settings:
    """Model 'pinned': version 1 of folder layout 2 (route transformers), aliased 'champion'."""
    registry.register_version(s3_env, "pinned", write_files(tmp_path / "model", shared_files), LAYOUT_2)
    registry.set_alias(s3_env, "pinned", "champion", 1, expected_etag=None)
    return s3_env


def test_a_manifest_changed_after_its_alias_pinned_it_is_refused(pinned: S3Settings) -> None:
    assert registry.get_alias(pinned, "pinned", "champion").manifest_sha256
    edit_manifest(pinned, "pinned", 1, lambda manifest: manifest["metrics"].update(accuracy=0.999))
    for command in (["pull", "pinned@champion"], ["pull", "pinned:1"], ["show", "pinned@champion"]):
        refused = models_cli(*command)
        assert refused.exit_code == 3, refused.output
        assert "changed after alias 'champion' pinned it" in one_error_line(refused.stderr)
        assert "0.999" not in refused.stdout
    listed = models_cli("list", "pinned")  # the tampered version is refused, not shown with its 0.999
    assert listed.exit_code == 3 and "pinned it" in one_error_line(listed.stderr) and "0.999" not in listed.stdout


def test_a_manifest_whose_files_were_edited_is_refused(s3_env: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]) -> None:
    """No alias, no signature: a file pointed at another blob, or a file entry dropped, is still refused."""
    folder = write_files(tmp_path / "model", shared_files)
    for _ in range(2):
        registry.register_version(s3_env, "edited", folder, LAYOUT_2)

    def point_config_at_vocab(manifest: dict) -> None:
        by_path = {entry["path"]: entry for entry in manifest["files"]}
        by_path["config.json"]["sha256"] = by_path["vocab.txt"]["sha256"]

    edit_manifest(s3_env, "edited", 1, point_config_at_vocab)
    edit_manifest(s3_env, "edited", 2, lambda manifest: manifest.update(files=[e for e in manifest["files"] if e["path"] != "config.json"]))

    other_blob = models_cli("pull", "edited:1")
    assert other_blob.exit_code == 3, other_blob.output
    line = one_error_line(other_blob.stderr)
    assert "file 'config.json' of edited:1" in line and "does not describe the stored file" in line
    dropped = models_cli("pull", "edited:2")
    assert dropped.exit_code == 3, dropped.output
    assert "lists no config.json, which its layout requires" in one_error_line(dropped.stderr)


def test_signed_manifests(s3_env: S3Settings, tmp_path: Path, shared_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """With ADAPTFLOW_REGISTRY_HMAC_KEY, registration signs; pull refuses an unsigned or changed manifest, and no key is shown."""
    folder = write_files(tmp_path / "model", shared_files)
    registry.register_version(s3_env, "signed", folder, {"metrics": {"accuracy": 0.61}})  # before the key: unsigned
    key = "k3y-" + os.urandom(8).hex()
    monkeypatch.setenv(registry.HMAC_KEY_VAR, key)
    registry.register_version(s3_env, "signed", folder, {"metrics": {"accuracy": 0.61}})
    registry.register_version(s3_env, "signed", folder, {"metrics": {"accuracy": 0.61}})
    assert registry.get_manifest(s3_env, "signed", 2)["signature"]["algorithm"] == "hmac-sha256"

    edit_manifest(s3_env, "signed", 3, lambda manifest: manifest["metrics"].update(accuracy=0.999))
    good = models_cli("pull", "signed:2")
    assert good.exit_code == 0, good.output
    shown = models_cli("show", "signed:2")
    assert shown.exit_code == 0 and "hmac-sha256, verified" in shown.stdout
    unsigned = models_cli("pull", "signed:1")
    assert unsigned.exit_code == 3 and "is not signed" in one_error_line(unsigned.stderr)
    changed = models_cli("pull", "signed:3")
    assert changed.exit_code == 3 and "signature does not match" in one_error_line(changed.stderr)
    monkeypatch.setenv(registry.HMAC_KEY_VAR, "another key")
    other_key = models_cli("pull", "signed:2")
    assert other_key.exit_code == 3 and "signature does not match" in other_key.stderr
    for result in (good, unsigned, changed, other_key):
        assert key not in result.output


# ---- damaged objects ----------------------------------------------------------------------
@pytest.fixture
def broken_and_good(s3_env: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]) -> dict[str, Any]:
    """'broken' (version 1's manifest is not JSON) and 'good' (version 2 deleted: its own file is garbage)."""
    folder = write_files(tmp_path / "model", shared_files)
    registry.register_version(s3_env, "broken", folder, {})
    put_manifest(s3_env, "broken", 1, b'{"name": "broken", "files": [')
    registry.register_version(s3_env, "good", folder, {})
    only_in_2 = os.urandom(1000)
    registry.register_version(s3_env, "good", write_files(tmp_path / "model2", {**shared_files, "vocab.txt": only_in_2}), {})
    registry.delete_version(s3_env, "good", 2)
    time.sleep(1.1)  # S3 times have one-second resolution
    return {
        "orphan": registry.blob_key(s3_env, "good", sha256(only_in_2)),
        "key": registry.version_key(s3_env, "broken", 1) + "manifest.json",
    }


def test_a_corrupt_manifest_is_one_line_and_exit_3_in_every_command(
    broken_and_good: dict[str, Any], s3_env: S3Settings, prefect_api: str, tmp_path: Path
) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("text\nfine\n")
    env = {**os.environ, "COLUMNS": "200", "PREFECT_API_URL": prefect_api}
    commands = {
        "list": ["models", "list", "broken"],
        "show": ["models", "show", "broken"],
        "gc": ["models", "gc", "--grace-hours", "0", "--force"],
        "predict": ["predict", "--model", "broken", "--data", str(data), "--output", str(tmp_path / "out.csv")],
    }
    durations = {}
    for what, args in commands.items():
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "adaptflow.flows.cli", *args], capture_output=True, text=True, timeout=300, env=env)
        durations[what] = time.monotonic() - started
        assert result.returncode == 3, (what, result.stdout, result.stderr)
        line = one_error_line(result.stderr)
        assert "is damaged: not valid JSON" in line and broken_and_good["key"] in line, (what, line)
    # gc reported the broken model and still cleaned the other one
    keys = {obj["Key"] for obj in iter_objects(s3_env, s3_env.bucket, registry.blobs_key(s3_env, "good"))}
    assert broken_and_good["orphan"] not in keys and len(keys) == 3
    assert registry.pull_version(s3_env, "good", 1, tmp_path / "good")
    print("\n" + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in durations.items()))


def test_the_fix_a_damaged_manifest_names_works(s3_env: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]) -> None:
    """The message says `models delete NAME:V --force`: that removes the damaged version, and the model lists again."""
    folder = write_files(tmp_path / "model", shared_files)
    for _ in range(2):
        registry.register_version(s3_env, "fixable", folder, {})
    put_manifest(s3_env, "fixable", 2, b"\x00not json")
    refused = models_cli("list", "fixable")
    assert refused.exit_code == 3 and "adaptflow models delete fixable:2 --force" in one_error_line(refused.stderr)
    assert models_cli("delete", "fixable:2", "--force").exit_code == 0
    listed = models_cli("list", "fixable")
    assert listed.exit_code == 0 and [info.version for info in registry.list_versions(s3_env, "fixable")] == [1]


def test_damaged_alias_and_decision_objects_are_named(s3_env: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]) -> None:
    registry.register_version(s3_env, "objects", write_files(tmp_path / "model", shared_files), {})
    client = make_client(s3_env)
    alias = registry.alias_key(s3_env, "objects", "champion")
    client.put_object(Bucket=s3_env.bucket, Key=alias, Body=b'{"version": "seven"}')
    shown = models_cli("show", "objects@champion")
    assert shown.exit_code == 3 and "it names no version number" in one_error_line(shown.stderr) and alias in shown.stderr
    client.put_object(Bucket=s3_env.bucket, Key=alias, Body=b"\xff\xfe")
    with pytest.raises(StorageError, match="not valid JSON"):
        registry.get_alias(s3_env, "objects", "champion")
    decision = registry.decisions_key(s3_env, "objects") + "20260101T000000.000000Z-x.json"
    client.put_object(Bucket=s3_env.bucket, Key=decision, Body=b"[1, 2]")
    with pytest.raises(StorageError, match="not a JSON object"):
        registry.list_decisions(s3_env, "objects")


# ---- references and endpoints -------------------------------------------------------------
def test_malformed_references_and_output_files_exit_2(s3_env: S3Settings, tmp_path: Path, shared_files: dict[str, bytes]) -> None:
    registry.register_version(s3_env, "refs", write_files(tmp_path / "model", shared_files), {})
    for ref in ("Bad Name:1", "refs:one", "refs@", "a:b:c", "../refs"):
        result = models_cli("pull", ref)
        assert result.exit_code == 2, (ref, result.output)
        one_error_line(result.stderr)
    existing = tmp_path / "model.bin"
    existing.write_text("keep me")
    onto_file = models_cli("pull", "refs:1", "--output", str(existing))
    assert onto_file.exit_code == 2 and "exists and is not a folder" in one_error_line(onto_file.stderr)
    assert existing.read_text() == "keep me"
    (tmp_path / "out" / "config.json").mkdir(parents=True)  # a folder where a pulled file must go
    blocked = models_cli("pull", "refs:1", "--output", str(tmp_path / "out"))
    assert blocked.exit_code == 2 and "cannot write the pulled file there" in one_error_line(blocked.stderr)


def test_a_plain_http_404_is_not_reported_as_a_missing_object(s3_settings: S3Settings) -> None:
    class NotS3(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"<html><body>Not Found</body></html>")

        do_GET = do_HEAD = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = replace(s3_settings, endpoint_url=f"http://127.0.0.1:{server.server_address[1]}")
        for call in (lambda: registry.get_manifest(settings, "any", 1), lambda: registry.list_versions(settings, "any")):
            with pytest.raises(StorageError) as caught:
                call()
            assert "without any S3 error, so it is not an S3 server" in str(caught.value)
            assert "ADAPTFLOW_S3_PREFIX" not in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()


# ---- shared blobs -------------------------------------------------------------------------
def test_concurrent_registrations_upload_a_shared_blob_once(
    s3_settings: S3Settings, tmp_path: Path, shared_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "UPLOAD_POLL_S", 0.1)
    shared_files = {**shared_files, "large.safetensors": os.urandom(17 * MiB)}  # multipart: the other upload path
    folders = [write_files(tmp_path / f"model{i}", {**shared_files, "head.safetensors": os.urandom(1000)}) for i in range(8)]
    puts: Counter[str] = Counter()

    def register(folder: Path) -> registry.RegisteredVersion:
        return registry.register_version(s3_settings, "shared", folder, {}, client=SlowBlobClient(make_client(s3_settings), 0.5, puts))

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        registered = list(pool.map(register, folders))
    elapsed = time.monotonic() - started

    backbone = registry.blob_key(s3_settings, "shared", sha256(shared_files["backbone.safetensors"]))
    large = registry.blob_key(s3_settings, "shared", sha256(shared_files["large.safetensors"]))
    assert puts[backbone] == 1 and puts[large] == 1
    assert all(count == 1 for count in puts.values()), puts
    assert len(puts) == len(shared_files) + len(folders)  # the shared files once, each head once
    assert sum(version.uploaded_bytes for version in registered) == sum(map(len, shared_files.values())) + 8 * 1000
    assert sorted(version.version for version in registered) == list(range(1, 9))
    assert list(iter_objects(s3_settings, s3_settings.bucket, registry.model_key(s3_settings, "shared") + registry.UPLOADS)) == []
    print(
        f"\n8 concurrent registrations in {elapsed:.1f} s: {sum(puts.values())} blob uploads, 2 MiB {puts[backbone]}, 17 MiB {puts[large]}"
    )
