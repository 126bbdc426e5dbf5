"""Several `adaptflow run` at once, as people start them from terminals and CI jobs, and a
bad input reported before any Prefect server is involved.

Each run is a real CLI subprocess (tiny model, real SeaweedFS), with no PREFECT_API_URL:
- by default the first run that finds no server starts the stack's Prefect server of its
  ADAPTFLOW_HOME in the background; four started at once start exactly one, all report to
  it, and the runs show on that server (and in its UI, which knows its own API address);
- with ADAPTFLOW_PREFECT_SERVER=temporary each process starts Prefect's temporary server
  (several at once used to time out creating one database, and two could share a port).
Both must register one version per run of one model name, each exactly once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptflow.infra.prefect_stack import PrefectStack
from adaptflow.tasks.registry.store import get_manifest, list_versions
from adaptflow.tasks.storage.s3 import ENDPOINT_VARS
from tests.integration.conftest import tiny_config, write_reviews
from tests.integration.prefect_rest import rest_json

RUNS = 4
TEMPORARY_RUNS = 2
MODEL_NAME = "concurrent-cli"


def _env(home: Path, s3_stack, s3_settings) -> dict[str, str]:
    """A user's shell: S3 from the environment, no Prefect API URL, a Prefect home of its own (no profile)."""
    env = {k: v for k, v in os.environ.items() if k not in (*ENDPOINT_VARS, "PREFECT_API_URL", "ADAPTFLOW_S3_PREFIX")}
    env.update(s3_stack.env())
    env.update(ADAPTFLOW_HOME=str(home), ADAPTFLOW_S3_PREFIX=s3_settings.prefix, PREFECT_HOME=str(home / "prefect-cli"), COLUMNS="120")
    return env


def _config_file(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    data = write_reviews(tmp_path / "reviews.csv", rows=48, seed=5)
    cfg = tiny_config(tiny_bert_dir, data, tmp_path / "work", training={"max_steps": 3}, registry={"model_name": MODEL_NAME})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    return path


def _run_at_once(config: Path, env: dict[str, str], runs: int = RUNS) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "adaptflow.flows.cli", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(runs)
    ]
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def _check_versions(results: list[subprocess.CompletedProcess], s3_settings, runs: int) -> None:
    for result in results:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    said = sorted(m for r in results for m in re.findall(rf"registered version:\s+s3://\S+/{MODEL_NAME}/versions/(\d+)/", r.stdout))
    assert said == [f"{v:06d}" for v in range(1, runs + 1)], [r.stdout[-600:] for r in results]
    assert [v.version for v in list_versions(s3_settings, MODEL_NAME)] == list(range(1, runs + 1))
    assert all(get_manifest(s3_settings, MODEL_NAME, v)["metrics"]["accuracy"] >= 0 for v in range(1, runs + 1))


def test_four_runs_at_once_start_one_background_server_and_report_to_it(tmp_path, s3_stack, s3_settings, tiny_bert_dir):
    home = tmp_path / "home"
    env = _env(home, s3_stack, s3_settings)
    prefect_stack = PrefectStack(home)
    try:
        started = time.monotonic()
        results = _run_at_once(_config_file(tmp_path, tiny_bert_dir), env)
        print(f"{RUNS} runs, one background Prefect server: {time.monotonic() - started:.0f} s")
        _check_versions(results, s3_settings, RUNS)
        info = prefect_stack.status()
        assert info is not None and info.worker_pid is None, "no background server is running after the runs"
        assert sum("starting one in the background" in r.stderr for r in results) == 1, [r.stderr[-500:] for r in results]
        assert all(f"Prefect server: {info.ui_url}" in r.stderr for r in results)
        # the UI asks the server where its API is: the port the server was started on, not Prefect's default 4200
        assert rest_json(info.ui_url, "GET", "/ui-settings")["api_url"] == info.api_url
        runs = rest_json(info.api_url, "POST", "/flow_runs/filter", json={"limit": 20})
        assert [r["state_type"] for r in runs] == ["COMPLETED"] * RUNS, [(r["name"], r["state_type"]) for r in runs]
    finally:
        prefect_stack.down()


def test_runs_at_once_with_temporary_prefect_servers(tmp_path, s3_stack, s3_settings, tiny_bert_dir):
    env = {**_env(tmp_path / "home", s3_stack, s3_settings), "ADAPTFLOW_PREFECT_SERVER": "temporary"}
    started = time.monotonic()
    results = _run_at_once(_config_file(tmp_path, tiny_bert_dir), env, runs=TEMPORARY_RUNS)
    print(f"{TEMPORARY_RUNS} runs with temporary Prefect servers: {time.monotonic() - started:.0f} s")
    _check_versions(results, s3_settings, TEMPORARY_RUNS)
    assert all("a temporary one in this process" in r.stderr for r in results)
    assert PrefectStack(tmp_path / "home").status() is None  # nothing left running


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data", "missing/reviews.csv"], "missing/reviews.csv: no such file or folder"),
        (["--label-column", "stars"], "stars"),
        (["--model", "/no/such/model"], "/no/such/model"),
    ],
)
def test_bad_input_fails_fast_once_without_a_traceback(tmp_path, args, expected):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(ADAPTFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), COLUMNS="200")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "adaptflow.flows.cli", "run", "--no-register-model", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    print(f"{args}: exit {result.returncode} after {elapsed:.1f} s")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("Error") == 1 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "temporary server" not in result.stderr
    assert not (tmp_path / "prefect").exists() or not any((tmp_path / "prefect").rglob("*.db")), "a Prefect server was started"
    assert not (tmp_path / "home" / "stack" / "prefect").exists(), "a background Prefect server was started"
