"""A person approves (or not) the promotion a retrain would make: real Prefect API, real S3, a tiny model.

``retrain(require_approval=True)`` runs in a thread, as a worker would run it, against the
test harness's Prefect server. The test waits for the run to be PAUSED, reads what the
Prefect UI shows (the form's schema and description, the ``promotion-approval`` artifact),
then answers exactly as the UI's Resume button does: ``POST /flow_runs/{id}/resume`` with
``run_input``. One model, one training: version 1 is rejected; a champion that is wrong on
every evaluation row is registered without training, so the gate always wants version 1
back; nobody answers (from the CLI); then someone approves.
"""

from __future__ import annotations

import csv
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from prefect import tags
from typer.testing import CliRunner

from adaptflow.flows.cli.app import app
from adaptflow.flows.retrain import retrain
from adaptflow.tasks.registry.store import get_alias, list_decisions, list_versions, set_alias
from tests.integration.conftest import tiny_config, write_reviews
from tests.integration.prefect_rest import rest_json
from tests.integration.test_predict import flow_run_artifacts
from tests.integration.versions import fit_head, register_head

PAUSE_WAIT_S = 240


def test_a_promotion_waits_for_a_person_and_follows_the_answer(prefect_api, s3_env, tiny_bert_dir, tmp_path):
    name = "approval"
    data = write_reviews(tmp_path / "reviews.csv", rows=60, seed=4)
    cfg = tiny_config(tiny_bert_dir, data, tmp_path / "work")
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(cfg))
    parameters = {"model_name": name, "data": str(data), "config": cfg, "require_approval": True, "approval_timeout_s": 600}
    api = Api(prefect_api)

    with ThreadPoolExecutor(max_workers=1) as pool:
        # Version 1: no champion yet, so the gate would promote it. The run pauses; rejected.
        tag, future = start(pool, **parameters)
        paused = api.wait_for_pause(tag, future)
        form, question = api.what_the_ui_shows(paused)
        assert set(form["properties"]) == {"approve", "note", "reviewer"} and all(f["description"] for f in form["properties"].values())
        assert question.startswith(f"# Promote `{name}:1` to `champion`?") and "from none to version 1" in question
        assert flow_run_artifacts(api.url, paused["id"])["promotion-approval"]["data"] == question
        api.resume(paused, {"approve": False, "note": "wait for | the audit", "reviewer": "bob"})
        rejected = future.result(timeout=PAUSE_WAIT_S)
        assert (rejected["status"], rejected["trained"], rejected["candidate_version"], rejected["champion_after"]) == (
            "not_promoted",
            True,
            1,
            None,
        )
        assert get_alias(s3_env, name, "champion") is None and api.state(paused)["type"] == "COMPLETED"
        decision = flow_run_artifacts(api.url, paused["id"])["retrain-decision"]["data"]
        assert "not promoted" in decision and "| approval | rejected by bob: wait for \\| the audit |" in decision

        # A champion that is wrong on every row the gate scores (version 2, registered without training).
        with open(rejected["eval_file"], newline="") as handle:
            rows = [(row["text"], row["label"]) for row in csv.DictReader(handle)]
        weight, bias = fit_head(tiny_bert_dir, rows)
        wrong = register_head(s3_env, name, tiny_bert_dir, tmp_path, -weight, -bias)
        set_alias(s3_env, name, "champion", wrong, expected_etag=None, reason="a champion the candidate beats")

        # The same retrain from the CLI: version 1 is reused (nothing trains); nobody answers within 2 s.
        started = time.monotonic()
        outcome = CliRunner().invoke(
            app,
            [
                "retrain",
                "--data",
                str(data),
                "--model-name",
                name,
                "--config",
                str(config_file),
                "--require-approval",
                "--approval-timeout",
                "2",
            ],
            env={"COLUMNS": "300"},
        )
        print(f"retrain whose approval timed out: {time.monotonic() - started:.1f} s")
        assert outcome.exit_code == 11, outcome.output
        assert "approval timed out after 2 s" in outcome.output and f"adaptflow models promote {name}:1 --alias champion" in outcome.output
        timed_out = api.latest_run(lambda run: run["parameters"]["model_name"] == name and run["parameters"].get("approval_timeout_s") == 2)
        assert timed_out["state"]["type"] == "FAILED" and "approval timed out after 2 s" in timed_out["state"]["message"]
        assert "PAUSED" in api.state_types(timed_out)
        assert "approval timed out after 2 s" in flow_run_artifacts(api.url, timed_out["id"])["retrain-decision"]["data"]
        assert get_alias(s3_env, name, "champion").version == wrong

        # Again, and this time the paused run shows both versions side by side; approved.
        tag, future = start(pool, **parameters)
        paused = api.wait_for_pause(tag, future)
        _, question = api.what_the_ui_shows(paused)
        for shown in (
            f"| version | `{name}:1` | `{name}:{wrong}` |",
            "versions/000001/",
            f"versions/{wrong:06d}/",
            "| **macro_f1** (gate) |",
            "| 0.0000 |",
        ):
            assert shown in question, question
        api.resume(paused, {"approve": True, "note": "beats the champion", "reviewer": "alice"})
        approved = future.result(timeout=PAUSE_WAIT_S)
    assert (approved["status"], approved["trained"], approved["champion_before"], approved["champion_after"]) == (
        "promoted",
        False,
        wrong,
        1,
    )
    assert approved["champion_metrics"]["macro_f1"] == 0.0 and approved["candidate_metrics"]["n"] == approved["champion_metrics"][
        "n"
    ] == len(rows)
    assert approved["explanation"].endswith("approved by alice: beats the champion.")
    assert get_alias(s3_env, name, "champion").version == 1 and api.state(paused)["type"] == "COMPLETED"
    assert [v.version for v in list_versions(s3_env, name)] == [1, wrong]
    records = list_decisions(s3_env, name)
    assert [(r["promoted"], r["approval"]["outcome"], r["approval"]["note"]) for r in records] == [
        (False, "rejected", "wait for | the audit"),
        (False, "timed_out", ""),
        (True, "approved", "beats the champion"),
    ]


def start(pool: ThreadPoolExecutor, **parameters: Any) -> tuple[str, Future]:
    """Run the retrain flow in the pool, tagged so the test can find its flow run; returns (tag, future)."""
    tag = f"approval-test-{uuid.uuid4().hex[:8]}"

    def run() -> dict:
        with tags(tag):
            return retrain(**parameters)

    return tag, pool.submit(run)


class Api:
    """The Prefect REST calls the UI makes for a paused run."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return rest_json(self.url, method, path, **kwargs)

    def wait_for_pause(self, tag: str, future: Future) -> dict:
        deadline = time.monotonic() + PAUSE_WAIT_S
        while time.monotonic() < deadline:
            runs = self.call("POST", "/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [tag]}}, "limit": 1})
            if runs and runs[0]["state"]["type"] == "PAUSED":
                return runs[0]
            if future.done():
                pytest.fail(f"the run ended without asking for approval: {future.result()['explanation']}")
            time.sleep(0.5)
        pytest.fail(f"no paused run after {PAUSE_WAIT_S} s")

    def what_the_ui_shows(self, run: dict) -> tuple[dict, str]:
        """The Resume form's JSON schema and the description shown above it."""
        keys = run["state"]["state_details"]["run_input_keyset"]
        schema = self.call("GET", f"/flow_runs/{run['id']}/input/{keys['schema']}")
        description = self.call("GET", f"/flow_runs/{run['id']}/input/{keys['description']}")
        return (json.loads(schema) if isinstance(schema, str) else schema), description

    def resume(self, run: dict, answer: dict) -> None:
        result = self.call("POST", f"/flow_runs/{run['id']}/resume", json={"run_input": answer})
        assert result["status"] == "ACCEPT", result

    def state(self, run: dict) -> dict:
        return self.call("GET", f"/flow_runs/{run['id']}")["state"]

    def state_types(self, run: dict) -> list[str]:
        return [state["type"] for state in self.call("GET", "/flow_run_states/", params={"flow_run_id": run["id"]})]

    def latest_run(self, matches: Callable[[dict], bool]) -> dict:
        runs = self.call(
            "POST", "/flow_runs/filter", json={"flows": {"name": {"any_": ["retrain"]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 20}
        )
        return next(run for run in runs if matches(run))
