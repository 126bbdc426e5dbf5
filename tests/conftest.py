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


# The files whose tests take minutes, longest first (figures: `make test` prints the 25 slowest).
# They are collected first, so the two xdist workers (--dist loadfile hands out whole files in
# collection order) start them early and the short files fill in around them; collected in
# alphabetical order, the Ray cluster and browser files came last, and one worker ran them alone
# for minutes while the other sat idle.
SLOW_FILES_FIRST = (
    "test_ray_cluster.py",
    "test_cli_concurrency.py",
    "test_distributed.py",
    "test_ui_browser.py",
    "test_server_deployments.py",
    "test_lm_training.py",
    "test_cli_demo.py",
    "test_json_output.py",
    "test_lm_flows.py",
    "test_compare.py",
    "test_training_features.py",
    "test_hf_export.py",
    "test_pipeline.py",
    "test_predict.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}

    def order(item: pytest.Item) -> int:
        return rank.get(item.path.name, len(rank)) if item.path.parent.name == "integration" else len(rank)

    items.sort(key=order)  # stable: the rest keep their order
