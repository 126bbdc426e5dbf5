"""Acceptance: the deployments of deployments/prefect.yaml on a real Prefect server.

`prefect server start` (SQLite, its own PREFECT_HOME) and a process worker, both started by
the stack code behind `adaptflow stack up`; `adaptflow deploy` registers the deployments;
a run is created through the REST API exactly as the UI's "Run" form does; the worker runs
the retrain flow (a tiny model, real SeaweedFS), which registers and promotes version 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infra.prefect_stack import PrefectStack
from infra.stack import _alive
from tasks.registry import get_alias, list_versions
from tests.integration.conftest import tiny_config, write_reviews

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240


@pytest.fixture
def prefect_server(s3_stack, s3_settings, tmp_path):
    """A Prefect server + process worker (S3 endpoint and keys only in the worker's environment)."""
    home = tmp_path / "home"
    stack = PrefectStack(home)
    worker_env = {
        **s3_stack.env(), "ADAPTFLOW_S3_PREFIX": s3_settings.prefix, "ADAPTFLOW_HOME": str(home),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick the run up at once (default: every 10 s)
    }
    info = stack.up(worker_env=worker_env, timeout=120)
    try:
        yield info, stack
    finally:
        stack.down()
        assert stack.status() is None
        assert not any(_alive(pid) for pid in (info.server_pid, info.worker_pid)), "`down` left a process running"


def _api(info, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, info.api_url + path, timeout=30, **kwargs)


def test_deployment_run_from_the_api_registers_a_version(prefect_server, s3_settings, tiny_bert_dir, tmp_path):
    info, stack = prefect_server
    env = {**os.environ, "PREFECT_API_URL": info.api_url}
    deploy = subprocess.run([str(Path(sys.executable).parent / "adaptflow"), "deploy", "-n", "retrain"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    deployment = _api(info, "GET", "/deployments/name/retrain/retrain").json()
    assert deployment["enforce_parameter_schema"] is True
    assert [(s["schedule"]["cron"], s["parameters"]["data"]) for s in deployment["schedules"]] == [("0 2 * * *", "sample://reviews")]
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)

    # A bad value is refused by the server: no run is created.
    bad = _api(info, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"metric": "loudness"}})
    assert bad.status_code in (409, 422), bad.text
    assert "loudness" in bad.text
    runs = _api(info, "POST", "/flow_runs/filter", json={"limit": 10, "flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}}).json()
    assert runs == []

    # What the UI's "Custom run" form posts: the deployment's parameters, a few of them changed.
    data = write_reviews(tmp_path / "reviews.csv", rows=60, seed=3)
    parameters = {"model_name": "served-model", "data": str(data), "config": tiny_config(tiny_bert_dir, data, tmp_path / "work")}
    created = _api(info, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    started = time.monotonic()
    state = _wait_for_final_state(info, stack, run_id)
    print(f"flow run {run_id}: {state} after {time.monotonic() - started:.1f} s")
    assert state == "COMPLETED", _diagnostics(info, stack, run_id, state)

    assert [v.version for v in list_versions(s3_settings, "served-model")] == [1]
    assert get_alias(s3_settings, "served-model", "champion").version == 1
    artifacts = _api(info, "POST", "/artifacts/filter", json={"limit": 50, "artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    keys = {artifact["key"] for artifact in artifacts}
    assert {"retrain-decision", "adapt-summary", "data-report"} <= keys, keys
    decision = next(a for a in artifacts if a["key"] == "retrain-decision")
    assert "promoted" in decision["data"] and "served-model" in decision["data"]
    secret = s3_settings.secret_access_key
    run = _api(info, "GET", f"/flow_runs/{run_id}").json()
    assert secret not in str(run["parameters"]) and all(secret not in str(a["data"]) for a in artifacts)


def _wait_for_final_state(info, stack: PrefectStack, run_id: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = "SCHEDULED"
    while time.monotonic() < deadline:
        state = _api(info, "GET", f"/flow_runs/{run_id}").json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        if not stack.worker_running(info):
            return f"{state} (the worker died)"
        time.sleep(1)
    return f"{state} after {RUN_TIMEOUT_S} s"


def _diagnostics(info, stack: PrefectStack, run_id: str, state: str) -> str:
    logs = _api(info, "POST", "/logs/filter", json={"limit": 60, "logs": {"flow_run_id": {"any_": [run_id]}}}).json()
    worker_log = stack.worker_log.read_text(errors="replace")[-4000:] if stack.worker_log.exists() else "(no worker log)"
    lines = "\n".join(entry["message"][:500] for entry in logs)
    return f"flow run {run_id} ended {state}\n--- flow run logs ---\n{lines}\n--- worker log ---\n{worker_log}"
