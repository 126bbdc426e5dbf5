"""The model registry on S3: numbered, immutable versions with a manifest.

Layout, under ``s3://BUCKET/PREFIX/``::

    models/NAME/versions/000007/_claim.json     who allocated version 7 (conditional write)
    models/NAME/versions/000007/<model files>   uploaded next, keys relative to the folder
    models/NAME/versions/000007/manifest.json   written last: the commit marker

A version number is taken with a conditional ``PutObject(IfNoneMatch="*")`` of its
``_claim.json``, so concurrent registrations never share one; a version is visible
(listed, pulled) only once its ``manifest.json`` exists, and a failed registration
removes what it wrote. Claims stay after success: deleting one would let a writer
with a stale listing claim the number again and overwrite the files.

Plain functions, no Prefect: the flows wrap them in thin tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tasks.config import NAME_PATTERN
from tasks.errors import Problem, StorageError
from tasks.s3 import (
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
RESERVED_FILES = frozenset({MANIFEST, CLAIM})
RESERVED_KEYS = frozenset({"name", "version", "registered_at", "files"})
MAX_CLAIM_ATTEMPTS = 10_000
_CHUNK = 1 << 20
_MANIFEST_KEY = re.compile(r"^(\d{6,})/manifest\.json$")


@dataclass(frozen=True)
class RegisteredVersion:
    """A version just registered."""

    name: str
    version: int
    uri: str
    """The version folder, ``s3://BUCKET/PREFIX/models/NAME/versions/000007/``."""
    manifest_uri: str
    files: list[dict[str, Any]]
    """One ``{"path", "size", "sha256"}`` per uploaded file, ``path`` relative to the folder."""


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
class _SourceFile:
    path: Path
    relative: str
    size: int
    sha256: str

    def entry(self) -> dict[str, Any]:
        return {"path": self.relative, "size": self.size, "sha256": self.sha256}


# ---- naming -----------------------------------------------------------------------
def validate_name(name: str) -> str:
    """A registry name: 1-63 lowercase letters, digits, '.', '_', '-' (no '/', no '..')."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise StorageError(
            Problem(
                f"model name {name!r}",
                "not a valid registry name",
                "use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        )
    return name


def versions_key(settings: S3Settings, name: str) -> str:
    """Key prefix of every version folder of ``name`` (ends with '/')."""
    return settings.key("models", validate_name(name), "versions") + "/"


def version_key(settings: S3Settings, name: str, version: int) -> str:
    """Key prefix of one version folder (ends with '/')."""
    return f"{versions_key(settings, name)}{version:06d}/"


# ---- registering --------------------------------------------------------------------
def register_version(
    settings: S3Settings, name: str, source_dir: Path, manifest: dict[str, Any], client: Any = None
) -> RegisteredVersion:
    """Upload ``source_dir`` as the next version of ``name`` and commit it with a manifest.

    Every file under ``source_dir`` is uploaded (sub-folders kept) except a top-level
    ``manifest.json`` / ``_claim.json``, whose names the registry owns. The manifest
    written is ``manifest`` plus ``name``, ``version``, ``registered_at`` and ``files``
    (path, size, sha256 of each file). On any failure the objects written so far are
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
        for source in files:
            key = folder + source.relative
            written.append(key)  # before the call: a timed-out upload may still have landed
            with storage_errors(f"upload {source.path}", settings.uri(key), settings.endpoint_url):
                client.upload_file(str(source.path), settings.bucket, key)
        document = {
            **manifest,
            "name": name,
            "version": version,
            "registered_at": _now(),
            "files": [source.entry() for source in files],
        }
        body = _serialize(settings, document)
        written.append(folder + MANIFEST)
        if not _put_new(settings, client, folder + MANIFEST, body, "write the manifest", taken_ok=True):
            written.pop()  # not ours: never delete another writer's manifest
            raise StorageError(
                Problem(settings.uri(folder), "another writer committed this version folder", "register again")
            )
    except BaseException:
        _roll_back(settings, client, folder, written)
        raise
    return RegisteredVersion(
        name=name,
        version=version,
        uri=settings.uri(folder),
        manifest_uri=settings.uri(folder + MANIFEST),
        files=document["files"],
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
        size, digest = _hash_file(path)
        files.append(_SourceFile(path, relative, size, digest))
    if not files:
        raise StorageError(Problem(str(source_dir), "no files to register", "check the model folder"))
    return files


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise StorageError(
            Problem(str(path), f"cannot read ({exc.strerror or exc})", "check the file's permissions")
        ) from exc
    return size, digest.hexdigest()


def claim_next_version(settings: S3Settings, name: str, client: Any) -> int:
    """Take the next free version number with a conditional write of its ``_claim.json``."""
    version = _highest_version_folder(settings, name, client) + 1
    claim = {"name": name, "host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(MAX_CLAIM_ATTEMPTS):
        key = version_key(settings, name, version) + CLAIM
        body = json.dumps({**claim, "version": version, "claimed_at": _now()}).encode()
        if _put_new(settings, client, key, body, "claim a version number", taken_ok=True):
            return version
        version += 1  # another writer has it
    raise StorageError(
        Problem(settings.uri(versions_key(settings, name)), f"no free version after {MAX_CLAIM_ATTEMPTS} tries")
    )


def _highest_version_folder(settings: S3Settings, name: str, client: Any) -> int:
    """The largest version number with a folder (claimed or committed); 0 when none."""
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


def _put_new(settings: S3Settings, client: Any, key: str, body: bytes, action: str, taken_ok: bool = False) -> bool:
    """PutObject only if ``key`` does not exist yet; ``False`` when it does and ``taken_ok``."""
    with storage_errors(action, settings.uri(key), settings.endpoint_url):
        try:
            client.put_object(
                Bucket=settings.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*"
            )
        except ClientError as exc:
            if taken_ok and _status(exc) == 412:
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
            raise StorageError(
                Problem("manifest", "contains the S3 secret key", "keep credentials out of the manifest and config")
            )
    return text.encode()


def _roll_back(settings: S3Settings, client: Any, folder: str, written: list[str]) -> None:
    """Delete a failed version's objects (manifest first), then release its number.

    Best effort, never raising: the error that caused the roll-back is the one to see.
    If an object cannot be deleted, the claim is kept so the number is never reused
    with leftovers in its folder.
    """
    left = delete_quietly(client, settings.bucket, list(reversed(written)))
    if left:
        log.warning("registration of %s failed; %d object(s) could not be removed", settings.uri(folder), len(left))
        return
    delete_quietly(client, settings.bucket, [folder + CLAIM])


# ---- reading ------------------------------------------------------------------------
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
    key = version_key(settings, name, version) + MANIFEST
    client = client or make_client(settings)
    with storage_errors("read the manifest", settings.uri(key), settings.endpoint_url):
        try:
            body = client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _status(exc) == 404 and exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise StorageError(
                    Problem(
                        f"{settings.uri(key)} at {settings.endpoint_label()}",
                        f"model '{name}' has no registered version {version}",
                        "check the name and version (list_versions shows the committed ones)",
                    )
                ) from exc
            raise
    return json.loads(body)


def pull_version(settings: S3Settings, name: str, version: int, dest_dir: Path, client: Any = None) -> Path:
    """Download a committed version's files and manifest into ``dest_dir``, checking each sha256."""
    client = client or make_client(settings)
    manifest = get_manifest(settings, name, version, client)
    folder = version_key(settings, name, version)
    dest_dir = Path(dest_dir)
    for entry in manifest["files"]:
        uri = settings.uri(folder + entry["path"])
        local = dest_dir / safe_relative_path(entry["path"], settings.uri(folder))
        target = download_file(settings, uri, local, client)
        size, digest = _hash_file(target)
        if (size, digest) != (entry["size"], entry["sha256"]):
            raise StorageError(Problem(uri, "downloaded file does not match its manifest checksum", "pull again"))
    (dest_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return dest_dir


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
