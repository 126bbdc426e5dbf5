"""`--json` on compare, run, models list and models show: real subprocesses, stdout piped through jq.

stdout must hold the JSON document and nothing else (jq fails on anything more); the logs and
progress bars go to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.test_models_cli import models  # noqa: F401  (the fixture: model 'reviews', versions 1 and 2)

JQ = shutil.which("jq")


def adaptflow(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "adaptflow.flows.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def jq(document: str, expression: str) -> object:
    """``expression`` applied by jq (installed here) to stdout; without jq, json.tool checks it parses and Python reads it."""
    if JQ:
        result = subprocess.run([JQ, "-e", "-c", expression], input=document, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"jq {expression}: {result.stderr}\n{document[:2000]}"
        return json.loads(result.stdout)
    subprocess.run([sys.executable, "-m", "json.tool"], input=document, text=True, check=True, capture_output=True)
    return None


def test_models_list_and_show_json(models) -> None:  # noqa: F811
    listed = adaptflow("models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert jq(listed.stdout, '[.[] | select(.model == "reviews") | .versions, .latest]') in ([2, 2], None)
    versions = adaptflow("models", "list", "reviews", "--json")
    assert versions.returncode == 0, versions.stderr
    assert jq(versions.stdout, "[.[] | [.version, .strategy, .accuracy]]") in ([[1, "full_fine_tuning", 0.9], [2, "lora", 0.92]], None)
    shown = adaptflow("models", "show", "reviews:2", "--json")
    assert shown.returncode == 0, shown.stderr
    assert jq(shown.stdout, "[.name, .version, .manifest.strategy, .manifest.metrics.macro_f1]") in (["reviews", 2, "lora", 0.91], None)
    assert json.loads(shown.stdout)["manifest"]["files"]  # the whole manifest
    missing = adaptflow("models", "show", "reviews:9", "--json")
    assert missing.returncode == 3 and missing.stdout == "" and "reviews" in missing.stderr  # errors: one line on stderr


@pytest.fixture
def cli_env(prefect_api, tmp_path) -> dict[str, str]:
    return {"PREFECT_API_URL": prefect_api, "ADAPTFLOW_HOME": str(tmp_path / "home"), "COLUMNS": "80"}


def test_run_and_compare_json(tiny_bert_dir, reviews_csv, tmp_path, cli_env) -> None:
    common = ["--model", str(tiny_bert_dir), "--data", str(reviews_csv), "--max-length", "32", "--batch-size", "8"]
    common += ["--work-dir", str(tmp_path / "work")]
    run = adaptflow("run", "--strategy", "transfer_learning", "--head-epochs", "2", "--no-register-model", "--json", *common, env=cli_env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = jq(run.stdout, "{kind, strategy, accuracy, version_uri}")
    assert result in (
        {
            "kind": "ClassificationResult",
            "strategy": "transfer_learning",
            "accuracy": json.loads(run.stdout)["accuracy"],
            "version_uri": None,
        },
        None,
    )
    assert "AdaptFlow results" not in run.stdout and "Flow run" in run.stderr  # the table is replaced, the logs are on stderr

    compared = adaptflow(
        "compare",
        "--strategies",
        "transfer_learning,lora",
        "--lora-r",
        "2",
        "--budget-examples",
        "64",
        "--seeds",
        "2",
        "--json",
        *common,
        env=cli_env,
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    rows = jq(compared.stdout, "[.rows[] | {strategy, backbone_examples, ci: .accuracy_ci, paired}]")
    report = json.loads(compared.stdout)
    assert rows is None or [r["strategy"] for r in rows] == ["transfer_learning", "lora"]
    assert {r["strategy"]: r["backbone_examples"] for r in report["rows"]}["lora"] == 64
    for r in report["rows"]:
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
    assert sum(r["paired"] is None for r in report["rows"]) == 1 and report["curves"]["lora"]
    assert report["recommendation"]["text"] and "AdaptFlow comparison" not in compared.stdout
    lora = {r["strategy"]: r for r in report["rows"]}["lora"]
    assert lora["seeds"]["seed"] == [42, 43] and len(lora["seeds"]["accuracy"]) == 2  # --seeds 2: each strategy twice
    assert report["seeds"] == 2


def test_compare_estimate_json(tiny_bert_dir, reviews_csv, tmp_path, cli_env) -> None:
    args = ["compare", "--estimate", "--gpu", "a100", "--json", "--model", str(tiny_bert_dir), "--data", str(reviews_csv)]
    args += ["--strategies", "transfer_learning,lora", "--max-length", "32", "--batch-size", "8", "--work-dir", str(tmp_path / "work")]
    started = time.perf_counter()
    result = adaptflow(*args, env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"compare --estimate: {time.perf_counter() - started:.1f} s")  # its speed is docs/compare.md's business, not a timed test
    rows = jq(result.stdout, "[.rows[] | {strategy, probe_steps}]")
    assert rows in (
        [{"strategy": "transfer_learning", "probe_steps": rows[0]["probe_steps"]}, {"strategy": "lora", "probe_steps": 8}],
        None,
    )
    projection = json.loads(result.stdout)
    for row in projection["rows"]:
        assert row["projected_train_s"] > 0 and row["projected_peak_memory_mb"] > 0 and 0 < row["gpu_projected_train_s"]
    assert "30% of its published peak (312 TFLOP/s)" in projection["gpu_assumption"]
    bad = adaptflow("compare", "--estimate", "--gpu", "v100", "--model", str(tiny_bert_dir), "--data", str(reviews_csv), env=cli_env)
    assert bad.returncode == 2 and "--gpu" in bad.stderr and "a100" in bad.stderr and "Traceback" not in bad.stderr
