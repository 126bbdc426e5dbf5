"""S3 settings: where AdaptFlow's objects live, and where that is configured.

Rules, first match wins (:func:`resolve_settings`, also ``S3Settings.resolve()``):

1. ``ADAPTFLOW_S3_BLOCK`` names a Prefect block (:mod:`adaptflow.tasks.storage.credentials`):
   its endpoint and keys; ``ADAPTFLOW_S3_BUCKET`` / ``ADAPTFLOW_S3_PREFIX`` still choose
   the bucket and prefix when set.
2. The environment, when it names an endpoint (``ADAPTFLOW_S3_ENDPOINT_URL``,
   ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``) or credentials (both AWS keys, or
   ``AWS_PROFILE``).
3. Otherwise the running local stack (``adaptflow stack up``), read from its connection
   files (:mod:`adaptflow.tasks.storage.local_stack`); when it is not running, a
   :class:`StorageError` saying what to set.

Settings never come from flow parameters, and the secret key never appears in a repr, a
log line or an error message. This module also holds the one message for an ``s3://``
input given when no S3 storage is configured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from adaptflow.tasks.errors import Problem, StorageError
from adaptflow.tasks.storage.credentials import read_block
from adaptflow.tasks.storage.local_stack import StackFiles

DEFAULT_BUCKET = "adaptflow"
DEFAULT_REGION = "us-east-1"
ENDPOINT_VARS = ("ADAPTFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
S3_SCHEME = "s3://"
NOTHING_CONFIGURED_FIX = (
    "run `adaptflow stack up` for a local S3 server, or set ADAPTFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)


def is_s3_uri(ref: str | None) -> bool:
    """Whether ``ref`` names an S3 object or folder (``s3://...``)."""
    return bool(ref) and ref.startswith(S3_SCHEME)


def s3_not_configured(uri: str) -> Problem:
    """The problem to report when ``uri`` is on S3 but no way to fetch it was configured."""
    return Problem(uri, "is on S3 but no S3 storage is configured", "set ADAPTFLOW_S3_ENDPOINT_URL and the S3 keys")


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 objects of AdaptFlow live and how to sign requests to them."""

    endpoint_url: str | None
    """S3 API address, e.g. ``http://127.0.0.1:8333``; ``None`` means AWS S3 itself."""
    bucket: str = DEFAULT_BUCKET
    """Bucket holding the registry and run artifacts."""
    prefix: str = ""
    """Key prefix (a folder) inside the bucket, without leading or trailing '/'."""
    region: str = DEFAULT_REGION
    """Signing region."""
    access_key_id: str | None = None
    """Access key id; ``None`` lets boto3 use its own credential chain (profile, role)."""
    secret_access_key: str | None = field(default=None, repr=False)
    """Secret key: never printed."""
    session_token: str | None = field(default=None, repr=False)
    """Temporary-credential token (AWS STS), if any: never printed."""
    source: str = "environment"
    """Where these settings came from, for messages: 'environment' or 'local stack'."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.strip("/"))

    # ---- construction ---------------------------------------------------------
    @classmethod
    def resolve(cls) -> S3Settings:
        """Settings from a Prefect block, else the environment, else the running local stack.

        A block named by ``ADAPTFLOW_S3_BLOCK`` wins; then environment variables: ``ADAPTFLOW_S3_ENDPOINT_URL`` (or
        ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), ``ADAPTFLOW_S3_BUCKET``,
        ``ADAPTFLOW_S3_PREFIX``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
        ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``. When neither an endpoint nor
        credentials (keys or ``AWS_PROFILE``) are set, the endpoint and keys of the
        local stack (``adaptflow stack up``) are used if it is running.
        """
        return resolve_settings()

    # ---- derived values -------------------------------------------------------
    def key(self, *parts: str) -> str:
        """The object key for ``parts`` under this settings' prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def endpoint_label(self) -> str:
        return self.endpoint_url or "AWS S3"

    def redacted(self) -> dict[str, Any]:
        """A dict safe to log: the secret and the session token are masked."""
        return {
            "endpoint_url": self.endpoint_url,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": "***" if self.secret_access_key else None,
            "session_token": "***" if self.session_token else None,
            "source": self.source,
        }


def resolve_settings() -> S3Settings:
    """Settings from a Prefect block, else the environment, else the running local stack (see the module docstring)."""
    block = settings_from_block()  # a Prefect block named by ADAPTFLOW_S3_BLOCK wins when set
    if block is not None:
        return block
    env = _environment()
    endpoint = next((env[name] for name in ENDPOINT_VARS if name in env), None)
    access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(access_key) != bool(secret_key):
        missing = "AWS_SECRET_ACCESS_KEY" if access_key else "AWS_ACCESS_KEY_ID"
        raise StorageError(Problem("environment", f"{missing} is not set", "set both keys or neither"))
    settings = S3Settings(
        endpoint_url=endpoint,
        bucket=env.get("ADAPTFLOW_S3_BUCKET", DEFAULT_BUCKET),
        prefix=env.get("ADAPTFLOW_S3_PREFIX", ""),
        region=env.get("AWS_DEFAULT_REGION", env.get("AWS_REGION", DEFAULT_REGION)),
        access_key_id=access_key,
        secret_access_key=secret_key,
        session_token=env.get("AWS_SESSION_TOKEN"),
    )
    if endpoint or access_key or "AWS_PROFILE" in env:
        return settings
    return _from_local_stack(settings)


def settings_from_block(block_ref: str | None = None) -> S3Settings | None:
    """S3 settings from the block named by ``block_ref`` (default: ``$ADAPTFLOW_S3_BLOCK``); None if unset."""
    block = read_block(block_ref)
    if block is None:
        return None
    env = _environment()
    return S3Settings(
        endpoint_url=block.endpoint_url,
        bucket=env.get("ADAPTFLOW_S3_BUCKET", block.bucket or DEFAULT_BUCKET),
        prefix=env.get("ADAPTFLOW_S3_PREFIX", block.prefix),
        region=block.region or DEFAULT_REGION,
        access_key_id=block.access_key_id,
        secret_access_key=block.secret_access_key,
        session_token=block.session_token,
        source=block.source,
    )


def _environment() -> dict[str, str]:
    """The environment variables that are set to something (an empty value counts as unset)."""
    return {name: value for name, value in os.environ.items() if value}


def _from_local_stack(settings: S3Settings) -> S3Settings:
    files = StackFiles()
    info = files.running()
    if info is None:
        raise StorageError(Problem("S3 settings", "no S3 endpoint or credentials configured", NOTHING_CONFIGURED_FIX))
    credentials = files.load_credentials()
    return replace(
        settings,
        endpoint_url=info.endpoint_url,
        access_key_id=credentials["access_key_id"],
        secret_access_key=credentials["secret_access_key"],
        source="local stack",
    )
