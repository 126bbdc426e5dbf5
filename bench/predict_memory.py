"""Peak memory of ``adaptflow predict`` against the number of input rows (streaming predict).

Registers one classifier version (untrained weights: memory does not depend on their values)
on a local S3 server started in a temporary ADAPTFLOW_HOME, writes CSV inputs of each size,
and runs ``adaptflow predict`` on each as a user would, in its own process, sampling that
process's resident memory (RSS) every 20 ms with psutil. Prints each peak and the ratio of
the largest input's peak to the smallest's (flat memory: close to 1).

    python bench/predict_memory.py                        # tiny BERT (2 layers), 20,000 and 200,000 rows
    python bench/predict_memory.py --model minilm         # the bundled MiniLM (slow on 2 cores)
    python bench/predict_memory.py --rows 1000,10000
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.registry_sizes import LABELS, build_version_folder  # noqa: E402

WORDS = "the a film phone hotel meal was really truly quite great awful boring lovely and but not very so it service staff".split()
SAMPLE_S = 0.02


def write_rows(path: Path, rows: int, seed: int = 0) -> Path:
    """A CSV of ``rows`` review-like texts of 5 to 60 words, and an id column."""
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i in range(rows):
            writer.writerow([i, " ".join(rng.choices(WORDS, k=rng.randint(5, 60)))])
    return path


def peak_rss(command: list[str], env: dict[str, str]) -> tuple[int, float, subprocess.CompletedProcess]:
    """Run ``command``; its peak RSS in bytes (sampled), its wall time, and its result."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    return peak, time.perf_counter() - started, subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def main() -> int:
    from adaptflow.infra.stack import LocalS3Stack
    from adaptflow.tasks.registry.store import register_version
    from tests.model_fixtures import build_tiny_model, minilm_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "minilm"], default="tiny", help="tiny BERT (2 layers, hidden 32) or MiniLM")
    parser.add_argument("--rows", default="20000,200000", help="input sizes, comma-separated (default: 20000,200000)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="adaptflow-bench-") as tmp:
        work = Path(tmp)
        stack = LocalS3Stack(work / "s3")
        stack.up(timeout=90)
        try:
            base = build_tiny_model(work / "tiny") if args.model == "tiny" else minilm_path()
            folder = build_version_folder(base, "full_fine_tuning", work / "version")
            manifest = {"strategy": "full_fine_tuning", "data": {"label_names": LABELS}, "config": {"data": {"max_length": 128}}}
            register_version(stack.settings(), "bench-predict", folder, manifest)
            env = {**os.environ, **stack.env(), "ADAPTFLOW_HOME": str(work / "home"), "COLUMNS": "120"}
            env.pop("PREFECT_API_URL", None)  # a temporary Prefect server in the command, as on a fresh machine
            peaks = {}
            for rows in sizes:
                data = write_rows(work / f"rows-{rows}.csv", rows)
                output = work / f"out-{rows}.csv"
                command = [sys.executable, "-m", "adaptflow.flows.cli", "predict", "--model", "bench-predict", "--data", str(data)]
                peak, wall, done = peak_rss([*command, "--output", str(output), "--batch-size", "64"], env)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-4000:], sep="\n")
                    return done.returncode
                with output.open() as fh:
                    written = sum(1 for _ in fh) - 1
                assert written == rows, f"{output} has {written} rows, expected {rows}"
                peaks[rows] = peak
                print(f"{rows:>9,} rows: peak RSS {peak / 2**30:.3f} GiB ({peak / 2**20:.0f} MiB), {wall:.0f} s", flush=True)
        finally:
            stack.down()
    smallest, largest = min(sizes), max(sizes)
    print(f"model: {args.model}; peak at {largest:,} rows / peak at {smallest:,} rows: {peaks[largest] / peaks[smallest]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
