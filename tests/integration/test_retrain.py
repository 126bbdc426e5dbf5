"""The retrain flow against real S3 (SeaweedFS), a real Prefect API and a tiny model.

One model goes through every path: first version, unchanged data ("up to date", nothing
trained, waits for the model's lock), changed data with a candidate that is not better
enough, the same retrain again (nothing trained twice), and the gate deciding on its own.
"""

from __future__ import annotations

import shutil
import threading
import time

from typer.testing import CliRunner

from adaptflow.flows.cli.app import app
from adaptflow.flows.cli.retrain import NOT_BETTER_EXIT
from adaptflow.flows.retrain import model_lock, retrain
from adaptflow.tasks.registry.store import get_alias, list_versions
from tests.integration.conftest import tiny_config, write_reviews
from tests.integration.prefect_rest import filter_all


def test_retrain_trains_only_when_data_changed_and_promotes_only_when_better(prefect_api, s3_env, tiny_bert_dir, tmp_path):
    name = "retrain-paths"
    data_v1 = write_reviews(tmp_path / "v1.csv", rows=80, seed=1)
    cfg = tiny_config(tiny_bert_dir, data_v1, tmp_path / "work")

    first = retrain(model_name=name, data=str(data_v1), config=cfg)
    assert (first["status"], first["trained"], first["candidate_version"], first["champion_after"]) == ("promoted", True, 1, 1)
    assert first["champion_metrics"] is None  # no champion to compare with

    # Unchanged contents at another path: up to date, nothing trained. It waits while another retrain holds the lock.
    moved = tmp_path / "elsewhere" / "reviews.csv"
    moved.parent.mkdir()
    shutil.copy(data_v1, moved)
    results: list[dict] = []
    with model_lock(name):
        waiting = threading.Thread(target=lambda: results.append(retrain(model_name=name, data=str(moved))))
        waiting.start()
        waiting.join(timeout=6)
        assert waiting.is_alive(), "the second retrain of the same model did not wait for the lock"
    waiting.join(timeout=120)
    assert results and results[0]["status"] == "up_to_date" and not results[0]["trained"]
    assert results[0]["wall_s"] < 60
    assert [v.version for v in list_versions(s3_env, name)] == [1]

    # Changed data and a bar the candidate cannot clear: trained, both scored on the same rows, not promoted.
    data_v2 = write_reviews(tmp_path / "v2.csv", rows=80, seed=2)
    second = retrain(model_name=name, data=str(data_v2), min_delta=1.0)
    assert (second["status"], second["trained"], second["candidate_version"], second["champion_after"]) == ("not_promoted", True, 2, 1)
    assert second["candidate_metrics"]["n"] == second["champion_metrics"]["n"] > 0
    assert get_alias(s3_env, name, "champion").version == 1

    # The same data, config and code again, from the CLI with --fail-if-not-better: nothing trained, exit 10.
    runner = CliRunner()
    outcome = runner.invoke(app, ["retrain", "--data", str(data_v2), "--model-name", name, "--min-delta", "1", "--fail-if-not-better"])
    assert outcome.exit_code == NOT_BETTER_EXIT, outcome.output
    assert [v.version for v in list_versions(s3_env, name)] == [1, 2]

    # Without the impossible bar the gate decides on the metrics; still nothing trained.
    third = retrain(model_name=name, data=str(data_v2))
    assert not third["trained"] and third["candidate_version"] == 2
    better = third["candidate_metrics"]["macro_f1"] >= third["champion_metrics"]["macro_f1"]
    assert third["status"] == ("promoted" if better else "not_promoted")
    assert get_alias(s3_env, name, "champion").version == (2 if better else 1)

    # Unchanged data from the CLI: up to date, exit 0, nothing trained.
    data_now = data_v2 if better else data_v1
    started = time.monotonic()
    outcome = runner.invoke(app, ["retrain", "--data", str(data_now), "--model-name", name, "--fail-if-not-better"])
    assert outcome.exit_code == 0, outcome.output
    assert "up to date" in outcome.output
    print(f"unchanged data: up to date after {time.monotonic() - started:.1f} s")
    assert len(list_versions(s3_env, name)) == 2

    artifacts = filter_all(prefect_api, "artifacts", {})
    keys = {artifact["key"] for artifact in artifacts}
    assert {"retrain-decision", "promotion-decision"} <= keys


def test_bad_model_name_fails_before_any_work(prefect_api):
    outcome = CliRunner().invoke(app, ["retrain", "--data", "x.csv", "--model-name", "Bad/Name"])
    assert outcome.exit_code == 2 and "not a valid registry name" in outcome.output  # configuration, not storage
