"""S3 client and transfers, with errors a user can act on.

Where the settings come from is :mod:`adaptflow.tasks.storage.settings` (the environment,
a Prefect block, or the local stack started by ``adaptflow stack up``). Every S3 call goes through
:func:`storage_errors`, which turns botocore's many exception types into one
:class:`~adaptflow.tasks.errors.StorageError` naming the endpoint, the object and the fix.

No Prefect here: the flows wrap these functions in thin tasks.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.exceptions import Boto3Error, RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from adaptflow.tasks.errors import Problem, StorageError, TransientStorageError
from adaptflow.tasks.storage.settings import (
    DEFAULT_BUCKET,
    ENDPOINT_VARS,  # noqa: F401  (re-exported: importers name it from here)
    S3Settings,
)

log = logging.getLogger(__name__)

KEYS_FIX = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (unset both to use the local stack's keys)"
UNREACHABLE_FIX = "is the server up? run `adaptflow stack up`, or check ADAPTFLOW_S3_ENDPOINT_URL"

_REJECTED_KEY_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable", "InternalError"}
_MIB = 1 << 20

TRANSFER_CONFIG = TransferConfig(multipart_threshold=16 * _MIB, multipart_chunksize=8 * _MIB, max_concurrency=4)
"""Every file transfer: multipart above 16 MiB, 8 MiB parts, 4 parts in flight per file."""


def make_client(settings: S3Settings, *, connect_timeout: float = 5.0, read_timeout: float = 60.0, max_attempts: int = 3) -> Any:
    """A boto3 S3 client: path-style addressing, short connect timeout, a few retries.

    Each call builds its own boto3 session, so clients can be made from several threads.
    """
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=16,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        config=config,
    )


# ---- errors -------------------------------------------------------------------
@contextmanager
def storage_errors(action: str, target: str, endpoint: str | None = None) -> Iterator[None]:
    """Turn any boto3/botocore failure inside the block into one :class:`StorageError`.

    ``action`` is what was being done ("upload the model"), ``target`` the S3 URI
    concerned (``s3://bucket`` for the bucket itself, ``s3://bucket/key`` for an
    object) and ``endpoint`` the server address (``None``: AWS S3).
    """
    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        raise translate_error(exc, action, target, endpoint) from exc


def translate_error(exc: BaseException, action: str, target: str, endpoint: str | None = None) -> StorageError:
    """The :class:`StorageError` a user should see for a boto3/botocore exception.

    Failures that may pass by themselves (connection lost, timeout, 5xx, throttling) are
    :class:`TransientStorageError`, the only kind worth retrying.
    """
    exc = _unwrap(exc)
    where = f"{target} at {endpoint or 'AWS S3'}"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(Problem(where, f"cannot {action}: no S3 credentials found", KEYS_FIX))
    if isinstance(exc, ReadTimeoutError):
        return TransientStorageError(Problem(where, f"cannot {action}: the server did not answer in time", UNREACHABLE_FIX))
    if isinstance(exc, (BotoConnectionError, ConnectionClosedError)):
        return TransientStorageError(Problem(where, f"cannot {action}: the S3 endpoint is unreachable", UNREACHABLE_FIX))
    if isinstance(exc, ClientError):
        kind = TransientStorageError if is_transient(exc) else StorageError
        return kind(_client_error_problem(exc, action, target, where))
    return StorageError(Problem(where, f"cannot {action}: {exc}"))


def is_transient(exc: ClientError) -> bool:
    """An S3 answer that may differ on a retry: a 5xx status or throttling."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or status == 429 or str(exc.response.get("Error", {}).get("Code", "")) in _TRANSIENT_CODES


def is_s3_answer(exc: ClientError) -> bool:
    """The error came from an S3 server: an S3 error code, or the ``x-amz-*`` headers every S3 server sends.

    A plain web server's 404 (a wrong endpoint URL) carries neither, and must not read as a missing object.
    """
    code = str(exc.response.get("Error", {}).get("Code", ""))
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return (bool(code) and not code.isdigit()) or any(header.lower().startswith("x-amz-") for header in headers)


def _unwrap(exc: BaseException) -> BaseException:
    """The botocore error behind boto3's transfer wrappers, which keep it only as context."""
    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return _unwrap(exc.last_exception)
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, (ClientError, BotoCoreError)):
        return exc.__context__
    return exc


def _client_error_problem(exc: ClientError, action: str, target: str, where: str) -> Problem:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    bucket, key = _split_target(target)
    if status == 404 and not is_s3_answer(exc):
        return Problem(
            where,
            f"cannot {action}: the endpoint answered HTTP 404 without any S3 error, so it is not an S3 server",
            "set ADAPTFLOW_S3_ENDPOINT_URL to the S3 API's address (the local stack's: `adaptflow stack env`)",
        )
    if code in _REJECTED_KEY_CODES:
        return Problem(where, f"cannot {action}: the S3 server rejected the credentials ({code})", KEYS_FIX)
    if code in _DENIED_CODES or status == 403:
        return Problem(where, f"cannot {action}: access denied (wrong keys, or no permission for this bucket/action)", KEYS_FIX)
    if code == "NoSuchBucket" or (not key and (code in _NOT_FOUND_CODES or status == 404)):
        return Problem(
            where,
            f"cannot {action}: bucket '{bucket}' does not exist",
            f"create it (the local stack creates '{DEFAULT_BUCKET}') or set ADAPTFLOW_S3_BUCKET",
        )
    if code in _NOT_FOUND_CODES or status == 404:
        return Problem(where, f"cannot {action}: no such object", "check the URI, the bucket and ADAPTFLOW_S3_PREFIX")
    if code == "PreconditionFailed" or status == 412:
        return Problem(where, f"cannot {action}: the object already exists (conditional write refused)")
    if code == "InvalidBucketName":
        return Problem(where, f"cannot {action}: '{bucket}' is not a valid bucket name", "fix ADAPTFLOW_S3_BUCKET")
    message = error.get("Message") or "no details"
    return Problem(where, f"cannot {action}: S3 answered {code or status} ({message})")


def _split_target(target: str) -> tuple[str, str]:
    if not target.startswith("s3://"):
        return target, ""
    bucket, _, key = target[len("s3://") :].partition("/")
    return bucket, key


# ---- URIs and transfers ---------------------------------------------------------
def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")`` (the key may be empty)."""
    if not uri.startswith("s3://"):
        raise StorageError(Problem(uri, "not an s3:// URI", "write it as s3://BUCKET/KEY"))
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(Problem(uri, "the URI names no bucket", "write it as s3://BUCKET/KEY"))
    return bucket, key


def check_access(settings: S3Settings, client: Any = None) -> None:
    """Preflight, before any heavy work: the bucket exists and we can write, read, delete.

    Unreachable servers, rejected keys, a missing bucket or read-only keys surface here
    as a :class:`StorageError` instead of after hours of training.
    """
    client = client or make_client(settings)
    endpoint = settings.endpoint_url
    with storage_errors("reach the bucket", f"s3://{settings.bucket}", endpoint):
        client.head_bucket(Bucket=settings.bucket)
    probe = settings.key(".adaptflow-probe", uuid.uuid4().hex)
    with storage_errors("write a probe object", settings.uri(probe), endpoint):
        client.put_object(Bucket=settings.bucket, Key=probe, Body=b"adaptflow access check")
    try:
        with storage_errors("read the probe object back", settings.uri(probe), endpoint):
            client.get_object(Bucket=settings.bucket, Key=probe)["Body"].read()
    except StorageError:
        delete_quietly(client, settings.bucket, [probe])
        raise
    with storage_errors("delete the probe object", settings.uri(probe), endpoint):
        client.delete_object(Bucket=settings.bucket, Key=probe)


def delete_quietly(client: Any, bucket: str, keys: list[str]) -> list[str]:
    """Best-effort clean-up while another error is on its way up; returns the keys left behind.

    Used only where raising would hide the original, more useful error; every failure
    is logged as a warning naming the object.
    """
    left: list[str] = []
    for key in keys:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not delete s3://%s/%s during clean-up: %s", bucket, key, exc)
            left.append(key)
    return left


def iter_objects(settings: S3Settings, bucket: str, prefix: str, client: Any = None) -> Iterator[dict[str, Any]]:
    """Every object (``Key``, ``Size``, ``LastModified``, ...) under ``prefix``, all pages."""
    client = client or make_client(settings)
    with storage_errors("list objects", f"s3://{bucket}/{prefix}", settings.endpoint_url):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])


def upload_file(settings: S3Settings, path: Path, uri: str, client: Any = None) -> str:
    """Upload one local file to ``uri`` (multipart when large); returns the URI."""
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise StorageError(Problem(uri, "an upload needs a full object key", "write it as s3://BUCKET/path/to/file"))
    client = client or make_client(settings)
    with storage_errors(f"upload {path}", uri, settings.endpoint_url):
        client.upload_file(str(path), bucket, key, Config=TRANSFER_CONFIG)
    return uri


def download_file(settings: S3Settings, uri: str, dest: Path, client: Any = None) -> Path:
    """Download one object to ``dest`` (a file path, or an existing folder to put it in).

    The file appears complete or not at all: it is written aside, then renamed.
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise StorageError(Problem(uri, "names a folder, not an object", "use download_prefix for folders"))
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / PurePosixPath(key).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    client = client or make_client(settings)
    try:
        with storage_errors("download", uri, settings.endpoint_url):
            client.download_file(bucket, key, str(partial), Config=TRANSFER_CONFIG)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def download_prefix(settings: S3Settings, uri: str, dest_dir: Path, client: Any = None) -> Path:
    """Download every object under the ``uri`` prefix into ``dest_dir``, keeping sub-folders."""
    bucket, key = parse_s3_uri(uri)
    prefix = f"{key.rstrip('/')}/" if key.strip("/") else ""
    client = client or make_client(settings)
    dest_dir = Path(dest_dir)
    count = 0
    for obj in iter_objects(settings, bucket, prefix, client):
        relative = obj["Key"][len(prefix) :]
        if not relative or relative.endswith("/"):
            continue  # folder markers hold no data
        download_file(settings, f"s3://{bucket}/{obj['Key']}", dest_dir / safe_relative_path(relative, uri), client)
        count += 1
    if count == 0:
        raise StorageError(Problem(f"{uri} at {settings.endpoint_label()}", "no objects under this prefix", "check the URI"))
    return dest_dir


def safe_relative_path(relative: str, uri: str) -> Path:
    """A key below a prefix as a relative local path; refuses keys that would escape the folder.

    ``uri`` is the prefix the key was found under (for the message).
    """
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or any(part in ("..", ".") for part in parts):
        where = f"{uri.rstrip('/')}/{relative}"
        raise StorageError(Problem(where, "unsafe object key (absolute or with '..')", "rename the object"))
    return Path(*parts)
