"""What orchestration costs: the whole ``adapt`` flow against the bare training worker, one run each.

    python bench/overhead.py [--train-samples 10000] [--strategy full_fine_tuning]

Both train the same configuration on the same prepared data (a run of about three minutes
on two CPU cores). The bare side is ``python -m adaptflow.tasks.training.worker SPEC``, timed from
process start to exit. The flow side is the ``adapt`` flow (embedded Prefect server, already
started): input checks, data preparation (found in its cache, as on any rerun), the same
worker launched and streamed, evaluation with its plots and artifacts, and registration
to a local SeaweedFS server this script starts in a temporary folder.
Prints both times and their ratio (target <= 1.10); writes bench-results/overhead.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from adaptflow.tasks.config import TASK_STRATEGY_NAMES, AdaptConfig
from adaptflow.tasks.training.worker import RunSpec
from bench.common import SST2, console, prepare_sst2, print_table, require_sst2, strategy_config, work_dir, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sst2", type=Path, default=SST2, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--strategy", default="full_fine_tuning", choices=TASK_STRATEGY_NAMES)
    parser.add_argument("--output", help="JSON file (default bench-results/overhead.json)")
    args = parser.parse_args()

    folder = require_sst2(args.sst2)
    work = work_dir("overhead")
    os.environ["ADAPTFLOW_HOME"] = str(work / "home")  # the local S3 server and its credentials live here
    from adaptflow.infra.stack import LocalS3Stack

    stack = LocalS3Stack()
    stack.up()
    try:
        model, data_cfg, prepared = prepare_sst2(folder, work, args.train_samples)
        cfg = strategy_config(model, data_cfg, args.strategy, work)
        flow_cfg = AdaptConfig.model_validate({**cfg.model_dump(), "registry": {"register_model": True, "model_name": "overhead"}})

        spec = RunSpec(cfg, prepared.path, model, work / "bare").write()
        console.print(f"bare worker: {args.strategy} on {args.train_samples:,} examples ...")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "adaptflow.tasks.training.worker", str(spec)], check=True, stdout=subprocess.DEVNULL)
        bare = time.perf_counter() - started

        from prefect import flow

        from adaptflow.flows.adapt import adapt

        @flow(name="warm-up")
        def warm_up() -> None:
            return None

        started = time.perf_counter()
        warm_up()
        server_start = time.perf_counter() - started
        console.print("adapt flow: the same configuration, end to end ...")
        started = time.perf_counter()
        summary = adapt(config=flow_cfg)
        whole = time.perf_counter() - started
    finally:
        stack.down()
    ratio = whole / bare
    print_table(
        f"Orchestration overhead, {args.strategy}, {args.train_samples:,} SST-2 examples",
        ["measure", "seconds"],
        [
            ["bare training worker (process start to exit)", f"{bare:.1f}"],
            ["adapt flow (checks, prepare, train, evaluate, register)", f"{whole:.1f}"],
            ["ratio flow / bare (target <= 1.10)", f"{ratio:.3f} ({'met' if ratio <= 1.10 else 'MISSED'})"],
            ["embedded Prefect server start (once per process, not in the ratio)", f"{server_start:.1f}"],
        ],
    )
    write_json(
        "overhead",
        {
            "strategy": args.strategy,
            "train_samples": args.train_samples,
            "bare_worker_s": bare,
            "adapt_flow_s": whole,
            "ratio": ratio,
            "prefect_start_s": server_start,
            "version_uri": summary["version_uri"],
        },
        args.output,
    )


if __name__ == "__main__":
    main()
