"""S3 settings from a Prefect block, for deployments that keep their keys in Prefect.

``ADAPTFLOW_S3_BLOCK`` names a saved ``prefect-aws`` block as ``TYPE/NAME``:

- ``aws-credentials/NAME``: an ``AwsCredentials`` block: access key id, secret key,
  session token, region, and the endpoint in ``aws_client_parameters.endpoint_url``;
- ``minio-credentials/NAME``: a ``MinIOCredentials`` block (root user and password);
- ``s3-bucket/NAME``: an ``S3Bucket`` block: its bucket and ``bucket_folder`` (as the
  prefix) plus the credentials block inside it.

A bare ``NAME`` means ``aws-credentials/NAME``. When the variable is set the block is
the source of the endpoint and keys; ``ADAPTFLOW_S3_BUCKET`` / ``ADAPTFLOW_S3_PREFIX``
still choose the bucket and prefix when set. Secrets stay in ``SecretStr`` until they
go into :class:`BlockCredentials` and then :class:`~adaptflow.tasks.storage.settings.S3Settings`,
whose reprs hide them; nothing here logs.

This module only reads the block; :func:`adaptflow.tasks.storage.settings.settings_from_block`
turns what it read into settings (so neither imports the other in a circle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from adaptflow.tasks.errors import Problem, StorageError

BLOCK_VAR = "ADAPTFLOW_S3_BLOCK"
CREDENTIAL_TYPES = ("aws-credentials", "minio-credentials")
BUCKET_TYPE = "s3-bucket"
BLOCK_FIX = f"save the block (e.g. AwsCredentials(...).save('NAME')) or unset {BLOCK_VAR}"


@dataclass(frozen=True)
class BlockCredentials:
    """What a block says about S3; ``None`` where it says nothing (the defaults then apply)."""

    source: str
    """``Prefect block TYPE/NAME``, for messages."""
    endpoint_url: str | None
    region: str | None
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    bucket: str | None = None
    """The bucket of an ``s3-bucket`` block."""
    prefix: str = ""
    """The ``bucket_folder`` of an ``s3-bucket`` block."""


def read_block(block_ref: str | None = None) -> BlockCredentials | None:
    """What the block named by ``block_ref`` (default: ``$ADAPTFLOW_S3_BLOCK``) holds; None if unset."""
    ref = block_ref or os.environ.get(BLOCK_VAR, "").strip()
    if not ref:
        return None
    slug, _, name = ref.rpartition("/")
    slug = slug or CREDENTIAL_TYPES[0]
    if slug not in (*CREDENTIAL_TYPES, BUCKET_TYPE) or not name:
        raise StorageError(
            Problem(
                f"{BLOCK_VAR}={ref}",
                "not a block reference AdaptFlow can use",
                f"write TYPE/NAME with TYPE one of {', '.join((*CREDENTIAL_TYPES, BUCKET_TYPE))}",
            )
        )
    block = _load(f"{slug}/{name}", ref)
    bucket, prefix = None, ""
    credentials = block
    if slug == BUCKET_TYPE:
        bucket, prefix, credentials = block.bucket_name, block.bucket_folder or "", block.credentials
    endpoint, region, access_key, secret_key, token = _credential_fields(credentials, ref)
    return BlockCredentials(
        source=f"Prefect block {slug}/{name}",
        endpoint_url=endpoint,
        region=region,
        access_key_id=access_key,
        secret_access_key=secret_key,
        session_token=token,
        bucket=bucket,
        prefix=prefix,
    )


def _load(full_name: str, ref: str) -> Any:
    # prefect-aws and Prefect's client are optional and heavy: imported only when a block is named
    try:
        import prefect_aws  # noqa: F401  (registers the block types Block.load dispatches to)
    except ImportError:
        raise StorageError(Problem(f"{BLOCK_VAR}={ref}", "prefect-aws is not installed", "pip install prefect-aws")) from None
    # Only when a Prefect block is named (ADAPTFLOW_S3_BLOCK): the client stack stays light otherwise.
    import httpx
    from prefect.blocks.core import Block
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        return Block.load(full_name)
    except ValueError as exc:
        raise StorageError(Problem(f"{BLOCK_VAR}={ref}", f"no such Prefect block ({exc})", BLOCK_FIX)) from None
    except PrefectHTTPStatusError as exc:
        raise StorageError(
            Problem(
                f"{BLOCK_VAR}={ref}",
                f"the Prefect API refused to read the block ({exc.response.status_code})",
                "check PREFECT_API_URL and its credentials",
            )
        ) from None
    except httpx.HTTPError as exc:
        raise StorageError(
            Problem(f"{BLOCK_VAR}={ref}", f"cannot reach the Prefect API to read the block ({type(exc).__name__})", "check PREFECT_API_URL")
        ) from None


def _credential_fields(block: Any, ref: str) -> tuple[str | None, str | None, str, str, str | None]:
    """(endpoint, region, access key id, secret key, session token) of a credentials block."""
    params = getattr(block, "aws_client_parameters", None)
    endpoint = getattr(params, "endpoint_url", None)
    if hasattr(block, "minio_root_user"):
        access_key, secret, token = block.minio_root_user, block.minio_root_password, None
    else:
        access_key, secret, token = block.aws_access_key_id, block.aws_secret_access_key, block.aws_session_token
    secret_key = secret.get_secret_value() if secret is not None else None
    if not access_key or not secret_key:
        raise StorageError(
            Problem(
                f"{BLOCK_VAR}={ref}",
                "the block holds no access key id and secret key (profiles and assumed roles are not read from blocks)",
                "put both keys in the block, or unset the variable and use AWS_PROFILE",
            )
        )
    return (str(endpoint) if endpoint else None), block.region_name, access_key, secret_key, token
