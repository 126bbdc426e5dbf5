"""The model registry on S3: numbered, immutable versions over content-addressed blobs.

Layout, under ``s3://BUCKET/PREFIX/models/NAME/``::

    blobs/sha256/<hex>                  file bodies, named by their sha256: a file shared by
                                        several versions (tokenizer, frozen base) is stored once
    versions/000007/_claim.json         who allocated version 7 (conditional write); rewritten
                                        while the registration runs (its lease)
    versions/000007/manifest.json       written last, the commit marker: metadata and
                                        ``files``, one {"path", "size", "sha256"} per file
    versions/000007/_deleted.json       left by `delete_version`, so number 7 is never reused
    aliases/champion.json               {"version", "previous", "set_at", "reason"}
    decisions/<UTC time>-<id>.json      one immutable object per recorded decision
    uploads/<sha256>.json               exists while one registration uploads that blob
    _gc.json                            exists while `gc` sweeps this model's blobs

**Registering** hashes every file, claims the next number with a conditional
``PutObject(IfNoneMatch="*")`` of its ``_claim.json`` (concurrent registrations never share
one), keeps that claim alive by rewriting it (``IfMatch``: its own last ETag) every
:data:`CLAIM_RENEW_S`, uploads the blobs that are not there yet (HEAD first; four files at a
time, multipart above 16 MiB; a blob several registrations need is uploaded by the one that
wrote its ``uploads/`` marker, the others wait), renews the claim and checks every blob is
stored, writes the manifest last, again with ``IfNoneMatch="*"``, and checks the claim once
more: a registration whose claim was lost fails, and nothing of it is listed.
A single-request upload carries the file's sha256, which the server verifies; multipart
parts carry their own. Each blob keeps its sha256 in its metadata: one without it (written
outside the registry) is uploaded again. Only versions with a manifest are listed or pulled. A
failed registration deletes its manifest (if written) and its claim; blobs it uploaded
stay until :func:`gc` finds them referenced by no manifest (content-addressed, so they
are harmless and a retry reuses them).

**Aliases** move by compare-and-swap: ``If-None-Match: *`` to create one, ``If-Match:
<etag>`` to move or delete it. A writer that lost the race gets :class:`AliasConflict`
with the alias as it now is; nothing is ever read-then-written blindly.

**Pulling** verifies the manifest (its signature with :data:`HMAC_KEY_VAR`, the digest its
aliases pinned, the files its layout needs, each blob's size and sha256) and fills
``$ADAPTFLOW_HOME/cache/pulled/<sha256 of the manifest>/``: files are downloaded into a
temporary folder, each checked against its sha256, then the folder is renamed into place
(read-only). A cached version is re-hashed on every pull and downloaded again if damaged.

**gc** removes version folders holding a dead claim (not renewed within :data:`CLAIM_LEASE`
by the server's clock, and older than the grace period) but no manifest, and blobs no
committed manifest references, once older than the grace period (under
:data:`MIN_GC_GRACE` only with ``force``). A dead claim is deleted with ``IfMatch`` on the
ETag listed, so one renewed meanwhile stays. It cannot race a registration that reuses an
old blob: gc writes ``_gc.json`` *before* listing claims and skips the blob sweep while any
claim is alive, and a registration writes its claim *before* checking ``_gc.json`` and waits
while one exists; so one of the two always sees the other.

Every registry object read is checked to be JSON of the right shape: a damaged one is a
:class:`StorageError` naming its key (exit code 3), and ``gc`` over all models skips a model
with one and cleans the others.

Versions registered before blobs existed (a manifest without ``"layout": 2``) keep their
files inside the version folder; they are still listed, pulled and deleted.

Plain functions, no Prefect: the flows wrap them in thin tasks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from adaptflow.tasks.config import adaptflow_home, valid_name, validate_name
from adaptflow.tasks.errors import ConfigError, Problem, StorageError, TransientStorageError
from adaptflow.tasks.storage.s3 import (
    TRANSFER_CONFIG,
    S3Settings,
    delete_quietly,
    download_file,
    is_s3_answer,
    iter_objects,
    make_client,
    safe_relative_path,
    storage_errors,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CLAIM = "_claim.json"
TOMBSTONE = "_deleted.json"
GC_LOCK = "_gc.json"
UPLOADS = "uploads/"
"""``uploads/<sha256>.json``: a blob upload in progress (the others wait for it instead of uploading it too)."""
SIGNATURE = "signature"
RESERVED_FILES = frozenset({MANIFEST, CLAIM, TOMBSTONE})
RESERVED_KEYS = frozenset({"name", "version", "registered_at", "files", "layout", SIGNATURE})
HMAC_KEY_VAR = "ADAPTFLOW_REGISTRY_HMAC_KEY"
"""With this variable set, registrations sign their manifest and pulls refuse unsigned or mismatching ones."""
LAYOUT = 2
"""``manifest["layout"]`` of versions whose files are blobs (absent: files in the version folder)."""
MAX_CLAIM_ATTEMPTS = 10_000
WORKERS = 4
"""Files uploaded or downloaded at the same time."""
GC_LOCK_TTL = timedelta(minutes=10)
"""A ``_gc.json`` older than this is left over by a crashed gc: ignored and replaced."""
GC_POLL_S = 1.0
CLAIM_LEASE = timedelta(minutes=2)
"""A claim not rewritten for this long (by the S3 server's clock) belongs to a registration that died."""
CLAIM_RENEW_S = 20.0
"""How often a running registration rewrites its ``_claim.json`` (its lease)."""
MIN_GC_GRACE = timedelta(minutes=10)
"""``gc`` with a shorter grace period needs ``force``."""
UPLOAD_POLL_S = 0.5
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_KEY = re.compile(r"^(\d{6,})/manifest\.json$")
_REF = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>[^:@]*)|@(?P<alias>[^:@]*))?$")
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class RegisteredVersion:
    """A version just registered."""

    name: str
    version: int
    uri: str
    """The version folder, ``s3://BUCKET/PREFIX/models/NAME/versions/000007/``."""
    manifest_uri: str
    files: list[dict[str, Any]]
    """One ``{"path", "size", "sha256"}`` per file, ``path`` relative to the model folder."""
    uploaded_bytes: int = 0
    """Bytes this registration stored: files whose blob already existed cost nothing."""
    total_bytes: int = 0
    """Size of the version: every file, stored now or before."""


@dataclass(frozen=True)
class VersionInfo:
    """A committed version, as listed (its manifest exists)."""

    name: str
    version: int
    uri: str
    manifest_uri: str
    committed_at: datetime
    """When its manifest was written (the object's LastModified)."""


@dataclass(frozen=True)
class AliasInfo:
    """Where an alias points, and the etag to pass to :func:`set_alias` to move it."""

    name: str
    alias: str
    version: int
    etag: str
    """The alias object's ETag: the compare-and-swap token."""
    set_at: str
    reason: str
    previous: int | None = None
    """The version it pointed at before the last move (``None``: it was created)."""
    manifest_sha256: str | None = None
    """The sha256 of the version's manifest when the alias was set: a pull through it checks it (``None``: set before pins)."""


class AliasConflict(StorageError):
    """A compare-and-swap on an alias lost: someone else created, moved or deleted it first."""

    def __init__(self, problems: list[Problem] | Problem | str, current: AliasInfo | None = None):
        super().__init__(problems)
        self.current = current
        """The alias as it is now (``None``: it does not exist)."""

    def __reduce__(self):  # keep ``current`` when Prefect pickles a failed state
        return (type(self), (self.problems, self.current))


@dataclass
class GcReport:
    """What :func:`gc` removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    removed_versions: list[str] = field(default_factory=list)
    """Abandoned registrations (``NAME:7``): a claim, no manifest, older than the grace period."""
    removed_blobs: list[str] = field(default_factory=list)
    """URIs of blobs referenced by no committed version."""
    freed_bytes: int = 0
    aborted_uploads: int = 0
    """Multipart uploads of blobs left unfinished by a crash."""
    skipped: list[str] = field(default_factory=list)
    """Why a model's blobs were not swept (a registration in progress)."""
    broken: list[str] = field(default_factory=list)
    """Models not cleaned because an object of theirs is damaged or locked: one message each."""


@dataclass(frozen=True)
class _SourceFile:
    path: Path
    relative: str
    size: int
    sha256: str

    def entry(self) -> dict[str, Any]:
        return {"path": self.relative, "size": self.size, "sha256": self.sha256}


# ---- naming -----------------------------------------------------------------------
def validate_alias(alias: str) -> str:
    """An alias name follows the rules of model names."""
    return validate_name(alias, "alias")


def model_key(settings: S3Settings, name: str) -> str:
    """Key prefix of everything about model ``name`` (ends with '/')."""
    return settings.key("models", validate_name(name)) + "/"


def versions_key(settings: S3Settings, name: str) -> str:
    """Key prefix of every version folder of ``name`` (ends with '/')."""
    return model_key(settings, name) + "versions/"


def version_key(settings: S3Settings, name: str, version: int) -> str:
    """Key prefix of one version folder (ends with '/')."""
    return f"{versions_key(settings, name)}{version:06d}/"


def blobs_key(settings: S3Settings, name: str) -> str:
    return model_key(settings, name) + "blobs/sha256/"


def blob_key(settings: S3Settings, name: str, sha256: str) -> str:
    """Where the file body with this sha256 is stored for model ``name``."""
    if not _SHA256.match(sha256):
        raise StorageError(Problem(f"model '{name}'", f"invalid sha256 {sha256!r} in a manifest", "re-register the version"))
    return blobs_key(settings, name) + sha256


def alias_key(settings: S3Settings, name: str, alias: str) -> str:
    return f"{model_key(settings, name)}aliases/{validate_alias(alias)}.json"


def decisions_key(settings: S3Settings, name: str) -> str:
    return model_key(settings, name) + "decisions/"


# ---- registering --------------------------------------------------------------------
def register_version(settings: S3Settings, name: str, source_dir: Path, manifest: dict[str, Any], client: Any = None) -> RegisteredVersion:
    """Upload ``source_dir`` as the next version of ``name`` and commit it with a manifest.

    Every file under ``source_dir`` is registered (sub-folders kept) except a top-level
    ``manifest.json`` / ``_claim.json`` / ``_deleted.json``, whose names the registry owns.
    Files whose blob already exists are not uploaded again. The manifest written is
    ``manifest`` plus ``name``, ``version``, ``registered_at``, ``layout``, ``files``
    (path, size, sha256 of each file) and, with :data:`HMAC_KEY_VAR` set, ``signature``.
    The claim is renewed while the registration runs (:class:`_ClaimLease`); a claim lost
    to a gc fails it. On any failure the manifest and the claim are deleted and the error
    is raised; no partial version is ever listed.
    """
    validate_name(name)
    _check_caller_manifest(settings, manifest)
    files = describe_files(Path(source_dir))
    client = client or make_client(settings)
    lease = _claim(settings, name, client).start()
    folder = version_key(settings, name, lease.version)
    written: list[str] = []
    try:
        _wait_while_gc_runs(settings, client, name)
        uploaded = sum(_parallel(lambda source: _upload_blob(settings, client, name, source, lease), files))
        document = _sign(
            {
                **manifest,
                "name": name,
                "version": lease.version,
                "registered_at": _now(),
                "layout": LAYOUT,
                "files": [source.entry() for source in files],
            }
        )
        lease.stop()
        lease.renew()  # conditional: the claim is still ours at this moment, and its lease starts afresh
        _check_blobs_stored(settings, client, name, files)
        written.append(folder + MANIFEST)  # before the call: a timed-out write may still have landed
        if not _put_new(settings, client, folder + MANIFEST, _serialize(settings, document), "write the manifest"):
            written.pop()  # not ours: never delete another writer's manifest
            raise StorageError(Problem(settings.uri(folder), "another writer committed this version folder", "register again"))
        lease.confirm()  # a gc that removed the claim meanwhile may be sweeping the blobs: undo the commit
    except BaseException:
        lease.stop()
        _roll_back(settings, client, folder, written, lease.etag)
        raise
    version = lease.version
    return RegisteredVersion(
        name=name,
        version=version,
        uri=settings.uri(folder),
        manifest_uri=settings.uri(folder + MANIFEST),
        files=document["files"],
        uploaded_bytes=uploaded,
        total_bytes=sum(source.size for source in files),
    )


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """The ``retry_condition_fn`` of the registry's Prefect tasks: retry only what may pass by itself.

    A :class:`TransientStorageError` (connection lost, timeout, 5xx, throttling) is retried; a
    refusal (invalid name, access denied, a lost claim, a damaged object) fails at once.
    """
    return isinstance(state.data, TransientStorageError)


def describe_files(source_dir: Path) -> list[_SourceFile]:
    """Size and sha256 of every file to upload, read before any S3 write."""
    if not source_dir.is_dir():
        raise StorageError(Problem(str(source_dir), "not a folder", "pass the folder holding the model files"))
    files = []
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir).as_posix()
        if relative in RESERVED_FILES or not path.is_file():
            continue
        size, digest = hash_file(path)
        files.append(_SourceFile(path, relative, size, digest))
    if not files:
        raise StorageError(Problem(str(source_dir), "no files to register", "check the model folder"))
    return files


def hash_file(path: Path) -> tuple[int, str]:
    """(size, sha256) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise StorageError(Problem(str(path), f"cannot read ({exc.strerror or exc})", "check the file's permissions")) from exc
    return size, digest.hexdigest()


def claim_next_version(settings: S3Settings, name: str, client: Any) -> int:
    """Take the next free version number with a conditional write of its ``_claim.json`` (not renewed)."""
    return _claim(settings, name, client).version


def _claim(settings: S3Settings, name: str, client: Any) -> _ClaimLease:
    version = _highest_version_folder(settings, name, client) + 1
    claim = {"name": name, "host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(MAX_CLAIM_ATTEMPTS):
        key = version_key(settings, name, version) + CLAIM
        document = {**claim, "version": version, "claimed_at": _now()}
        etag = _put_new(settings, client, key, json.dumps(document).encode(), "claim a version number")
        if etag:
            return _ClaimLease(settings, client, key, document, etag)
        version += 1  # another writer has it
    raise StorageError(Problem(settings.uri(versions_key(settings, name)), f"no free version after {MAX_CLAIM_ATTEMPTS} tries"))


_LIVE_CLAIMS: set[str] = set()
"""Claim keys of the registrations running in this process (an upload marker of another one is stale)."""
_LIVE_LOCK = threading.Lock()


class _ClaimLease:
    """A registration's hold on its version number: its ``_claim.json``, rewritten every
    :data:`CLAIM_RENEW_S` by a background thread while the registration runs.

    gc counts a claim as alive while it was rewritten less than :data:`CLAIM_LEASE` ago (by the
    S3 server's clock). Every rewrite is conditional on the ETag of the previous one (If-Match),
    so a claim that gc removed, or anyone replaced, is never silently taken back: the
    registration fails at its next step.
    """

    def __init__(self, settings: S3Settings, client: Any, key: str, document: dict[str, Any], etag: str):
        self.settings, self.client, self.key, self.document, self.etag = settings, client, key, document, etag
        self.version: int = document["version"]
        self.lost: StorageError | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name=f"claim lease {key}", daemon=True)

    def start(self) -> _ClaimLease:
        with _LIVE_LOCK:
            _LIVE_CLAIMS.add(self.key)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        with _LIVE_LOCK:
            _LIVE_CLAIMS.discard(self.key)

    def _renew_until_stopped(self) -> None:
        while not self._stopped.wait(CLAIM_RENEW_S):
            try:
                self.renew()
            except TransientStorageError as exc:  # the next renewal may pass; the lease lasts several periods
                log.warning("could not renew %s (trying again in %.0f s): %s", self.settings.uri(self.key), CLAIM_RENEW_S, exc)
            except StorageError:
                return  # recorded in self.lost: the registration stops at its next check

    def renew(self) -> None:
        """Rewrite the claim if it is still the one this registration wrote last."""
        with self._lock:
            self.check()
            body = json.dumps({**self.document, "renewed_at": _now()}).encode()
            with storage_errors("renew the claim", self.settings.uri(self.key), self.settings.endpoint_url):
                try:
                    response = self.client.put_object(
                        Bucket=self.settings.bucket, Key=self.key, Body=body, ContentType="application/json", IfMatch=self.etag
                    )
                except ClientError as exc:
                    if _status(exc) in (404, 412):
                        self.lost = self._lost_error()
                        raise self.lost from None
                    raise
            self.etag = response["ETag"]

    def check(self) -> None:
        """Raise if the claim was lost."""
        if self.lost is not None:
            raise StorageError(self.lost.problems)

    def confirm(self) -> None:
        """The claim is still there, as this registration last wrote it."""
        head = _head(self.settings, self.client, self.key, "check the claim")
        if head is None or head["ETag"] != self.etag:
            self.lost = self._lost_error()
            self.check()

    def _lost_error(self) -> StorageError:
        return StorageError(
            Problem(
                self.settings.uri(self.key),
                f"version {self.version}'s claim was removed or replaced while this registration ran "
                "(a `models gc --force` with a short grace period, or a registration paused for longer than "
                f"{CLAIM_LEASE.total_seconds():.0f} s)",
                "register again; nothing of this version is listed",
            )
        )


def _highest_version_folder(settings: S3Settings, name: str, client: Any) -> int:
    """The largest version number with a folder (claimed, committed or deleted); 0 when none."""
    prefix = versions_key(settings, name)
    highest = 0
    with storage_errors("list versions", settings.uri(prefix), settings.endpoint_url):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                number = common["Prefix"][len(prefix) :].strip("/")
                if number.isdigit():
                    highest = max(highest, int(number))
    return highest


def _wait_while_gc_runs(settings: S3Settings, client: Any, name: str) -> None:
    """Wait while a gc sweeps ``name``'s blobs (it might delete one this registration reuses)."""
    key = model_key(settings, name) + GC_LOCK
    waiting = False
    while (lock := _head(settings, client, key, "check for a running gc")) is not None:
        if _server_time(lock) - lock["LastModified"] > GC_LOCK_TTL:
            log.warning("ignoring %s: older than %s, left by a gc that did not finish", settings.uri(key), GC_LOCK_TTL)
            return
        if not waiting:
            log.info("waiting for the gc of model '%s' to finish (%s)", name, settings.uri(key))
            waiting = True
        time.sleep(GC_POLL_S)


def _upload_blob(settings: S3Settings, client: Any, name: str, source: _SourceFile, lease: _ClaimLease) -> int:
    """Store ``source`` as a blob unless an intact copy exists; returns the bytes stored.

    Concurrent registrations of the same file upload it once: the first writes
    ``uploads/<sha256>.json`` (If-None-Match: *) and uploads; the others wait for the blob,
    or take over when the uploader's claim is no longer alive.
    """
    key = blob_key(settings, name, source.sha256)
    marker = model_key(settings, name) + UPLOADS + source.sha256 + ".json"
    while True:
        lease.check()
        existing = _head(settings, client, key, "check for a stored copy")
        if existing is not None and _written_by_registry(existing, source):
            return 0
        owner = {"claim": lease.key, "host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()}
        marker_body = json.dumps(owner).encode()
        marker_etag = _put_new(settings, client, marker, marker_body, "mark an upload in progress")
        if marker_etag:
            try:
                existing = _head(settings, client, key, "check for a stored copy")  # stored by the marker's last holder?
                if existing is not None and _written_by_registry(existing, source):
                    return 0
                return _store_blob(settings, client, key, source, existing)
            finally:
                _delete_if_unchanged(settings, client, marker, marker_etag)
        _wait_for_upload(settings, client, marker)


def _wait_for_upload(settings: S3Settings, client: Any, marker: str) -> None:
    """Wait a moment for another registration's upload; remove its marker if that registration is dead."""
    with storage_errors("read an upload marker", settings.uri(marker), settings.endpoint_url):
        try:
            response = client.get_object(Bucket=settings.bucket, Key=marker)
        except ClientError as exc:
            if _is_missing_object(exc):
                return  # finished or failed: look at the blob again
            raise
        body = response["Body"].read()
    try:
        owner = json.loads(body)
    except ValueError:
        owner = None
    if isinstance(owner, dict) and _uploader_alive(settings, client, owner):
        time.sleep(UPLOAD_POLL_S)
        return
    log.warning("taking over %s: the registration that started it is gone", settings.uri(marker))
    _delete_if_unchanged(settings, client, marker, response["ETag"])


def _uploader_alive(settings: S3Settings, client: Any, owner: dict[str, Any]) -> bool:
    """Whether the registration named by an upload marker still runs.

    On this machine the process answers at once (a registration of this process that
    failed, or a process that is gone, is dead); elsewhere its claim's lease tells.
    """
    claim_key, pid = owner.get("claim"), owner.get("pid")
    if not isinstance(claim_key, str):
        return False
    if owner.get("host") == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            with _LIVE_LOCK:
                return claim_key in _LIVE_CLAIMS
        if not _process_exists(pid):
            return False
    claim = _head(settings, client, claim_key, "check the uploader's claim")
    return claim is not None and _server_time(claim) - claim["LastModified"] < CLAIM_LEASE


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _delete_if_unchanged(settings: S3Settings, client: Any, key: str, etag: str) -> bool:
    """Delete ``key`` only if it still has ``etag``; ``False`` when it changed or is gone. Never raises."""
    try:
        client.delete_object(Bucket=settings.bucket, Key=key, IfMatch=etag)
    except ClientError as exc:
        if _status(exc) not in (404, 412):
            log.warning("could not delete %s: %s", settings.uri(key), exc)
        return False
    except BotoCoreError as exc:
        log.warning("could not delete %s: %s", settings.uri(key), exc)
        return False
    return True


def _store_blob(settings: S3Settings, client: Any, key: str, source: _SourceFile, existing: dict[str, Any] | None) -> int:
    """Upload ``source`` to the blob ``key`` (``existing``: the HEAD of a copy to replace); returns the bytes stored."""
    if existing is not None:
        log.warning("replacing %s: not written by the registry, or of the wrong size", settings.uri(key))
    metadata = {"sha256": source.sha256}
    with storage_errors(f"upload {source.path}", settings.uri(key), settings.endpoint_url):
        if source.size >= TRANSFER_CONFIG.multipart_threshold:  # each part carries its own sha256
            client.upload_file(
                Filename=str(source.path),
                Bucket=settings.bucket,
                Key=key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": metadata},
                Config=TRANSFER_CONFIG,
            )
            return source.size
        condition = {"IfNoneMatch": "*"} if existing is None else {}
        try:
            with open(source.path, "rb") as body:  # the server refuses bytes that do not hash to the name
                client.put_object(
                    Bucket=settings.bucket,
                    Key=key,
                    Body=body,
                    ChecksumSHA256=_base64(source.sha256),
                    Metadata=metadata,
                    **condition,
                )
        except ClientError as exc:
            if _status(exc) == 412:
                return 0  # another registration stored the same bytes meanwhile
            raise
    return source.size


def _written_by_registry(head: dict[str, Any], source: _SourceFile) -> bool:
    """The stored blob is one the registry uploaded (its sha256 was checked then) and has the right size.

    A blob overwritten by anything else loses the ``sha256`` metadata and is uploaded again.
    """
    return head["ContentLength"] == source.size and head.get("Metadata", {}).get("sha256") == source.sha256


def _check_blobs_stored(settings: S3Settings, client: Any, name: str, files: list[_SourceFile]) -> None:
    """Right before the commit: every blob of the version is stored, intact (none removed by a gc meanwhile)."""

    def check(source: _SourceFile) -> None:
        key = blob_key(settings, name, source.sha256)
        head = _head(settings, client, key, "check a stored file")
        if head is None or not _written_by_registry(head, source):
            raise StorageError(
                Problem(
                    settings.uri(key),
                    f"the blob of '{source.relative}' is missing or replaced right before the commit (removed by a gc?)",
                    "register again; nothing of this version is listed",
                )
            )

    _parallel(check, files)


def _put_new(settings: S3Settings, client: Any, key: str, body: bytes, action: str) -> str | None:
    """PutObject only if ``key`` does not exist yet; returns its ETag, ``None`` when it existed."""
    with storage_errors(action, settings.uri(key), settings.endpoint_url):
        try:
            response = client.put_object(Bucket=settings.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
        except ClientError as exc:
            if _status(exc) == 412:
                return None
            raise
    return response["ETag"]


def _check_caller_manifest(settings: S3Settings, manifest: dict[str, Any]) -> None:
    clash = RESERVED_KEYS & set(manifest)
    if clash:
        raise ValueError(f"manifest keys {sorted(clash)} are set by the registry; remove them")
    _serialize(settings, manifest)  # not JSON-serialisable, or holding the secret: fail before any write


def _serialize(settings: S3Settings, document: dict[str, Any]) -> bytes:
    text = json.dumps(document, indent=2, sort_keys=True)
    for secret in (settings.secret_access_key, settings.session_token):
        if secret and secret in text:
            raise StorageError(Problem("manifest", "contains the S3 secret key", "keep credentials out of the manifest and config"))
    return text.encode()


def _roll_back(settings: S3Settings, client: Any, folder: str, written: list[str], claim_etag: str) -> None:
    """Delete a failed version's manifest, then release its number.

    Best effort, never raising: the error that caused the roll-back is the one to see.
    If the manifest cannot be deleted, the claim is kept so the number is never reused;
    a claim that cannot be deleted (server down) is removed later by :func:`gc`. The claim
    is deleted only if it is still this registration's (a lost claim may be another's now).
    """
    left = delete_quietly(client, settings.bucket, list(reversed(written)))
    if left:
        log.warning("registration of %s failed; its manifest could not be removed", settings.uri(folder))
        return
    _delete_if_unchanged(settings, client, folder + CLAIM, claim_etag)


def _sign(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with its HMAC signature when :data:`HMAC_KEY_VAR` is set (unchanged otherwise)."""
    key = _hmac_key()
    if key is None:
        return document
    return {**document, SIGNATURE: {"algorithm": "hmac-sha256", "value": _signature(document, key)}}


def _signature(document: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 over the manifest's canonical JSON (sorted keys, no spaces), without its signature."""
    unsigned = {k: v for k, v in document.items() if k != SIGNATURE}
    return hmac.new(key, json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


def _hmac_key() -> bytes | None:
    value = os.environ.get(HMAC_KEY_VAR, "")
    return value.encode() if value else None


# ---- reading ------------------------------------------------------------------------
def list_models(settings: S3Settings, client: Any = None) -> list[str]:
    """Names of every model in the registry, sorted."""
    client = client or make_client(settings)
    prefix = settings.key("models") + "/"
    names = []
    with storage_errors("list models", settings.uri(prefix), settings.endpoint_url):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            names += [common["Prefix"][len(prefix) :].strip("/") for common in page.get("CommonPrefixes", [])]
    return sorted(name for name in names if valid_name(name))


def list_versions(settings: S3Settings, name: str, client: Any = None) -> list[VersionInfo]:
    """Committed versions of ``name`` (those with a manifest), oldest first."""
    prefix = versions_key(settings, name)
    versions = []
    for obj in iter_objects(settings, settings.bucket, prefix, client):
        match = _MANIFEST_KEY.match(obj["Key"][len(prefix) :])
        if match:
            folder = prefix + match.group(1) + "/"
            versions.append(
                VersionInfo(
                    name=name,
                    version=int(match.group(1)),
                    uri=settings.uri(folder),
                    manifest_uri=settings.uri(folder + MANIFEST),
                    committed_at=obj["LastModified"],
                )
            )
    return sorted(versions, key=lambda info: info.version)


def latest_version(settings: S3Settings, name: str, client: Any = None) -> VersionInfo | None:
    """The highest committed version of ``name``, or ``None`` when it has none."""
    versions = list_versions(settings, name, client)
    return versions[-1] if versions else None


def get_manifest(settings: S3Settings, name: str, version: int, client: Any = None) -> dict[str, Any]:
    """The manifest of a committed version (a damaged one raises a :class:`StorageError` naming it)."""
    return _read_manifest(settings, name, version, client or make_client(settings))[1]


def verified_manifest(
    settings: S3Settings, name: str, version: int, client: Any = None, aliases: list[AliasInfo] | None = None
) -> dict[str, Any]:
    """The manifest of a committed version, refused when it changed since registration (as :func:`pull_version` checks).

    ``aliases``: the model's aliases, when the caller has read them already (else they are read here).
    """
    client = client or make_client(settings)
    raw, manifest = _read_manifest(settings, name, version, client)
    _verify_manifest(settings, client, name, version, raw, manifest, aliases)
    return manifest


def signature_state(manifest: dict[str, Any]) -> str:
    """How a (verified) manifest is signed, in words: for ``models show``."""
    if not isinstance(manifest.get(SIGNATURE), dict):
        return "unsigned"
    if _hmac_key() is None:
        return f"hmac-sha256, not checked ({HMAC_KEY_VAR} is not set)"
    return "hmac-sha256, verified"


def _read_manifest(settings: S3Settings, name: str, version: int, client: Any) -> tuple[bytes, dict[str, Any]]:
    """A committed version's manifest: its bytes and its document, checked to be JSON with a sound ``files`` list."""
    raw = _manifest_bytes(settings, name, version, client)
    key = version_key(settings, name, version) + MANIFEST
    fix = f"restore it from a backup, or delete the version: adaptflow models delete {name}:{version} --force"
    manifest = _parse_json(settings, key, raw, fix)
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise StorageError(Problem(settings.uri(key), "has no list of files", fix))
    seen: set[str] = set()
    for index, entry in enumerate(files):
        where = f"{settings.uri(key)}, files[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or entry["path"] in seen:
            raise StorageError(Problem(where, "is not a {path, size, sha256} entry of its own path", fix))
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str) or not _SHA256.match(digest):
            raise StorageError(Problem(where, f"'{entry['path']}' has no valid size and sha256", fix))
        safe_relative_path(entry["path"], settings.uri(version_key(settings, name, version)))
        seen.add(entry["path"])
    return raw, manifest


def _parse_json(settings: S3Settings, key: str, body: bytes, fix: str) -> dict[str, Any]:
    """A registry object's JSON document; a damaged object is a :class:`StorageError` naming it."""
    try:
        document = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise StorageError(Problem(settings.uri(key), f"is damaged: not valid JSON ({exc})", fix)) from None
    if not isinstance(document, dict):
        raise StorageError(Problem(settings.uri(key), "is damaged: not a JSON object", fix))
    return document


def _manifest_bytes(settings: S3Settings, name: str, version: int, client: Any) -> bytes:
    key = version_key(settings, name, version) + MANIFEST
    body = _get(settings, client, key, "read the manifest")
    if body is None:
        raise _missing_version(settings, name, version, client)
    return body


def _missing_version(settings: S3Settings, name: str, version: int, client: Any) -> StorageError:
    folder = version_key(settings, name, version)
    deleted = _get(settings, client, folder + TOMBSTONE, "read the deletion record")
    if deleted is not None:
        record = _parse_json(settings, folder + TOMBSTONE, deleted, "restore it from a backup; the version stays deleted")
        what = f"version {version} of model '{name}' was deleted ({record.get('deleted_at', '?')})"
    else:
        what = f"model '{name}' has no registered version {version}"
    committed = [str(info.version) for info in list_versions(settings, name, client)]
    fix = f"committed versions: {', '.join(committed)}" if committed else "`adaptflow models list` shows the registered models"
    return StorageError(Problem(f"{settings.uri(folder + MANIFEST)} at {settings.endpoint_label()}", what, fix))


def resolve_ref(settings: S3Settings, ref: str, client: Any = None) -> tuple[str, int]:
    """``NAME`` (its latest committed version), ``NAME:7`` or ``NAME@champion`` -> (name, version)."""
    match = _REF.match(ref.strip())
    if match is None or match.group("version") == "" or match.group("alias") == "":
        raise ConfigError(Problem(f"model reference {ref!r}", "not understood", "write NAME, NAME:VERSION or NAME@ALIAS"))
    name = validate_name(match.group("name"))
    client = client or make_client(settings)
    if match.group("alias") is not None:
        return name, _aliased_version(settings, name, match.group("alias"), client)
    if match.group("version") is not None:
        version = _parse_version(ref, match.group("version"))
        _require_committed(settings, client, name, version)
        return name, version
    latest = latest_version(settings, name, client)
    if latest is None:
        raise StorageError(
            Problem(
                f"model '{name}' at {settings.uri(model_key(settings, name))}",
                "has no committed version",
                "check the name: `adaptflow models list` shows the registered models",
            )
        )
    return name, latest.version


def _parse_version(ref: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(Problem(f"model reference {ref!r}", f"version {text!r} is not a positive number", "write NAME:7"))
    return int(text)


def _aliased_version(settings: S3Settings, name: str, alias: str, client: Any) -> int:
    info = get_alias(settings, name, alias, client)
    if info is None:
        known = [a.alias for a in list_aliases(settings, name, client)]
        raise StorageError(
            Problem(
                f"{name}@{alias}",
                f"model '{name}' has no alias '{alias}'",
                f"its aliases: {', '.join(known)}" if known else f"set one: adaptflow models promote {name}:VERSION --alias {alias}",
            )
        )
    return info.version


def _require_committed(settings: S3Settings, client: Any, name: str, version: int) -> None:
    key = version_key(settings, name, version) + MANIFEST
    if _head(settings, client, key, "check the version") is None:
        raise _missing_version(settings, name, version, client)


# ---- pulling ------------------------------------------------------------------------
def pull_cache_dir() -> Path:
    """Verified, read-only copies of pulled versions, one folder per manifest digest."""
    return adaptflow_home() / "cache" / "pulled"


def pull_version(settings: S3Settings, name: str, version: int, dest_dir: Path | None = None, client: Any = None) -> Path:
    """A local folder holding a committed version's files and manifest, each sha256-checked.

    The version is downloaded once into the pull cache (:func:`pull_cache_dir`); later
    pulls of the same manifest download nothing. Without ``dest_dir`` the (read-only)
    cache folder is returned; with it, the files are copied there and ``dest_dir`` is
    returned. Either loads with ``adaptflow.tasks.modeling.load_classifier`` (LoRA versions: with
    their base model), ``backbone/`` with ``AutoModel.from_pretrained`` and ``adapter/``
    with ``peft.PeftModel.from_pretrained``.
    """
    if dest_dir is not None and Path(dest_dir).exists() and not Path(dest_dir).is_dir():
        raise ConfigError(Problem(str(dest_dir), "exists and is not a folder", "pass a new or existing folder to copy the version into"))
    client = client or make_client(settings)
    raw, manifest = _read_manifest(settings, name, version, client)
    _verify_manifest(settings, client, name, version, raw, manifest)
    cached = _cached_version(settings, name, version, raw, manifest, client)
    return cached if dest_dir is None else _copy_out(cached, Path(dest_dir), manifest)


def _verify_manifest(
    settings: S3Settings,
    client: Any,
    name: str,
    version: int,
    raw: bytes,
    manifest: dict[str, Any],
    aliases: list[AliasInfo] | None = None,
) -> None:
    """Refuse a manifest changed since it was registered: its signature (with :data:`HMAC_KEY_VAR`),
    the digest every alias pointing at it pinned, and the files its layout cannot do without."""
    where = f"{name}:{version} ({settings.uri(version_key(settings, name, version) + MANIFEST)})"
    fix = "restore the manifest from a backup, or register the run again"
    key = _hmac_key()
    if key is not None:
        signature = manifest.get(SIGNATURE)
        if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
            raise StorageError(Problem(where, f"the manifest is not signed, and {HMAC_KEY_VAR} is set", fix))
        if not hmac.compare_digest(signature["value"], _signature(manifest, key)):
            raise StorageError(
                Problem(
                    where, "the manifest's signature does not match: it was changed after registration, or signed with another key", fix
                )
            )
    digest = hashlib.sha256(raw).hexdigest()
    for info in list_aliases(settings, name, client) if aliases is None else aliases:
        if info.version == version and info.manifest_sha256 not in (None, digest):
            raise StorageError(
                Problem(
                    where,
                    f"the manifest changed after alias '{info.alias}' pinned it (sha256 {digest[:12]}, pinned {info.manifest_sha256[:12]})",
                    fix,
                )
            )
    paths = {entry["path"] for entry in manifest["files"]}
    missing = [path for path in _required_files(manifest) if path not in paths]
    if missing:
        raise StorageError(Problem(where, f"the manifest lists no {', '.join(missing)}, which its layout requires", fix))
    modeling = manifest.get("hf", {}).get("modeling_sha256") if isinstance(manifest.get("hf"), dict) else None
    for entry in manifest["files"]:
        if modeling and entry["path"] == "modeling_adaptflow.py" and entry["sha256"] != modeling:
            raise StorageError(Problem(where, "the manifest's modeling_adaptflow.py is not the file its hf.modeling_sha256 names", fix))


def _required_files(manifest: dict[str, Any]) -> list[str]:
    """Files a version of folder layout 2 cannot load without, by its Hugging Face route (tasks/registry/hf_folder.py)."""
    hf = manifest.get("hf")
    if manifest.get("folder_layout") != 2 or not isinstance(hf, dict):
        return []
    route = hf.get("route")
    required = ["adapter_config.json", "adapter_model.safetensors"] if route in ("peft", "peft_backbone") else ["config.json"]
    if route == "remote_code":
        required.append("modeling_adaptflow.py")
    if route == "peft_backbone":
        required.append("adaptflow/head.safetensors")
    if manifest.get("task") == "sequence_classification":
        required.append("adaptflow/model.json")
    return required


def _cached_version(settings: S3Settings, name: str, version: int, raw: bytes, manifest: dict[str, Any], client: Any) -> Path:
    folder = pull_cache_dir() / hashlib.sha256(raw).hexdigest()
    if folder.is_dir():
        damaged = _cache_damage(folder, raw, manifest)
        if damaged is None:
            return folder
        log.warning("pull cache %s: %s is missing or modified; downloading %s:%d again", folder, damaged, name, version)
        aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.damaged")
        try:
            os.rename(folder, aside)  # atomic: a concurrent pull sees the old folder or none, never half of it
        except FileNotFoundError:
            pass  # another pull moved it first
        shutil.rmtree(aside, ignore_errors=True)
    partial = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.part")
    partial.mkdir(parents=True)
    try:
        _parallel(lambda entry: _fetch_file(settings, client, name, version, manifest, entry, partial), manifest["files"])
        (partial / MANIFEST).write_bytes(raw)
        for path in partial.rglob("*"):
            if path.is_file():
                path.chmod(0o444)  # shared by every pull of this version: not to be edited in place
        _publish(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only left when something failed
    return folder


def _publish(partial: Path, folder: Path) -> None:
    """Rename a complete, verified download into the cache."""
    try:
        os.rename(partial, folder)
    except OSError:
        if not folder.is_dir():
            raise
        # another pull of the same manifest finished first: same verified files, keep those


def _fetch_file(
    settings: S3Settings, client: Any, name: str, version: int, manifest: dict[str, Any], entry: dict[str, Any], dest: Path
) -> None:
    """Download one file of a version into ``dest`` and check its size and sha256."""
    if manifest.get("layout") == LAYOUT:
        key = blob_key(settings, name, entry["sha256"])
        _check_blob_matches(settings, client, key, name, version, entry)
    else:
        key = version_key(settings, name, version) + entry["path"]
    local = dest / safe_relative_path(entry["path"], settings.uri(version_key(settings, name, version)))
    download_file(settings, settings.uri(key), local, client)
    if hash_file(local) != (entry["size"], entry["sha256"]):
        raise StorageError(
            Problem(
                f"file '{entry['path']}' of {name}:{version} ({settings.uri(key)})",
                "the downloaded bytes do not match the manifest's sha256: the stored copy is damaged",
                "register its run folder again (a blob overwritten outside the registry is then replaced), "
                "or restore the object from a backup",
            )
        )


def _check_blob_matches(settings: S3Settings, client: Any, key: str, name: str, version: int, entry: dict[str, Any]) -> None:
    """The blob a file entry names exists and is that file: the registry's size and sha256, before any download."""
    head = _head(settings, client, key, "check a stored file")
    where = f"file '{entry['path']}' of {name}:{version} ({settings.uri(key)})"
    if head is None:
        raise StorageError(
            Problem(where, "its blob is missing", "register its run folder again, or restore the blob from a backup; then pull again")
        )
    stored = (head["ContentLength"], head.get("Metadata", {}).get("sha256", entry["sha256"]))
    if stored != (entry["size"], entry["sha256"]):
        raise StorageError(
            Problem(
                where,
                f"the manifest says {entry['size']} bytes, but the blob holds {stored[0]} bytes of sha256 {stored[1][:12]}: "
                "the manifest does not describe the stored file",
                "restore the manifest from a backup, or register the run again",
            )
        )


def _cache_damage(folder: Path, raw: bytes, manifest: dict[str, Any]) -> str | None:
    """The first file of a cached version that is missing or no longer hashes to its sha256; ``None`` when all are intact.

    Every pull re-hashes the cached files (a byte flipped in place keeps the size), so a
    damaged cache is repaired instead of served.
    """
    try:
        if (folder / MANIFEST).read_bytes() != raw:
            return MANIFEST
    except OSError:
        return MANIFEST
    for entry in manifest["files"]:
        path = folder / entry["path"]
        try:
            if not path.is_file() or hash_file(path) != (entry["size"], entry["sha256"]):
                return entry["path"]
        except StorageError:  # unreadable
            return entry["path"]
    return None


def _copy_out(cached: Path, dest: Path, manifest: dict[str, Any]) -> Path:
    """Copy a cached version into ``dest`` (writable copies; each file appears whole or not at all)."""
    for relative in [entry["path"] for entry in manifest["files"]] + [MANIFEST]:
        target = dest / relative
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached / relative, partial)
            os.replace(partial, target)
        except OSError as exc:  # a file where a folder must go, no permission, a full disk
            raise ConfigError(
                Problem(str(target), f"cannot write the pulled file there ({exc.strerror or exc})", "pass a writable folder to --output")
            ) from None
        finally:
            partial.unlink(missing_ok=True)
    return dest


# ---- aliases ------------------------------------------------------------------------
def get_alias(settings: S3Settings, name: str, alias: str, client: Any = None) -> AliasInfo | None:
    """Where ``name@alias`` points, with the etag to move it; ``None`` when it does not exist."""
    key = alias_key(settings, name, alias)
    client = client or make_client(settings)
    with storage_errors("read the alias", settings.uri(key), settings.endpoint_url):
        try:
            response = client.get_object(Bucket=settings.bucket, Key=key)
        except ClientError as exc:
            if _is_missing_object(exc):
                return None
            raise
        raw = response["Body"].read()
    fix = f"delete the object and set the alias again: adaptflow models promote {name}:VERSION --alias {alias}"
    body = _parse_json(settings, key, raw, fix)
    version, pinned = body.get("version"), body.get("manifest_sha256")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StorageError(Problem(settings.uri(key), "is damaged: it names no version number", fix))
    return AliasInfo(
        name=name,
        alias=alias,
        version=version,
        etag=response["ETag"],
        set_at=str(body.get("set_at", "")),
        reason=str(body.get("reason", "")),
        previous=body.get("previous"),
        manifest_sha256=pinned if isinstance(pinned, str) else None,
    )


def set_alias(
    settings: S3Settings,
    name: str,
    alias: str,
    version: int,
    *,
    expected_etag: str | None,
    reason: str = "",
    client: Any = None,
) -> AliasInfo:
    """Point ``name@alias`` at a committed ``version`` by compare-and-swap.

    ``expected_etag=None`` creates the alias and fails if it exists; otherwise the alias
    must still have that etag (as read with :func:`get_alias`). Raises
    :class:`AliasConflict`, carrying the alias as it now is, when someone else got there
    first: read it again, decide again, retry.
    """
    key = alias_key(settings, name, alias)
    client = client or make_client(settings)
    raw, _ = _read_manifest(settings, name, version, client)
    digest = hashlib.sha256(raw).hexdigest()
    previous = None
    if expected_etag is not None:
        current = get_alias(settings, name, alias, client)
        if current is None or current.etag != expected_etag:
            raise _alias_conflict(name, alias, current, f"cannot point it at version {version}")
        previous = current.version
    document = {"version": version, "previous": previous, "set_at": _now(), "reason": reason, "manifest_sha256": digest}
    condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
    with storage_errors("move the alias", settings.uri(key), settings.endpoint_url):
        try:
            response = client.put_object(
                Bucket=settings.bucket,
                Key=key,
                Body=_serialize(settings, document),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            if _status(exc) in (404, 412):  # 404: AWS's answer to If-Match on a missing key
                current = get_alias(settings, name, alias, client)
                raise _alias_conflict(name, alias, current, f"cannot point it at version {version}") from None
            raise
    return AliasInfo(
        name=name,
        alias=alias,
        version=version,
        etag=response["ETag"],
        set_at=document["set_at"],
        reason=reason,
        previous=previous,
        manifest_sha256=digest,
    )


def delete_alias(settings: S3Settings, name: str, alias: str, *, expected_etag: str | None = None, client: Any = None) -> None:
    """Remove ``name@alias``, only if it still has ``expected_etag`` (default: the etag read now)."""
    key = alias_key(settings, name, alias)
    client = client or make_client(settings)
    if expected_etag is None:
        current = get_alias(settings, name, alias, client)
        if current is None:
            raise StorageError(Problem(f"{name}@{alias}", "no such alias", "`adaptflow models list NAME` shows them"))
        expected_etag = current.etag
    with storage_errors("delete the alias", settings.uri(key), settings.endpoint_url):
        try:
            client.delete_object(Bucket=settings.bucket, Key=key, IfMatch=expected_etag)
        except ClientError as exc:
            if _status(exc) in (404, 412):
                raise _alias_conflict(name, alias, get_alias(settings, name, alias, client), "cannot delete it") from None
            raise


def list_aliases(settings: S3Settings, name: str, client: Any = None) -> list[AliasInfo]:
    """Every alias of ``name``, sorted by alias name."""
    client = client or make_client(settings)
    prefix = model_key(settings, name) + "aliases/"
    aliases = []
    for obj in iter_objects(settings, settings.bucket, prefix, client):
        alias = obj["Key"][len(prefix) :].removesuffix(".json")
        if valid_name(alias):
            info = get_alias(settings, name, alias, client)
            if info is not None:  # deleted since the listing
                aliases.append(info)
    return sorted(aliases, key=lambda info: info.alias)


def _alias_conflict(name: str, alias: str, current: AliasInfo | None, action: str) -> AliasConflict:
    now = f"it now points at version {current.version}" if current else "it does not exist now"
    return AliasConflict(
        Problem(f"{name}@{alias}", f"{action}: it was changed by someone else ({now})", "read it again and retry"),
        current,
    )


# ---- decisions ----------------------------------------------------------------------
def append_decision(settings: S3Settings, name: str, record: dict[str, Any], client: Any = None) -> str:
    """Record a decision (a promotion, a refusal) as a new immutable object; returns its URI.

    No read-modify-write: concurrent writers each add their own object, none is lost.
    """
    validate_name(name)
    client = client or make_client(settings)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    key = f"{decisions_key(settings, name)}{stamp}-{uuid.uuid4().hex[:12]}.json"
    body = _serialize(settings, {**record, "recorded_at": _now()})
    if not _put_new(settings, client, key, body, "record a decision"):
        raise StorageError(Problem(settings.uri(key), "a decision with this id exists already", "record it again"))
    return settings.uri(key)


def list_decisions(settings: S3Settings, name: str, client: Any = None) -> list[dict[str, Any]]:
    """Every recorded decision of ``name``, oldest first."""
    client = client or make_client(settings)
    keys = sorted(obj["Key"] for obj in iter_objects(settings, settings.bucket, decisions_key(settings, name), client))
    records = []
    for key in keys:
        body = _get(settings, client, key, "read a decision")
        if body is not None:
            records.append(_parse_json(settings, key, body, "restore it from a backup, or delete it"))
    return records


# ---- deleting and garbage collection ------------------------------------------------
def delete_version(settings: S3Settings, name: str, version: int, *, force: bool = False, client: Any = None) -> list[str]:
    """Delete a committed version; returns the aliases removed with it (only with ``force``).

    Refused while an alias points at the version, unless ``force`` (the aliases are then
    deleted too, each by compare-and-swap). Leaves a ``_deleted.json`` record first so the
    number is never reused, then deletes the manifest (the version stops being listed),
    then the rest of its folder. Its blobs are reclaimed by :func:`gc`.
    """
    client = client or make_client(settings)
    folder = version_key(settings, name, version)
    _require_committed(settings, client, name, version)
    pointing = [info for info in list_aliases(settings, name, client) if info.version == version]
    if pointing and not force:
        names = ", ".join(f"'{info.alias}'" for info in pointing)
        raise StorageError(
            Problem(
                f"{name}:{version}",
                f"alias {names} points at this version",
                "promote another version to it first, or pass --force to delete the alias too",
            )
        )
    for info in pointing:
        delete_alias(settings, name, info.alias, expected_etag=info.etag, client=client)
    record = {"deleted_at": _now(), "host": socket.gethostname(), "aliases_removed": [info.alias for info in pointing]}
    _put_new(settings, client, folder + TOMBSTONE, json.dumps(record).encode(), "record the deletion")
    _delete_keys(settings, client, [folder + MANIFEST], "delete the manifest")
    rest = [obj["Key"] for obj in iter_objects(settings, settings.bucket, folder, client)]
    _delete_keys(
        settings, client, [key for key in rest if not key.endswith((TOMBSTONE, CLAIM))] + [folder + CLAIM], "delete the version folder"
    )
    return [info.alias for info in pointing]


def gc(settings: S3Settings, name: str | None = None, grace_seconds: float = 3600, dry_run: bool = False, force: bool = False) -> GcReport:
    """Remove abandoned registrations and unreferenced blobs older than ``grace_seconds``.

    One model (``name``) or all of them. Never removes a blob a committed version needs,
    nor anything of a registration whose claim is alive (renewed within :data:`CLAIM_LEASE`)
    or younger than the grace period. ``dry_run`` only reports. A grace period under
    :data:`MIN_GC_GRACE` needs ``force``. Over all models, one whose objects are damaged (or
    that another gc holds) is reported in ``broken`` and the others are still cleaned.
    """
    if grace_seconds < MIN_GC_GRACE.total_seconds() and not force:
        raise ConfigError(
            Problem(
                "grace period (--grace-hours)",
                f"{grace_seconds / 60:g} minutes is below the safe minimum of {MIN_GC_GRACE.total_seconds() / 60:g} minutes",
                "pass --force to use it anyway: a registration then fails (nothing listed) if it stalls for "
                f"over {CLAIM_LEASE.total_seconds():.0f} s",
            )
        )
    client = make_client(settings)
    report = GcReport(dry_run=dry_run)
    grace = timedelta(seconds=grace_seconds)
    if name:
        _gc_model(settings, client, validate_name(name), grace, report)
        return report
    for model in list_models(settings, client):
        try:
            _gc_model(settings, client, model, grace, report)
        except TransientStorageError:
            raise  # the server, not this model: the next model would fail the same way
        except StorageError as exc:
            report.broken.append(str(exc))
    return report


def _gc_model(settings: S3Settings, client: Any, name: str, grace: timedelta, report: GcReport) -> None:
    if report.dry_run:  # deletes nothing: no need to hold registrations back
        lock_etag, now = None, _server_time(_head_bucket(settings, client))
    else:
        lock_etag, now = _take_gc_lock(settings, client, name)
    try:
        folders = _version_folders(settings, client, name)
        in_progress = []
        for folder in (f for f in folders.values() if f.state == "claimed"):
            alive = folder.claim_at is not None and now - folder.claim_at < CLAIM_LEASE
            if alive or now - folder.changed < grace or not _remove_abandoned(settings, client, folder, report.dry_run):
                in_progress.append(folder)  # also a claim renewed between the listing and its removal
            else:
                report.removed_versions.append(f"{name}:{folder.version}")
        if in_progress:
            versions = ", ".join(str(f.version) for f in in_progress)
            report.skipped.append(f"{name}: registration of version {versions} in progress; blobs not swept")
            return
        needed = _referenced_blobs(settings, client, name, folders)
        _sweep_blobs(settings, client, name, needed, now - grace, report)
        _abort_stale_uploads(settings, client, name, now - grace, report)
    finally:
        if lock_etag is not None:
            _release_gc_lock(settings, client, name, lock_etag)


def _remove_abandoned(settings: S3Settings, client: Any, folder: _VersionFolder, dry_run: bool) -> bool:
    """Remove a dead registration's folder, its claim first and only as listed (If-Match): ``False`` if it was renewed."""
    if dry_run:
        return True
    if folder.claim_etag is not None and not _delete_if_unchanged(settings, client, folder.claim_key, folder.claim_etag):
        return False
    _delete_keys(settings, client, [key for key in folder.keys if key != folder.claim_key], "remove an abandoned registration")
    return True


@dataclass
class _VersionFolder:
    version: int
    keys: list[str]
    changed: datetime
    """Newest LastModified in the folder."""
    state: str = "claimed"
    """'claimed' (no manifest), 'committed' or 'deleted' (a tombstone)."""
    claim_key: str = ""
    claim_etag: str | None = None
    claim_at: datetime | None = None
    """When ``_claim.json`` was last written: the lease of a running registration."""


def _version_folders(settings: S3Settings, client: Any, name: str) -> dict[int, _VersionFolder]:
    prefix = versions_key(settings, name)
    folders: dict[int, _VersionFolder] = {}
    for obj in iter_objects(settings, settings.bucket, prefix, client):
        number, _, rest = obj["Key"][len(prefix) :].partition("/")
        if not number.isdigit():
            continue
        folder = folders.setdefault(int(number), _VersionFolder(int(number), [], obj["LastModified"]))
        folder.keys.append(obj["Key"])
        folder.changed = max(folder.changed, obj["LastModified"])
        if rest == CLAIM:
            folder.claim_key, folder.claim_etag, folder.claim_at = obj["Key"], obj["ETag"], obj["LastModified"]
        elif rest == MANIFEST:
            folder.state = "committed"
        elif rest == TOMBSTONE and folder.state != "committed":
            folder.state = "deleted"
    return folders


def _referenced_blobs(settings: S3Settings, client: Any, name: str, folders: dict[int, _VersionFolder]) -> set[str]:
    needed: set[str] = set()
    for folder in folders.values():
        if folder.state == "committed":
            _, manifest = _read_manifest(settings, name, folder.version, client)
            if manifest.get("layout") == LAYOUT:
                needed |= {entry["sha256"] for entry in manifest["files"]}
    return needed


def _sweep_blobs(settings: S3Settings, client: Any, name: str, needed: set[str], cutoff: datetime, report: GcReport) -> None:
    prefix = blobs_key(settings, name)
    unused = [
        obj
        for obj in iter_objects(settings, settings.bucket, prefix, client)
        if obj["Key"][len(prefix) :] not in needed and obj["LastModified"] < cutoff
    ]
    report.removed_blobs += [settings.uri(obj["Key"]) for obj in unused]
    report.freed_bytes += sum(obj["Size"] for obj in unused)
    # upload markers left by registrations that died (no claim is alive when the sweep runs)
    markers = [obj["Key"] for obj in iter_objects(settings, settings.bucket, model_key(settings, name) + UPLOADS, client)]
    if not report.dry_run:
        _delete_keys(settings, client, [obj["Key"] for obj in unused] + markers, "remove an unused blob")


def _abort_stale_uploads(settings: S3Settings, client: Any, name: str, cutoff: datetime, report: GcReport) -> None:
    """Multipart uploads of blobs that a crashed registration left open (they hold storage)."""
    prefix = blobs_key(settings, name)
    with storage_errors("list unfinished uploads", settings.uri(prefix), settings.endpoint_url):
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=settings.bucket, Prefix=prefix)
        stale = [upload for page in pages for upload in page.get("Uploads", []) if upload["Initiated"] < cutoff]
        report.aborted_uploads += len(stale)
        if not report.dry_run:
            for upload in stale:
                client.abort_multipart_upload(Bucket=settings.bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _take_gc_lock(settings: S3Settings, client: Any, name: str) -> tuple[str, datetime]:
    """Write ``_gc.json`` (or replace a stale one); returns its etag and the server's time."""
    key = model_key(settings, name) + GC_LOCK
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()}).encode()
    with storage_errors("start the gc", settings.uri(key), settings.endpoint_url):
        try:
            response = client.put_object(Bucket=settings.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if _status(exc) != 412:
                raise
            held = _head(settings, client, key, "read the gc lock")
            if held is None or _server_time(held) - held["LastModified"] <= GC_LOCK_TTL:
                raise StorageError(
                    Problem(
                        settings.uri(key),
                        f"another gc of model '{name}' is running",
                        f"wait for it; if none runs, the lock expires {GC_LOCK_TTL} after it was taken",
                    )
                ) from None
            response = client.put_object(Bucket=settings.bucket, Key=key, Body=body, IfMatch=held["ETag"])
    return response["ETag"], _server_time(response)


def _release_gc_lock(settings: S3Settings, client: Any, name: str, etag: str) -> None:
    key = model_key(settings, name) + GC_LOCK
    with storage_errors("end the gc", settings.uri(key), settings.endpoint_url):
        client.delete_object(Bucket=settings.bucket, Key=key, IfMatch=etag)


def _delete_keys(settings: S3Settings, client: Any, keys: list[str], action: str) -> None:
    """Delete objects one by one, in order (the caller's order is the safe one)."""
    for key in keys:
        with storage_errors(action, settings.uri(key), settings.endpoint_url):
            client.delete_object(Bucket=settings.bucket, Key=key)


# ---- small S3 helpers -----------------------------------------------------------------
def _parallel(work: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """``work`` on every item, :data:`WORKERS` at a time; the first error is raised."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()  # queued work is dropped; running work ends before the pool exits
            raise


def _head(settings: S3Settings, client: Any, key: str, action: str) -> dict[str, Any] | None:
    """HeadObject, or ``None`` when there is no such object."""
    with storage_errors(action, settings.uri(key), settings.endpoint_url):
        try:
            return client.head_object(Bucket=settings.bucket, Key=key)
        except ClientError as exc:
            if _is_missing_object(exc):
                return None
            raise


def _get(settings: S3Settings, client: Any, key: str, action: str) -> bytes | None:
    """An object's bytes, or ``None`` when there is no such object."""
    with storage_errors(action, settings.uri(key), settings.endpoint_url):
        try:
            return client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _is_missing_object(exc):
                return None
            raise


def _head_bucket(settings: S3Settings, client: Any) -> dict[str, Any]:
    with storage_errors("reach the bucket", f"s3://{settings.bucket}", settings.endpoint_url):
        return client.head_bucket(Bucket=settings.bucket)


def _server_time(response: dict[str, Any]) -> datetime:
    """The S3 server's clock (the ``Date`` header): ages are measured on it, not on ours."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(date) if date else datetime.now(timezone.utc)


def _is_missing_object(exc: ClientError) -> bool:
    """An S3 server's "no such key" (not a missing bucket, not a 404 from something that is not S3)."""
    return _status(exc) == 404 and exc.response.get("Error", {}).get("Code") != "NoSuchBucket" and is_s3_answer(exc)


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _base64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
