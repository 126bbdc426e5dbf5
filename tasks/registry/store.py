"""The model registry on S3: numbered, immutable versions over content-addressed blobs.

Layout, under ``s3://BUCKET/PREFIX/models/NAME/``::

    blobs/sha256/<hex>                  file bodies, named by their sha256: a file shared by
                                        several versions (tokenizer, frozen base) is stored once
    versions/000007/_claim.json         who allocated version 7 (conditional write)
    versions/000007/manifest.json       written last, the commit marker: metadata and
                                        ``files``, one {"path", "size", "sha256"} per file
    versions/000007/_deleted.json       left by `delete_version`, so number 7 is never reused
    aliases/champion.json               {"version", "previous", "set_at", "reason"}
    decisions/<UTC time>-<id>.json      one immutable object per recorded decision
    _gc.json                            exists while `gc` sweeps this model's blobs

**Registering** hashes every file, claims the next number with a conditional
``PutObject(IfNoneMatch="*")`` of its ``_claim.json`` (concurrent registrations never share
one), uploads the blobs that are not there yet (HEAD first; four files at a time,
multipart above 16 MiB) and writes the manifest last, again with ``IfNoneMatch="*"``.
A single-request upload carries the file's sha256, which the server verifies; multipart
parts carry their own. Each blob keeps its sha256 in its metadata: one without it (written
outside the registry) is uploaded again. Only versions with a manifest are listed or pulled. A
failed registration deletes its manifest (if written) and its claim; blobs it uploaded
stay until :func:`gc` finds them referenced by no manifest (content-addressed, so they
are harmless and a retry reuses them).

**Aliases** move by compare-and-swap: ``If-None-Match: *`` to create one, ``If-Match:
<etag>`` to move or delete it. A writer that lost the race gets :class:`AliasConflict`
with the alias as it now is; nothing is ever read-then-written blindly.

**Pulling** fills ``$ADAPTFLOW_HOME/cache/pulled/<sha256 of the manifest>/``: files are
downloaded into a temporary folder, each checked against its sha256, then the folder is
renamed into place, so the cache only ever holds complete, verified versions (read-only).

**gc** removes version folders holding a claim but no manifest, and blobs no committed
manifest references, once older than a grace period. It cannot race a registration that
reuses an old blob: gc writes ``_gc.json`` *before* listing claims and skips the blob sweep
while any registration is in progress, and a registration writes its claim *before*
checking ``_gc.json`` and waits while one exists; so one of the two always sees the other.
The grace period must exceed the longest registration.

Versions registered before blobs existed (a manifest without ``"layout": 2``) keep their
files inside the version folder; they are still listed, pulled and deleted.

Plain functions, no Prefect: the flows wrap them in thin tasks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from adaptflow.tasks.config import NAME_PATTERN, adaptflow_home
from adaptflow.tasks.errors import ConfigError, Problem, StorageError
from adaptflow.tasks.storage.s3 import (
    TRANSFER_CONFIG,
    S3Settings,
    delete_quietly,
    download_file,
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
RESERVED_FILES = frozenset({MANIFEST, CLAIM, TOMBSTONE})
RESERVED_KEYS = frozenset({"name", "version", "registered_at", "files", "layout"})
LAYOUT = 2
"""``manifest["layout"]`` of versions whose files are blobs (absent: files in the version folder)."""
MAX_CLAIM_ATTEMPTS = 10_000
WORKERS = 4
"""Files uploaded or downloaded at the same time."""
GC_LOCK_TTL = timedelta(minutes=10)
"""A ``_gc.json`` older than this is left over by a crashed gc: ignored and replaced."""
GC_POLL_S = 1.0
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


@dataclass(frozen=True)
class _SourceFile:
    path: Path
    relative: str
    size: int
    sha256: str

    def entry(self) -> dict[str, Any]:
        return {"path": self.relative, "size": self.size, "sha256": self.sha256}


# ---- naming -----------------------------------------------------------------------
def validate_name(name: str, what: str = "model name") -> str:
    """A registry name: 1-63 lowercase letters, digits, '.', '_', '-' (no '/', no '..')."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise StorageError(
            Problem(
                f"{what} {name!r}",
                "not a valid registry name",
                "use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        )
    return name


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
    ``manifest`` plus ``name``, ``version``, ``registered_at``, ``layout`` and ``files``
    (path, size, sha256 of each file). On any failure the manifest and the claim are
    deleted and the error is raised; no partial version is ever listed.
    """
    validate_name(name)
    _check_caller_manifest(settings, manifest)
    files = describe_files(Path(source_dir))
    client = client or make_client(settings)
    version = claim_next_version(settings, name, client)
    folder = version_key(settings, name, version)
    written: list[str] = []
    try:
        _wait_while_gc_runs(settings, client, name)
        uploaded = sum(_parallel(lambda source: _upload_blob(settings, client, name, source), files))
        document = {
            **manifest,
            "name": name,
            "version": version,
            "registered_at": _now(),
            "layout": LAYOUT,
            "files": [source.entry() for source in files],
        }
        written.append(folder + MANIFEST)  # before the call: a timed-out write may still have landed
        if not _put_new(settings, client, folder + MANIFEST, _serialize(settings, document), "write the manifest"):
            written.pop()  # not ours: never delete another writer's manifest
            raise StorageError(Problem(settings.uri(folder), "another writer committed this version folder", "register again"))
    except BaseException:
        _roll_back(settings, client, folder, written)
        raise
    return RegisteredVersion(
        name=name,
        version=version,
        uri=settings.uri(folder),
        manifest_uri=settings.uri(folder + MANIFEST),
        files=document["files"],
        uploaded_bytes=uploaded,
        total_bytes=sum(source.size for source in files),
    )


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
    """Take the next free version number with a conditional write of its ``_claim.json``."""
    version = _highest_version_folder(settings, name, client) + 1
    claim = {"name": name, "host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(MAX_CLAIM_ATTEMPTS):
        key = version_key(settings, name, version) + CLAIM
        body = json.dumps({**claim, "version": version, "claimed_at": _now()}).encode()
        if _put_new(settings, client, key, body, "claim a version number"):
            return version
        version += 1  # another writer has it
    raise StorageError(Problem(settings.uri(versions_key(settings, name)), f"no free version after {MAX_CLAIM_ATTEMPTS} tries"))


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


def _upload_blob(settings: S3Settings, client: Any, name: str, source: _SourceFile) -> int:
    """Store ``source`` as a blob unless an intact copy exists; returns the bytes stored."""
    key = blob_key(settings, name, source.sha256)
    existing = _head(settings, client, key, "check for a stored copy")
    if existing is not None and _written_by_registry(existing, source):
        return 0
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


def _put_new(settings: S3Settings, client: Any, key: str, body: bytes, action: str) -> bool:
    """PutObject only if ``key`` does not exist yet; ``False`` when it does."""
    with storage_errors(action, settings.uri(key), settings.endpoint_url):
        try:
            client.put_object(Bucket=settings.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
        except ClientError as exc:
            if _status(exc) == 412:
                return False
            raise
    return True


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


def _roll_back(settings: S3Settings, client: Any, folder: str, written: list[str]) -> None:
    """Delete a failed version's manifest, then release its number.

    Best effort, never raising: the error that caused the roll-back is the one to see.
    If the manifest cannot be deleted, the claim is kept so the number is never reused;
    a claim that cannot be deleted (server down) is removed later by :func:`gc`.
    """
    left = delete_quietly(client, settings.bucket, list(reversed(written)))
    if left:
        log.warning("registration of %s failed; its manifest could not be removed", settings.uri(folder))
        return
    delete_quietly(client, settings.bucket, [folder + CLAIM])


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
    return sorted(name for name in names if NAME_PATTERN.match(name) and ".." not in name)


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
    """The manifest of a committed version."""
    return json.loads(_manifest_bytes(settings, name, version, client or make_client(settings)))


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
        what = f"version {version} of model '{name}' was deleted ({json.loads(deleted).get('deleted_at', '?')})"
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
    client = client or make_client(settings)
    raw = _manifest_bytes(settings, name, version, client)
    manifest = json.loads(raw)
    cached = _cached_version(settings, name, version, raw, manifest, client)
    return cached if dest_dir is None else _copy_out(cached, Path(dest_dir), manifest)


def _cached_version(settings: S3Settings, name: str, version: int, raw: bytes, manifest: dict[str, Any], client: Any) -> Path:
    folder = pull_cache_dir() / hashlib.sha256(raw).hexdigest()
    if folder.is_dir():
        if _cache_intact(folder, manifest):
            return folder
        log.warning("pull cache %s is incomplete or modified; downloading %s:%d again", folder, name, version)
        shutil.rmtree(folder)
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


def _cache_intact(folder: Path, manifest: dict[str, Any]) -> bool:
    """Cheap check of a cached version: every file there with its size (full sha256s were checked when written)."""
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
    return True


def _copy_out(cached: Path, dest: Path, manifest: dict[str, Any]) -> Path:
    """Copy a cached version into ``dest`` (writable copies; each file appears whole or not at all)."""
    for relative in [entry["path"] for entry in manifest["files"]] + [MANIFEST]:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            shutil.copyfile(cached / relative, partial)
            os.replace(partial, target)
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
        body = json.loads(response["Body"].read())
    return AliasInfo(
        name=name,
        alias=alias,
        version=int(body["version"]),
        etag=response["ETag"],
        set_at=body.get("set_at", ""),
        reason=body.get("reason", ""),
        previous=body.get("previous"),
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
    _require_committed(settings, client, name, version)
    previous = None
    if expected_etag is not None:
        current = get_alias(settings, name, alias, client)
        if current is None or current.etag != expected_etag:
            raise _alias_conflict(name, alias, current, f"cannot point it at version {version}")
        previous = current.version
    document = {"version": version, "previous": previous, "set_at": _now(), "reason": reason}
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
        name=name, alias=alias, version=version, etag=response["ETag"], set_at=document["set_at"], reason=reason, previous=previous
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
        if NAME_PATTERN.match(alias):
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
            records.append(json.loads(body))
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


def gc(settings: S3Settings, name: str | None = None, grace_seconds: float = 3600, dry_run: bool = False) -> GcReport:
    """Remove abandoned registrations and unreferenced blobs older than ``grace_seconds``.

    One model (``name``) or all of them. Never removes a blob a committed version needs,
    nor anything of a registration younger than the grace period. ``dry_run`` only reports.
    """
    client = make_client(settings)
    report = GcReport(dry_run=dry_run)
    for model in [validate_name(name)] if name else list_models(settings, client):
        _gc_model(settings, client, model, timedelta(seconds=grace_seconds), report)
    return report


def _gc_model(settings: S3Settings, client: Any, name: str, grace: timedelta, report: GcReport) -> None:
    if report.dry_run:  # deletes nothing: no need to hold registrations back
        lock_etag, now = None, _server_time(_head_bucket(settings, client))
    else:
        lock_etag, now = _take_gc_lock(settings, client, name)
    try:
        folders = _version_folders(settings, client, name)
        in_progress = [f for f in folders.values() if f.state == "claimed" and now - f.changed < grace]
        for folder in folders.values():
            if folder.state == "claimed" and now - folder.changed >= grace:
                report.removed_versions.append(f"{name}:{folder.version}")
                if not report.dry_run:
                    _delete_keys(settings, client, folder.keys_claim_last(), "remove an abandoned registration")
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


@dataclass
class _VersionFolder:
    version: int
    keys: list[str]
    changed: datetime
    """Newest LastModified in the folder."""
    state: str = "claimed"
    """'claimed' (no manifest), 'committed' or 'deleted' (a tombstone)."""

    def keys_claim_last(self) -> list[str]:
        return sorted(self.keys, key=lambda key: key.endswith(CLAIM))


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
        if rest == MANIFEST:
            folder.state = "committed"
        elif rest == TOMBSTONE and folder.state != "committed":
            folder.state = "deleted"
    return folders


def _referenced_blobs(settings: S3Settings, client: Any, name: str, folders: dict[int, _VersionFolder]) -> set[str]:
    needed: set[str] = set()
    for folder in folders.values():
        if folder.state == "committed":
            manifest = json.loads(_manifest_bytes(settings, name, folder.version, client))
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
    if not report.dry_run:
        _delete_keys(settings, client, [obj["Key"] for obj in unused], "remove an unused blob")


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
    return _status(exc) == 404 and exc.response.get("Error", {}).get("Code") != "NoSuchBucket"


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _base64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
