"""How long the ``adaptflow`` command makes a person wait, measured as a person runs it: whole processes.

    python -m bench.cli_latency [--adaptflow PATH] [--repeats 5] [--label after]

Prints, each the median of ``--repeats`` runs of a fresh process (no PREFECT_API_URL, a
temporary ADAPTFLOW_HOME):

1. ``adaptflow --help``                          target <= 1.0 s
2. ``adaptflow run --data missing.csv``          one Error line, exit 2; target <= 1.5 s
3. ``adaptflow models list`` on a running stack  (``stack up`` first, in its own home); target <= 2.0 s

then two ``adaptflow run`` in a row on a fresh home without ``stack up`` (the bundled
sample, 2 training steps, not registered), each timed from the command's start to the
training loop's ``start`` event in its worker.log, and the same less the imports it cannot
avoid: the CLI importing the adapt flow and the worker importing its training stack (each
timed here in a process of its own). Target: <= 3 s for the second run.

``--adaptflow`` runs another installation's command (e.g. an older checkout's venv), so
before and after are measured side by side on the same machine. Writes
bench-results/cli_latency[-LABEL].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import console, print_table, write_json

START_EVENT = '"type": "start"'
TARGETS = {"help": 1.0, "refusal": 1.5, "models list": 2.0, "second run to first step, less imports": 3.0}


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ADAPTFLOW_", "AWS_"))}
    env.update(ADAPTFLOW_HOME=str(home), PREFECT_HOME=str(home / "prefect-cli"), COLUMNS="120")
    return env


def _timed(command: list[str], env: dict[str, str], expect: int = 0) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != expect:
        console.print(f"[red]{' '.join(command)} exited {result.returncode}, expected {expect}[/]\n{result.stderr[-2000:]}")
        sys.exit(1)
    return elapsed, result


def median_of(repeats: int, command: list[str], env: dict[str, str], expect: int = 0, check=None) -> list[float]:
    times = []
    for _ in range(repeats):
        elapsed, result = _timed(command, env, expect)
        if check is not None:
            check(result)
        times.append(elapsed)
    return times


def _one_error_line(result: subprocess.CompletedProcess) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    if len(errors) != 1 or "Traceback" in result.stderr:
        console.print(f"[red]expected one Error line, got:[/]\n{result.stderr}")
        sys.exit(1)


def time_to_first_step(adaptflow: str, env: dict[str, str], work: Path) -> tuple[float, float]:
    """Seconds from ``adaptflow run`` to its worker's ``start`` event, and to the command's exit."""
    before = set(work.glob("runs/*/*"))
    started = time.perf_counter()
    command = [adaptflow, "run", "--no-register-model", "--max-steps", "2", "--work-dir", str(work)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_step = None
    while proc.poll() is None and first_step is None:
        for log in set(work.glob("runs/*/*")) - before:
            worker_log = log / "worker.log"
            if worker_log.exists() and START_EVENT in worker_log.read_text(errors="replace"):
                first_step = time.perf_counter() - started
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    total = time.perf_counter() - started
    if proc.returncode != 0 or first_step is None:
        console.print(f"[red]adaptflow run exited {proc.returncode}[/]\n{stdout[-1500:]}\n{stderr[-3000:]}")
        sys.exit(1)
    return first_step, total


def import_seconds(python: str, code: str) -> float:
    """The median of three fresh interpreters importing ``code``, less a bare interpreter's start."""
    bare = statistics.median(_timed([python, "-c", "pass"], os.environ.copy())[0] for _ in range(3))
    return statistics.median(_timed([python, "-c", code], os.environ.copy())[0] for _ in range(3)) - bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptflow", default=str(Path(sys.executable).with_name("adaptflow")), help="the adaptflow command to time")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (the median is reported)")
    parser.add_argument("--label", default="", help="names the results file (e.g. before, after)")
    args = parser.parse_args()
    adaptflow = args.adaptflow
    python = str(Path(adaptflow).with_name("python"))
    root = Path(tempfile.mkdtemp(prefix="adaptflow-cli-latency-"))
    figures: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    try:
        home = root / "plain"
        samples["help"] = median_of(args.repeats, [adaptflow, "--help"], _env(home))
        samples["refusal"] = median_of(
            args.repeats, [adaptflow, "run", "--data", "missing.csv"], _env(home), expect=2, check=_one_error_line
        )

        stack_home = root / "stack"
        _timed([adaptflow, "stack", "up"], _env(stack_home))
        try:
            samples["models list"] = median_of(args.repeats, [adaptflow, "models", "list"], _env(stack_home))
        finally:
            _timed([adaptflow, "stack", "down"], _env(stack_home))

        run_home = root / "runs"
        runs = [time_to_first_step(adaptflow, _env(run_home), run_home / "work") for _ in range(2)]
        subprocess.run([adaptflow, "stack", "down"], env=_env(run_home), capture_output=True, timeout=120)  # a background server, if any
        cli_imports = import_seconds(python, "import adaptflow.flows.adapt")
        worker_imports = import_seconds(
            python,
            "import adaptflow.tasks.training.worker, adaptflow.tasks.training.classification, accelerate, peft; "
            "from transformers import AutoModel, AutoTokenizer",
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    for name, values in samples.items():
        figures[name] = statistics.median(values)
    imports = cli_imports + worker_imports
    for i, (first_step, total) in enumerate(runs, start=1):
        figures[f"run {i}: to first step"] = first_step
        figures[f"run {i}: whole command"] = total
    figures["first run to first step, less imports"] = runs[0][0] - imports
    figures["second run to first step, less imports"] = runs[1][0] - imports
    rows = [
        [name, f"{value:.2f}", f"<= {TARGETS[name]:.1f}" if name in TARGETS else "", _verdict(name, value)]
        for name, value in figures.items()
    ]
    rows.append(["imports: CLI's flow + worker's training stack", f"{cli_imports:.2f} + {worker_imports:.2f}", "", ""])
    title = f"adaptflow latency, seconds (median of {args.repeats} for the commands; {adaptflow})"
    print_table(title, ["what", "seconds", "target", ""], rows)
    write_json(
        f"cli_latency{'-' + args.label if args.label else ''}",
        {"adaptflow": adaptflow, "figures": figures, "samples": samples, "imports": {"cli": cli_imports, "worker": worker_imports}},
    )
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))


def _verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    return "met" if value <= TARGETS[name] else "MISSED"


if __name__ == "__main__":
    main()
