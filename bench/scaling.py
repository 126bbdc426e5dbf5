"""Samples/s of 1 vs N training processes on this machine, measured side by side in one run.

    python bench/scaling.py [--data ../shared/data/sst2/train.tsv] [--samples 2000] [--processes 1 2]
    python bench/scaling.py --launcher ray --ray-address HOST:PORT     # Ray Train workers on a Ray cluster

Each configuration trains the same model on the same prepared data with the same global
batch (per-process batch = global batch / processes), through the real worker launched
by the train task (torchrun + gloo on CPU; with --launcher ray, Ray Train workers of one CPU
each, placed by Ray, which needs S3 for its checkpoints: `adaptflow stack up` or the S3
variables). Prints a table and writes bench-results/scaling.json (scaling-ray.json for Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from adaptflow.tasks.base_model import resolve_model
from adaptflow.tasks.config import DEFAULT_MODEL, load_config
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.training.launch import run_training

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"), help="training file (default: SST-2 train)"
    )
    parser.add_argument("--samples", type=int, default=2000, help="training rows (default 2000)")
    parser.add_argument("--global-batch", type=int, default=32, help="examples per optimizer step across processes")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--strategy", default="full_fine_tuning")
    parser.add_argument("--launcher", choices=["local", "ray"], default="local", help="torchrun here, or Ray Train on a Ray cluster")
    parser.add_argument("--ray-address", help="the Ray cluster's head (default: RAY_ADDRESS, or `adaptflow stack up --ray`'s)")
    parser.add_argument("--output", help="JSON file (default bench-results/scaling.json, scaling-ray.json with --launcher ray)")
    args = parser.parse_args()
    output = args.output or str(ROOT / "bench-results" / ("scaling-ray.json" if args.launcher == "ray" else "scaling.json"))
    launch = {"launcher": "ray", "ray_address": args.ray_address} if args.launcher == "ray" else {}

    work = Path(tempfile.mkdtemp(prefix="adaptflow-scaling-"))
    model = resolve_model(DEFAULT_MODEL, work)
    data_cfg = load_config({"data": {"data": args.data, "max_train_samples": args.samples, "max_eval_samples": 200, "max_length": 64}}).data
    prepared = prepare_data(data_cfg, model, work)
    rows = []
    for n in args.processes:
        cfg = load_config(
            {
                "model": str(model),
                "strategy": {"name": args.strategy},
                "data": data_cfg.model_dump(),
                "training": {"batch_size": args.global_batch // n, "epochs": 1, "log_every": 20},
                "launch": {"num_processes": n, **launch},
            }
        )
        metrics = run_training(cfg, prepared.path, model, work / f"run-{n}")
        rows.append(
            {
                "processes": n,
                "per_process_batch": args.global_batch // n,
                "samples_per_s": metrics["samples_per_s"],
                "train_runtime_s": metrics["train_runtime_s"],
                "eval_accuracy": metrics["eval_accuracy"],
            }
        )
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup"] = row["samples_per_s"] / base
        row["efficiency"] = row["speedup"] / (row["processes"] / rows[0]["processes"])

    where = "Ray Train workers" if args.launcher == "ray" else f"torchrun processes, {os.cpu_count()} CPU cores"
    table = Table(title=f"{args.strategy}, {args.samples} examples, global batch {args.global_batch}, {where}")
    for col in ("processes", "batch/process", "samples/s", "train time", "speed-up", "efficiency", "accuracy (200 rows)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["processes"]),
            str(r["per_process_batch"]),
            f"{r['samples_per_s']:.1f}",
            f"{r['train_runtime_s']:.1f} s",
            f"{r['speedup']:.2f}x",
            f"{100 * r['efficiency']:.0f}%",
            f"{r['eval_accuracy']:.3f}",
        )
    Console(width=120).print(table)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(
        json.dumps(
            {"strategy": args.strategy, "samples": args.samples, "launcher": args.launcher, "cpu_count": os.cpu_count(), "rows": rows},
            indent=2,
        )
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
