"""Shared fixtures. S3 fixtures live in tests/s3_fixtures.py, model fixtures in tests/model_fixtures.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.s3_fixtures", "tests.model_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def adaptflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ADAPTFLOW_HOME in a temporary folder: tests never write to ~/.adaptflow (pull cache, work dirs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTFLOW_HOME", str(tmp_path_factory.mktemp("adaptflow-home")))
        yield
