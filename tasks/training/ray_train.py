"""The 'ray' launcher: the training worker under Ray Train's ``TorchTrainer`` on a Ray cluster.

    python -m adaptflow.tasks.training.ray_train RUN_DIR/run_spec.json

The train task starts this driver like any other launcher command and reads its output.
The driver connects to the cluster (``launch.ray_address``, else ``RAY_ADDRESS``, else the
local head of ``adaptflow stack up --ray``) and hands the run to Ray Train, whose own
mechanisms do the distributed work:

- ``ScalingConfig``: ``launch.num_processes`` workers of ``launch.ray_cpus_per_worker`` CPUs
  (one GPU each when ``launch.gpus_per_node`` > 0), placed on the cluster's nodes by Ray,
  which also forms their process group (gloo on CPU, NCCL on GPUs). Every worker runs the
  same engine on the same :class:`RunSpec` as torchrun's workers do.
- ``RunConfig(storage_path=...)``: every engine checkpoint goes to ``ray.train.report``; Ray
  merges the ranks' files into one checkpoint on the registry's S3 (``training.checkpoint_uri``,
  else ``s3://BUCKET/PREFIX/ray-checkpoints``), under the run folder's name, the newest two kept.
- ``FailureConfig(max_failures=launch.max_restarts)``: when a worker or its node is lost,
  Ray restarts the worker group; each restarted worker downloads the last checkpoint
  (``ray.train.get_checkpoint``) into a folder of its own and the engine resumes from it.
  A rerun of the same run (the train task's retry) finds its checkpoints by name and resumes too.

Rank 0's events reach the driver through a Ray queue and are printed as the other
launchers' workers print them. Ray's log forwarding is off: the workers' other output
stays in Ray's logs (``ray logs``, or the session's ``logs/`` folder on each node).

The run folder, the prepared data and the model folder must be on storage every node of
the cluster sees (as for 'multinode'): rank 0 writes ``model/`` and ``metrics.json`` there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adaptflow.tasks.config import LaunchConfig
from adaptflow.tasks.errors import AdaptFlowError, Problem, TrainingError
from adaptflow.tasks.storage.s3 import S3Settings, parse_s3_uri
from adaptflow.tasks.training.checks import cluster_address
from adaptflow.tasks.training.engine import CHECKPOINTS, EVENT_PREFIX, LOOP_STATE, Checkpointing, RunSpec, run_task
from adaptflow.tasks.training.worker import die_with_parent, error_event, task_for

MODULE = "adaptflow.tasks.training.ray_train"
CHECKPOINT_FOLDER = "ray-checkpoints"


def checkpoint_storage(checkpoint_uri: str | None, settings: S3Settings) -> tuple[str, str, Any]:
    """Ray's ``storage_path`` (bucket/key, no scheme), its s3:// form, and a pyarrow S3 filesystem for it.

    The filesystem carries the keys to Ray's controller and workers; it is never printed.
    """
    from pyarrow import fs

    uri = (checkpoint_uri or settings.uri(settings.key(CHECKPOINT_FOLDER))).rstrip("/")
    bucket, key = parse_s3_uri(uri)
    options: dict[str, Any] = {"region": settings.region}
    if settings.endpoint_url:
        endpoint = urlsplit(settings.endpoint_url)
        options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
    if settings.access_key_id:
        options.update(access_key=settings.access_key_id, secret_key=settings.secret_access_key, session_token=settings.session_token)
    return f"{bucket}/{key}".rstrip("/"), uri, fs.S3FileSystem(**options)


# ---- inside each Ray Train worker ---------------------------------------------------------


def _restore(checkpoint, home: Path) -> Path:
    """Copy Ray's last checkpoint into this worker's own folder, where the engine resumes from it."""
    with checkpoint.as_directory() as folder:
        step = json.loads((Path(folder) / LOOP_STATE).read_text())["step"]
        local = home / CHECKPOINTS / f"step-{step:07d}"
        shutil.copytree(folder, local)
    return local


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: restore Ray's last checkpoint if any, then run the engine.

    Every engine checkpoint is reported to Ray (a collective call: all ranks checkpoint at
    the same steps), which uploads and merges the ranks' files.
    """
    import ray.train
    import ray.util
    import torch

    os.environ.update(config["env"])
    torch.set_num_threads(config["threads"])
    queue = config["events"]
    spec = RunSpec.read(Path(config["spec"]))
    context = ray.train.get_context()
    rank = context.get_world_rank()

    def write(line: str) -> None:
        queue.put(line)

    def log(message: str) -> None:
        write(EVENT_PREFIX + json.dumps({"type": "log", "message": message}))

    # every rank says where Ray placed it (the engine's own events come from rank 0 only)
    log(f"Ray Train worker {rank} of {context.get_world_size()} on node {ray.util.get_node_ip_address()} (pid {os.getpid()})")

    # this rank's own checkpoint folder; what an attempt killed on this node left there goes first
    home = Path(tempfile.gettempdir()) / "adaptflow-ray" / spec.run_dir.name / f"rank{rank}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    try:
        last = ray.train.get_checkpoint()
        if last is not None:
            local = _restore(last, home)
            if rank == 0:
                log(f"restored {local.name} from Ray's checkpoint storage ({last.path})")

        def saved(path: Path, state) -> None:
            checkpoint = ray.train.Checkpoint.from_directory(str(path))
            ray.train.report(
                {"step": state.step, "examples_seen": state.examples_seen},
                checkpoint=checkpoint,
                checkpoint_dir_name=path.name,
                checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,  # training goes on while it uploads
            )

        run_task(spec, task_for(spec), Checkpointing(home, saved, rotate=False), write)
        # the uploads still going on read from this rank's folder: wait for them before it goes
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    except AdaptFlowError as exc:
        if rank == 0:
            write(error_event(exc))
    finally:
        shutil.rmtree(home, ignore_errors=True)
        with contextlib.suppress(OSError):
            home.parent.rmdir()  # the run's folder, once no rank of this node uses it


# ---- the driver -----------------------------------------------------------------------------


def _worker_env(launch: LaunchConfig) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if launch.gpus_per_node == 0:
        env["ACCELERATE_USE_CPU"] = "true"  # several CPU workers form a gloo group (accelerate's MULTI_CPU)
    return env


def _relay(queue, done: threading.Event) -> None:
    """Print the workers' event lines as they come, until the run is over and the queue empty."""
    from ray.util.queue import Empty

    while True:
        try:
            print(queue.get(timeout=0.5), flush=True)
        except Empty:
            if done.is_set() and queue.empty():
                return


def gave_up(exc: Exception, restarts: int) -> TrainingError:
    """One problem for a run Ray Train gave up on: the last line of its error (the cause), and where the rest is.

    Reported as a TrainingError, which the train task does not retry: Ray already restarted the run ``restarts`` times.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith("...")]
    cause = lines[-1] if lines else type(exc).__name__
    return TrainingError(
        Problem(
            "Ray Train",
            f"the run failed after {restarts} restart(s) of its worker group: {cause}",
            "the whole error is in the run's worker.log; each worker's output is in Ray's logs on its node (`ray logs`)",
        )
    )


def drive(spec_path: Path) -> int:
    """Run the spec's training on the Ray cluster; returns the exit code."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    spec = RunSpec.read(spec_path)
    cfg = spec.config
    launch = cfg.launch
    address = cluster_address(launch)
    storage_path, storage_uri, filesystem = checkpoint_storage(cfg.training.checkpoint_uri, S3Settings.resolve())
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    gpu = {"GPU": 1} if launch.gpus_per_node else {}
    print(
        f"Ray cluster at {address}: {launch.num_processes} Ray Train worker(s) of {launch.ray_cpus_per_worker:g} CPU{' + 1 GPU' if gpu else ''}; "
        f"checkpoints in {storage_uri}/{spec.run_dir.name}; up to {launch.max_restarts} restart(s) of the worker group",
        flush=True,
    )
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": str(spec_path),
            "env": _worker_env(launch),
            "threads": max(1, int(launch.ray_cpus_per_worker)),
            "events": queue,
        },
        scaling_config=ScalingConfig(
            num_workers=launch.num_processes, use_gpu=bool(gpu), resources_per_worker={"CPU": launch.ray_cpus_per_worker, **gpu}
        ),
        run_config=RunConfig(
            name=spec.run_dir.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=launch.max_restarts),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    done = threading.Event()
    relay = threading.Thread(target=_relay, args=(queue, done), name="relay-events", daemon=True)
    relay.start()
    try:
        trainer.fit()
    except Exception as exc:  # Ray Train gave up (its error names the worker and carries its traceback)
        print(f"{type(exc).__name__}: {exc}", flush=True)  # the whole of it goes to worker.log
        print(error_event(gave_up(exc, launch.max_restarts)), flush=True)
        return 1
    finally:
        done.set()
        relay.join(30)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} RUN_DIR/run_spec.json", file=sys.stderr)
        return 2
    die_with_parent()  # the train task gone: this driver goes, and Ray stops the workers it owns
    try:
        return drive(Path(args[0]))
    except AdaptFlowError as exc:
        print(error_event(exc), flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
