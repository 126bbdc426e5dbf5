"""Acceptance: deployments/prefect.yaml on a real Prefect server, through Prefect's own surfaces.

One ``prefect server start`` (SQLite, its own PREFECT_HOME) and one process worker for the
whole module, started by the stack code behind ``adaptflow stack up``, with a real SeaweedFS
S3 server and tiny models. The module fixture registers the deployments exactly as the
header of prefect.yaml documents it: ``prefect work-pool create`` twice, then ``prefect
deploy --all``. Each test then goes through one surface:

- ``adaptflow deploy``: recreates a missing work pool, then runs ``prefect deploy --name``;
- the REST API as the UI's Run form posts it: schema enforced, a retrain registers a version;
  then the CI workflow's ``prefect deployment run --watch``, and Prefect's ``ls`` commands;
- the server's scheduler and triggers: a schedule due in seconds gets a run the scheduler
  creates, the worker completes it; then the event ``adaptflow.data.arrived`` starts a
  retrain with the event's model name and data.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from adaptflow.infra.deploy import GPU_POOL_TEMPLATE, PREFECT_FILE, load_specs
from adaptflow.infra.prefect_stack import PrefectStack, PrefectStackInfo
from adaptflow.infra.stack import _alive
from adaptflow.tasks.registry.store import get_alias, list_versions
from adaptflow.tasks.storage.s3 import S3Settings
from tests.integration.conftest import served_worker_env, tiny_config, write_reviews
from tests.integration.prefect_rest import rest

ROOT = Path(__file__).resolve().parents[2]
ADAPTFLOW = str(Path(sys.executable).parent / "adaptflow")
RUN_TIMEOUT_S = 240
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
SCHEDULE_LEAD_S = 45
"""How far ahead the test schedule starts: more than ``prefect deploy`` of one deployment takes on a loaded 2-core machine."""


@dataclass
class Served:
    info: PrefectStackInfo
    stack: PrefectStack
    settings: S3Settings
    env: dict[str, str]
    """Environment of a Prefect CLI client of this server (run from the repository root)."""
    setup: list[subprocess.CompletedProcess]
    """The documented commands, as the fixture ran them."""


@pytest.fixture(scope="module")
def served(s3_stack, tmp_path_factory):
    """Server + process worker (S3 endpoint and keys only in the worker's environment), deployments registered as documented."""
    home = tmp_path_factory.mktemp("served-home")
    settings = s3_stack.settings(prefix=f"tests/server-deployments-{uuid.uuid4().hex[:8]}")
    stack = PrefectStack(home)
    info = stack.up(worker_env=served_worker_env(s3_stack, home, settings.prefix), timeout=120)
    try:
        env = {
            **os.environ,
            "PREFECT_API_URL": info.api_url,
            "PREFECT_HOME": str(home / "cli-prefect-home"),
            "ADAPTFLOW_PROJECT_DIR": str(ROOT),
            "COLUMNS": "250",  # wide enough that rich truncates no name
        }
        setup = [_cli(shlex.split(command), env) for command in documented_commands()]
        for done in setup:
            # the stack's worker creates its pool when it starts: `work-pool create` may find it there
            exists = "work-pool" in done.args and "already exists" in done.stdout
            assert done.returncode == 0 or exists, (done.args, done.stdout[-1000:], done.stderr[-1000:])
        yield Served(info, stack, settings, env, setup)
    finally:
        stack.down()
        assert stack.status() is None
        assert not any(_alive(pid) for pid in (info.server_pid, info.worker_pid)), "`down` left a process running"


def documented_commands() -> list[str]:
    """The commands of prefect.yaml's header, `ADAPTFLOW_PROJECT_DIR=$PWD` left to the environment."""
    commands = re.findall(r"^#   (?:ADAPTFLOW_PROJECT_DIR=\$PWD )?(prefect .+)$", PREFECT_FILE.read_text(), re.M)
    assert [c.split()[:3] for c in commands] == [["prefect", "work-pool", "create"]] * 2 + [["prefect", "--no-prompt", "deploy"]], commands
    return commands


def test_prefect_deploy_as_documented_registers_every_deployment(served):
    pools, deploy_all = served.setup[:2], served.setup[2]
    assert all("Created work pool" in done.stdout or "already exists" in done.stdout for done in pools)  # see `served`
    paths = _deployment_paths(served)
    assert sorted(path.split("/")[1] for path in paths) == sorted(spec.name for spec in load_specs())
    for path in paths:
        assert f"'{path}' successfully created" in deploy_all.stdout, deploy_all.stdout[-3000:]
    gpu_pool = _api(served, "GET", "/work_pools/adaptflow-k8s-gpu").json()
    assert gpu_pool["type"] == "kubernetes" and gpu_pool["base_job_template"] == json.loads(GPU_POOL_TEMPLATE.read_text())
    assert _api(served, "GET", "/work_pools/adaptflow-local").json()["type"] == "process"

    retrain = _api(served, "GET", "/deployments/name/retrain/retrain").json()
    assert retrain["enforce_parameter_schema"] is True
    stored = json.loads(
        json.dumps(parameter_schema(load_flow_from_entrypoint(f"{ROOT / 'flows' / 'retrain.py'}:retrain")).model_dump_for_openapi())
    )
    assert retrain["parameter_openapi_schema"] == stored  # what tests/unit validates against is what the server enforces
    assert [(s["schedule"]["cron"], s["parameters"]["data"]) for s in retrain["schedules"]] == [("0 2 * * *", "sample://reviews")]
    assert retrain["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)
    (automation,) = _api(served, "GET", "/automations/related-to/prefect.deployment." + retrain["id"]).json()
    assert automation["trigger"]["expect"] == ["adaptflow.data.arrived"]
    assert automation["actions"][0]["parameters"]["data"] == "{{ event.payload.data }}"  # rendered by the server, per event


def test_adaptflow_deploy_recreates_a_missing_pool_and_updates_the_named_deployment(served):
    assert _api(served, "DELETE", "/work_pools/adaptflow-k8s-gpu").status_code == 204
    done = _adaptflow(["deploy", "-n", "adapt-k8s-gpu"], served.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "created work pools: adaptflow-k8s-gpu" in done.stdout
    assert re.search(r"adapt-k8s-gpu .* flows/adapt\.py:adapt .* adaptflow-k8s-gpu ", done.stdout), done.stdout
    pool = _api(served, "GET", "/work_pools/adaptflow-k8s-gpu").json()
    assert pool["type"] == "kubernetes" and pool["base_job_template"] == json.loads(GPU_POOL_TEMPLATE.read_text())
    assert _api(served, "GET", "/deployments/name/adapt/adapt-k8s-gpu").json()["work_pool_name"] == "adaptflow-k8s-gpu"


def test_a_run_from_the_ui_form_then_cis_prefect_command_then_what_prefect_cli_lists(served, tiny_bert_dir, tmp_path):
    """1. The REST call of the UI's Run form: a bad value is refused, a good run registers and promotes version 1.
    2. The command of deployments/github/retrain.yml, `prefect deployment run ... --watch`, on the same data: Completed, up to date.
    3. Prefect's `ls` commands show the deployments, pools, artifacts and both runs.
    """
    deployment = _api(served, "GET", "/deployments/name/retrain/retrain").json()
    bad = _api(served, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"metric": "loudness"}})
    assert bad.status_code in (409, 422), bad.text
    assert "loudness" in bad.text
    assert _runs(served, deployment["id"], created_by="USER") == []

    # What the UI's "Custom run" form posts: the deployment's parameters, a few of them changed.
    data = write_reviews(tmp_path / "reviews.csv", rows=60, seed=3)
    parameters = {"model_name": "served-model", "data": str(data), "config": tiny_config(tiny_bert_dir, data, tmp_path / "work")}
    created = _api(served, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    state = _wait_for_final_state(served, run_id)
    assert state == "COMPLETED", _diagnostics(served, run_id, state)
    assert [v.version for v in list_versions(served.settings, "served-model")] == [1]
    assert get_alias(served.settings, "served-model", "champion").version == 1
    artifacts = _api(served, "POST", "/artifacts/filter", json={"limit": 50, "artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    keys = {artifact["key"] for artifact in artifacts}
    assert {"retrain-decision", "adapt-summary", "data-report"} <= keys, keys
    decision = next(a for a in artifacts if a["key"] == "retrain-decision")
    assert "promoted" in decision["data"] and "served-model" in decision["data"]
    secret = served.settings.secret_access_key
    run = _api(served, "GET", f"/flow_runs/{run_id}").json()
    assert secret not in str(run["parameters"]) and all(secret not in str(a["data"]) for a in artifacts)

    watched = _cli(
        [
            "prefect",
            "deployment",
            "run",
            "retrain/retrain",
            "--param",
            "model_name=served-model",
            "--param",
            f"data={data}",
            "--watch",
            "--watch-timeout",
            str(RUN_TIMEOUT_S),
        ],
        served.env,
    )
    cli_run_id = re.search(r"UUID: ([0-9a-f-]{36})", watched.stdout).group(1)
    assert watched.returncode == 0 and "Completed" in watched.stdout, _diagnostics(served, cli_run_id, watched.stdout[-2000:])
    assert [v.version for v in list_versions(served.settings, "served-model")] == [1]  # the same data: up to date

    commands = [
        "deployment ls",
        "work-pool ls",
        "block ls",
        "artifact ls",
        "flow-run ls --flow-name retrain --state-type COMPLETED -o json",
    ]
    listed = {command: _cli(["prefect", *command.split()], served.env) for command in commands}
    assert all(done.returncode == 0 for done in listed.values()), {c: d.stdout + d.stderr for c, d in listed.items() if d.returncode}
    for path in _deployment_paths(served):
        assert path in listed["deployment ls"].stdout
    assert re.search(r"adaptflow-k8s-gpu\s*│\s*kubernetes", listed["work-pool ls"].stdout), listed["work-pool ls"].stdout
    assert re.search(r"adaptflow-local\s*│\s*process", listed["work-pool ls"].stdout)
    assert "Blocks" in listed["block ls"].stdout
    assert all(key in listed["artifact ls"].stdout for key in ("retrain-decision", "adapt-summary", "data-report")), listed[
        "artifact ls"
    ].stdout
    assert {run_id, cli_run_id} <= {r["id"] for r in json.loads(listed[commands[-1]].stdout)}


def test_a_schedule_and_the_data_arrived_event_start_retrains_that_the_worker_completes(served, tiny_bert_dir, tmp_path):
    """1. A copy of the retrain deployment whose schedule is due in seconds: only the server's
    scheduler creates its run, and the worker completes it (version 1 registered).
    2. The event adaptflow.data.arrived for that model and data: the trigger of retrain/retrain
    starts a run with the event's model name and data (up to date: the data is the same).
    """
    data = write_reviews(tmp_path / "reviews.csv", rows=60, seed=5)
    parameters = {"model_name": "scheduled-model", "data": str(data), "config": tiny_config(tiny_bert_dir, data, tmp_path / "work")}
    # Hourly from `anchor`. The scheduler must see the deployment before the anchor (it looks at
    # just-changed deployments every 5 s), else the first run is an hour later.
    anchor = datetime.now(timezone.utc) + timedelta(seconds=SCHEDULE_LEAD_S)
    (retrain,) = [entry for entry in yaml.safe_load(PREFECT_FILE.read_text())["deployments"] if entry["name"] == "retrain"]
    soon = {
        **retrain,
        "name": "retrain-soon",
        "schedules": [{"interval": 3600, "anchor_date": anchor.isoformat(), "slug": "soon", "parameters": parameters}],
    }
    soon.pop("triggers")
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump({"name": "adaptflow-test", "prefect-version": "3.9.1", "deployments": [soon]}))
    deployed = _cli(["prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--name", "retrain-soon"], served.env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployment = _api(served, "GET", "/deployments/name/retrain/retrain-soon").json()
    try:
        runs = _wait_for_runs(served, deployment["id"], "SCHEDULE", timeout=SCHEDULE_LEAD_S)
        first = runs[0]
        print(
            f"scheduled run {first['id']} ({first['name']}): created by {first['created_by']['type']} "
            f"{first['created_by']['display_value']!r}, auto_scheduled={first['auto_scheduled']}, expected start {first['expected_start_time']}"
        )
        assert first["auto_scheduled"] is True and first["created_by"]["id"] == deployment["schedules"][0]["id"]
        assert datetime.fromisoformat(first["expected_start_time"]) == anchor, (
            "the scheduler saw the deployment after its anchor: raise SCHEDULE_LEAD_S"
        )
        assert first["parameters"]["model_name"] == "scheduled-model"
        state = _wait_for_final_state(served, first["id"], timeout=RUN_TIMEOUT_S + SCHEDULE_LEAD_S)
        assert state == "COMPLETED", _diagnostics(served, first["id"], state)
        assert [v.version for v in list_versions(served.settings, "scheduled-model")] == [1]
    finally:  # its later runs (an hour away) go with it
        assert _api(served, "DELETE", f"/deployments/{deployment['id']}").status_code == 204

    retrain = _api(served, "GET", "/deployments/name/retrain/retrain").json()
    emitted = _cli(
        [
            "prefect",
            "event",
            "emit",
            "adaptflow.data.arrived",
            "--resource-id",
            "adaptflow.dataset.scheduled-model",
            "--payload",
            json.dumps({"data": str(data)}),
        ],
        served.env,
    )
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr
    (run,) = _wait_for_runs(served, retrain["id"], "AUTOMATION", timeout=60)
    print(
        f"event-triggered run {run['id']} ({run['name']}): created by {run['created_by']['type']} {run['created_by']['display_value']!r}, parameters {run['parameters']}"
    )
    assert run["parameters"] == {"model_name": "scheduled-model", "data": str(data)}
    state = _wait_for_final_state(served, run["id"])
    assert state == "COMPLETED", _diagnostics(served, run["id"], state)
    assert [v.version for v in list_versions(served.settings, "scheduled-model")] == [1]  # same data: up to date, nothing trained


# ---- helpers ---------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """A Prefect CLI command (``prefect ...``) from the repository root, with this interpreter's Prefect."""
    assert args[0] == "prefect"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args[1:]],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
    )
    print(f"{' '.join(args)[:100]}: exit {done.returncode}, {time.monotonic() - started:.1f} s")
    return done


def _adaptflow(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run([ADAPTFLOW, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    print(f"adaptflow {' '.join(args)}: exit {done.returncode}, {time.monotonic() - started:.1f} s")
    return done


def _api(served: Served, method: str, path: str, **kwargs) -> httpx.Response:
    return rest(served.info.api_url, method, path, **kwargs)


def _deployment_paths(served: Served) -> set[str]:
    """``flow/deployment`` of every deployment on the server."""
    flows = {flow["id"]: flow["name"] for flow in _api(served, "POST", "/flows/filter", json={"limit": 200}).json()}
    return {f"{flows[d['flow_id']]}/{d['name']}" for d in _api(served, "POST", "/deployments/filter", json={"limit": 200}).json()}


def _runs(served: Served, deployment_id: str, created_by: str) -> list[dict]:
    """The deployment's runs that ``created_by`` (USER, SCHEDULE, AUTOMATION) created, the earliest first."""
    query = {"limit": 50, "sort": "EXPECTED_START_TIME_ASC", "flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
    return [
        run
        for run in _api(served, "POST", "/flow_runs/filter", json=query).json()
        if (run.get("created_by") or {}).get("type", "USER") == created_by
    ]


def _wait_for_runs(served: Served, deployment_id: str, created_by: str, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (runs := _runs(served, deployment_id, created_by)) and time.monotonic() < deadline:
        time.sleep(1)
    assert runs, f"no run of deployment {deployment_id} created by {created_by} within {timeout:.0f} s"
    return runs


def _wait_for_final_state(served: Served, run_id: str, timeout: float = RUN_TIMEOUT_S) -> str:
    started = time.monotonic()
    state = "SCHEDULED"
    while time.monotonic() < started + timeout:
        state = _api(served, "GET", f"/flow_runs/{run_id}").json()["state"]["type"]
        if state in FINAL_STATES:
            print(f"flow run {run_id}: {state} after {time.monotonic() - started:.1f} s")
            return state
        if not served.stack.worker_running(served.info):
            return f"{state} (the worker died)"
        time.sleep(1)
    return f"{state} after {timeout:.0f} s"


def _diagnostics(served: Served, run_id: str, state: str) -> str:
    logs = _api(served, "POST", "/logs/filter", json={"limit": 60, "logs": {"flow_run_id": {"any_": [run_id]}}}).json()
    worker_log = served.stack.worker_log.read_text(errors="replace")[-4000:] if served.stack.worker_log.exists() else "(no worker log)"
    lines = "\n".join(entry["message"][:500] for entry in logs)
    return f"flow run {run_id} ended {state}\n--- flow run logs ---\n{lines}\n--- worker log ---\n{worker_log}"
