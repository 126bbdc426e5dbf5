"""The README's first command, minus the install: `adaptflow stack up` then `adaptflow run`
with every default (bundled sample data, offline MiniLM, local S3), as a new user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from adaptflow.infra.stack import LocalS3Stack
from adaptflow.tasks.registry.store import get_manifest, list_versions
from adaptflow.tasks.storage.s3 import ENDPOINT_VARS


def _adaptflow(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptflow.flows.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def user_env(tmp_path, prefect_api, weed_binary) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (*ENDPOINT_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ADAPTFLOW_S3_PREFIX", "ADAPTFLOW_S3_BUCKET")
    }
    env.update(ADAPTFLOW_HOME=str(tmp_path / "home"), PREFECT_API_URL=prefect_api, COLUMNS="160")
    return env


def test_stack_up_then_run_with_defaults_registers_a_version(user_env, tmp_path):
    up = _adaptflow(["stack", "up"], user_env)
    assert up.returncode == 0, up.stderr
    try:
        assert "S3 server running at http://127.0.0.1:" in up.stdout
        assert _adaptflow(["stack", "status"], user_env).returncode == 0

        run = _adaptflow(["run"], user_env)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "AdaptFlow results" in run.stdout and "transfer_learning" in run.stdout
        match = re.search(r"registered version: (s3://\S+)", run.stdout)
        assert match, run.stdout
        assert match.group(1) == "s3://adaptflow/models/sample-reviews-transfer-learning/versions/000001/"

        # the version is really there: manifest, model, card
        stack = LocalS3Stack(tmp_path / "home")
        env = stack.env()
        settings = stack.settings()
        assert [v.version for v in list_versions(settings, "sample-reviews-transfer-learning")] == [1]
        manifest = get_manifest(settings, "sample-reviews-transfer-learning", 1)
        files = {f["path"] for f in manifest["files"]}
        assert {"README.md", "config.json", "model.safetensors.index.json", "modeling_adaptflow.py", "adaptflow/model.json"} <= files
        assert manifest["data"]["label_names"] == ["negative", "neutral", "positive"]
        assert manifest["metrics"]["accuracy"] > 1 / 3  # better than chance on three classes
        assert env["AWS_SECRET_ACCESS_KEY"] not in run.stdout + run.stderr
    finally:
        down = _adaptflow(["stack", "down"], user_env)
    assert down.returncode == 0
    assert _adaptflow(["stack", "status"], user_env).returncode == 1


def test_help_explains_every_command(user_env):
    for args in (["--help"], ["run", "--help"], ["stack", "--help"], ["stack", "up", "--help"]):
        result = _adaptflow(args, user_env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
    run_help = _adaptflow(["run", "--help"], user_env, timeout=120).stdout
    for flag in (
        "--strategy",
        "--data",
        "--eval-data",
        "--max-train-samples",
        "--last-n-layers",
        "--lora-r",
        "--num-processes",
        "--mixed-precision",
    ):
        assert flag in run_help
