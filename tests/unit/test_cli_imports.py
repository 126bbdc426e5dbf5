"""The CLI answers help, stack and preflight refusals without loading the training stack.

Each case runs the real ``adaptflow`` entry point in a fresh interpreter (what a user's shell
does) and reads back which of the heavy packages it imported: none of torch, transformers,
datasets, accelerate, peft or ray, and not Prefect either, since no flow runs. Timings are
a benchmark's business (bench/cli_latency.py); this test only checks what was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from adaptflow.flows.cli.app import COMMANDS, app, load

HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft", "ray", "prefect")

PROBE = """
import json, sys
out, args = sys.argv[1], json.loads(sys.argv[2])
sys.argv = ["adaptflow", *args]
from adaptflow.flows.cli.app import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(%r))
with open(out, "w") as fh:
    json.dump({"code": code, "heavy": heavy}, fh)
""" % (list(HEAVY),)


def _probe(args: list[str], tmp_path: Path, env_extra: dict[str, str] | None = None) -> dict:
    out = tmp_path / "probe.json"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(ADAPTFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), COLUMNS="120", **(env_extra or {}))
    result = subprocess.run([sys.executable, "-c", PROBE, str(out), json.dumps(args)], env=env, capture_output=True, text=True, timeout=120)
    assert out.exists(), result.stderr[-3000:]
    return {**json.loads(out.read_text()), "stderr": result.stderr, "stdout": result.stdout}


HELP_CASES = [["--help"]] + [[c.name, "--help"] for c in COMMANDS] + [["stack", "up", "--help"], ["models", "list", "--help"]]


@pytest.mark.parametrize("args", HELP_CASES, ids=lambda a: " ".join(a))
def test_help_imports_no_training_stack_and_no_prefect(args, tmp_path):
    probe = _probe(args, tmp_path)
    assert probe["code"] in (0, None), probe["stderr"][-2000:]
    assert "Usage" in probe["stdout"]
    assert probe["heavy"] == [], f"`adaptflow {' '.join(args)}` imported {probe['heavy']}"


def test_stack_status_and_env_import_no_training_stack(tmp_path):
    for args in (["stack", "status"], ["stack", "env"]):
        probe = _probe(args, tmp_path)
        assert probe["code"] == 1, probe["stderr"]  # no stack in this home: says so, exit 1
        assert "not running" in probe["stdout"] + probe["stderr"]
        assert probe["heavy"] == [], f"`adaptflow {' '.join(args)}` imported {probe['heavy']}"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "--no-register-model", "--data", "missing/reviews.csv"], "missing/reviews.csv: no such file or folder"),
        (["run", "--no-register-model", "--model", "/no/such/model"], "/no/such/model"),
        (["run", "--no-register-model", "--lora-r", "-3", "--strategy", "lora"], "lora"),
        (["compare", "--no-register-model", "--data", "missing/reviews.csv"], "missing/reviews.csv"),
    ],
    ids=["missing data", "missing model", "bad option", "compare missing data"],
)
def test_preflight_refusals_import_no_training_stack_and_no_prefect(args, expected, tmp_path):
    probe = _probe(args, tmp_path)
    assert probe["code"] == 2, probe["stderr"][-2000:]
    assert expected in probe["stderr"] and "Traceback" not in probe["stderr"]
    assert probe["heavy"] == [], f"`adaptflow {' '.join(args)}` imported {probe['heavy']}"


def test_lazy_root_help_reads_like_the_root_built_from_every_command():
    """COMMANDS' one-line summaries are the commands' own: the root's help with every command loaded is the same."""
    runner = CliRunner()
    env = {"COLUMNS": "200", "TERM": "dumb"}
    lazy = runner.invoke(typer_group(), ["--help"], env=env, prog_name="adaptflow")
    eager_group = typer_group()
    for command in COMMANDS:
        eager_group.commands[command.name] = load(command)
    eager = runner.invoke(eager_group, ["--help"], env=env, prog_name="adaptflow")
    assert lazy.exit_code == eager.exit_code == 0
    assert lazy.output == eager.output
    assert all(c.name in lazy.output for c in COMMANDS)


def typer_group() -> click.Group:
    import typer

    return typer.main.get_command(app)
