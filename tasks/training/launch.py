"""Launch the training worker in its own process(es) and follow it.

The train task resolves the launcher (plain python for one process, ``torchrun`` for
several, ``accelerate launch`` when an accelerate config file is given), starts the
worker, forwards its output line by line as it happens and turns its progress events
into callbacks (Prefect logger, progress artifact, CLI progress bar).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable

import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from adaptflow.tasks import errors
from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.errors import Problem, TrainingError, WorkerCrashed
from adaptflow.tasks.modeling import cpu_threads_per_process
from adaptflow.tasks.storage.s3 import S3Settings
from adaptflow.tasks.training.checkpoints import CheckpointMirror
from adaptflow.tasks.training.checks import accelerate_config_path
from adaptflow.tasks.training.engine import EVENT_PREFIX, RunSpec
from adaptflow.tasks.training.kubernetes import KUBERNETES_LAUNCHERS, job_name, render_job

Event = dict
EventSink = Callable[[Event], None]
LineSink = Callable[[str], None]

# Listeners that want every worker event of this process (the CLI's progress bar).
_listeners: list[EventSink] = []
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def add_listener(listener: EventSink) -> Callable[[], None]:
    """Register a callback for worker events; returns a function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


# One worker for every run: it picks the language-model or the classification task from the config.
WORKER_MODULE = "adaptflow.tasks.training.worker"
RAY_DRIVER = "adaptflow.tasks.training.ray_train"


def launch_command(cfg: AdaptConfig, spec_path: Path, node_rank: int | None = None, module: str = WORKER_MODULE) -> list[str]:
    """The command that starts this node's training processes (``node_rank`` overrides the config's).

    ``module`` is the worker module to run (tests and benchmarks substitute their own).
    """
    launch = cfg.launch
    if launch.launcher == "ray":  # a driver that hands the worker to Ray Train on the cluster
        return [sys.executable, "-m", RAY_DRIVER, str(spec_path)]
    rank = launch.node_rank if node_rank is None else node_rank
    worker = ["-m", module, str(spec_path)]
    multinode = launch.launcher == "multinode"
    if launch.accelerate_config:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(accelerate_config_path(launch.accelerate_config)),
        ]
        command += ["--num_processes", str(launch.num_processes * launch.nnodes)]
        if multinode:
            command += [
                "--num_machines",
                str(launch.nnodes),
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                str(launch.master_addr),
                "--main_process_port",
                str(launch.master_port),
            ]
        return command + worker
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(launch.num_processes)]
    if launch.elastic:
        # c10d rendezvous: ranks are handed out at every (re)join, so no node rank. Node 0 (the
        # flow's machine, at master_addr) hosts the rendezvous store: said explicitly, because
        # torchrun's guess (does master_addr name this host?) misses addresses on secondary NICs.
        # Whichever node gets global rank 0 writes the outputs to the shared run folder. A
        # restarted group resumes from the run's newest checkpoint.
        low, high = launch.node_range
        rendezvous = [
            "--nnodes",
            f"{low}:{high}",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"{launch.master_addr}:{launch.master_port}",
            "--rdzv-id",
            spec_path.parent.name,
            "--rdzv-conf",
            f"is_host={int(rank == 0)}",
            "--max-restarts",
            str(launch.max_restarts),
        ]
        if rank == 0:
            # The address the workers of a group led by this node meet at. Other nodes use their
            # hostname's address; where it is not the one the others reach, set PET_LOCAL_ADDR there.
            rendezvous += ["--local-addr", str(launch.master_addr)]
        return torchrun + rendezvous + worker
    if multinode:
        # Static rendezvous: node ranks are fixed, so node 0 (where the flow runs) holds global rank 0.
        rendezvous = [
            "--nnodes",
            str(launch.nnodes),
            "--node-rank",
            str(rank),
            "--master-addr",
            str(launch.master_addr),
            "--master-port",
            str(launch.master_port),
        ]
        return torchrun + rendezvous + ["--max-restarts", str(launch.max_restarts)] + worker
    if launch.num_processes == 1:
        return [sys.executable, *worker]
    return torchrun + ["--standalone", "--nnodes", "1"] + worker


NODE_ENV = ("ACCELERATE_USE_CPU", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "PYTHONUNBUFFERED", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")


def other_node_commands(cfg: AdaptConfig, spec_path: Path, module: str = WORKER_MODULE) -> list[str]:
    """What the cluster (or a person) runs on nodes 1..N-1: the same agent with their node rank.

    The run directory, prepared data and model folder must be on storage every node sees
    (a shared volume on Kubernetes, NFS on bare metal).
    """
    if cfg.launch.launcher != "multinode":
        return []
    env = worker_env(cfg)
    prefix = ["env"] + [f"{k}={env[k]}" for k in NODE_ENV if k in env]
    return [
        shlex.join(prefix + launch_command(cfg, spec_path, node_rank=r, module=module))
        for r in range(cfg.launch.nnodes)
        if r != cfg.launch.node_rank
    ]


def worker_env(cfg: AdaptConfig) -> dict[str, str]:
    """The worker's environment: no S3 secrets, one CPU share per process, unbuffered output.

    The Ray driver keeps the S3 keys: Ray Train writes the checkpoints to S3 with them.
    """
    ray = cfg.launch.launcher == "ray"
    env = {k: v for k, v in os.environ.items() if ray or k not in SECRET_VARIABLES}
    env.setdefault("OMP_NUM_THREADS", str(cpu_threads_per_process(cfg.launch.num_processes)))
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    if cfg.launch.elastic:
        # torch 2.13 keeps the first round's master address when the group re-forms, but writes it
        # only under the first round's keys: a node that (re)joins later waits for it forever. Without
        # the shared store every round publishes its own address.
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if not torch.cuda.is_available():
        # What `accelerate launch --cpu` sets: several processes on CPU form a gloo group (MULTI_CPU).
        env.setdefault("ACCELERATE_USE_CPU", "true")
    return env


TAIL_LINES = 20
"""Lines of the worker's output quoted when it crashes."""
PROGRESS_BAR = re.compile(r"\d+%\|")


def is_noise(line: str) -> bool:
    """A blank line or a progress bar's refresh (tqdm: ``40%|####      | 4/10``): nothing to quote in an error."""
    return not line.strip() or PROGRESS_BAR.search(line) is not None


def fresh_log(run_dir: Path) -> Path:
    """``RUN/worker.log`` for this attempt; an earlier attempt's log is kept as ``worker.attemptN.log``."""
    log = run_dir / "worker.log"
    if log.exists():
        attempt = 1
        while (run_dir / f"worker.attempt{attempt}.log").exists():
            attempt += 1
        log.rename(run_dir / f"worker.attempt{attempt}.log")
    return log


def run_training(
    cfg: AdaptConfig,
    prepared_path: Path,
    model_path: Path,
    run_dir: Path,
    on_event: EventSink = lambda e: None,
    on_line: LineSink = lambda line: None,
    mirror: CheckpointMirror | None = None,
    module: str = WORKER_MODULE,
) -> dict:
    """Run the worker to completion; return the metrics it wrote. Raises TrainingError on failure.

    With a checkpoint ``mirror``, the newest mirrored checkpoint is restored first when the
    run folder has none, and every new checkpoint is uploaded as soon as it is written.
    """
    spec_path = RunSpec(cfg, prepared_path, model_path, run_dir).write()
    if mirror is not None:
        restored = mirror.restore_into(run_dir)
        if restored is not None:
            on_line(f"restored checkpoint {restored.name} from {mirror.uri}")
    (run_dir / "config.json").write_text(cfg.to_json())
    job = None
    if cfg.launch.launcher in KUBERNETES_LAUNCHERS:
        job = render_job(cfg, spec_path, job_name(run_dir))
        job.submit()
        on_line(f"created {job.kind} {job.name} ({cfg.launch.nnodes} node(s)); waiting for its first node's pod")
        job.wait_for_leader()
        command = job.logs_command()
    else:
        command = launch_command(cfg, spec_path, module=module)
    on_line("launching: " + " ".join(command[1:]))
    others = other_node_commands(cfg, spec_path, module)
    if others:
        pending = run_dir / "node_commands.txt.tmp"  # written whole, then renamed: a reader never sees half a file
        pending.write_text("\n".join(others) + "\n")
        pending.replace(run_dir / "node_commands.txt")
        on_line(f"waiting for {len(others)} other node(s); on each, run the line for its rank from {run_dir / 'node_commands.txt'}")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    worker_error: Event | None = None
    log_path = fresh_log(run_dir)
    with (
        open(log_path, "w", buffering=1) as log,  # line-buffered: the log can be followed while the run goes on
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=worker_env(cfg)) as proc,
    ):
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            log.write(raw)
            if line.startswith(EVENT_PREFIX):
                event = json.loads(line[len(EVENT_PREFIX) :])
                if event["type"] == "error":
                    worker_error = event
                    continue
                for sink in (on_event, *_listeners):
                    sink(event)
                if event["type"] == "log":
                    on_line(event["message"])
                if event["type"] == "checkpoint" and mirror is not None:
                    mirrored = mirror.upload(Path(event["path"]))
                    on_line(
                        f"checkpoint mirrored to {mirrored}"
                        if mirrored
                        else f"checkpoint {Path(event['path']).name} superseded before its upload; skipped"
                    )
                continue
            if not is_noise(line):
                tail.append(line)
            on_line(line)
        returncode = proc.wait()
    if job is not None:
        returncode = job.outcome()
    if worker_error is not None:
        error_class = getattr(errors, worker_error["kind"], TrainingError)
        raise error_class([Problem(**p) for p in worker_error["problems"]])
    if returncode != 0:
        last = "\n".join(tail)
        raise WorkerCrashed(
            Problem(
                "training worker",
                f"exited with code {returncode}; last output:\n{last}",
                f"see {log_path} for the whole log",
            )
        )
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise TrainingError(Problem(str(metrics_path), "the worker finished without writing its metrics"))
    return json.loads(metrics_path.read_text())


# ---- Prefect wrapper -----------------------------------------------------------------


class _ProgressArtifact:
    """Keeps a Prefect progress artifact in step with the worker, at most once per percent."""

    def __init__(self, description: str):
        self.id = create_progress_artifact(progress=0.0, description=description)
        self.shown = 0.0

    def __call__(self, event: Event) -> None:
        if event["type"] != "progress":
            return
        pct = min(100.0, 100.0 * event["step"] / max(1, event["total_steps"]))
        if pct - self.shown >= 1.0 or pct >= 100.0:
            update_progress_artifact(self.id, progress=pct)
            self.shown = pct


def describe_event(event: Event) -> str | None:
    """One readable log line for a progress or evaluation event."""
    if event["type"] == "progress":
        return (
            f"step {event['step']}/{event['total_steps']} epoch {event['epoch']:.2f} "
            f"loss {event['train_loss']:.4f} lr {event['learning_rate']:.2e}"
        )
    if event["type"] == "eval":
        line = f"eval at step {event['step']} on {event['split']}: loss {event['eval_loss']:.4f}"
        return line + (f" accuracy {event['accuracy']:.4f}" if "accuracy" in event else "")  # language-model runs have no accuracy
    return None


def retry_after_crash(task, task_run, state) -> bool:
    """Retry a training whose processes crashed (it resumes from its checkpoint), never an error the worker reported
    or bad input: those would fail the same way again."""
    failure = getattr(state.data, "result", state.data)  # the exception, or Prefect's result record holding it
    return isinstance(failure, WorkerCrashed)


def checkpoint_mirror(cfg: AdaptConfig) -> CheckpointMirror | None:
    """Where the run's checkpoints are mirrored: ``training.checkpoint_uri``, or nowhere."""
    if not cfg.training.checkpoint_uri or cfg.launch.launcher == "ray":  # Ray Train keeps a 'ray' run's checkpoints there itself
        return None
    return CheckpointMirror(S3Settings.resolve(), cfg.training.checkpoint_uri)


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, retry_condition_fn=retry_after_crash)
def train_task(cfg: AdaptConfig, prepared_path: Path, model_path: Path, run_dir: Path, module: str = WORKER_MODULE) -> dict:
    """Train in a separate process (``module``: the worker); its lines go to the run log, its progress to an artifact."""
    logger = get_run_logger()
    progress = _ProgressArtifact(f"Training {cfg.strategy.name} on {cfg.launch.num_processes} process(es)")

    def on_event(event: Event) -> None:
        progress(event)
        line = describe_event(event)
        if line:
            logger.info(line)

    return run_training(
        cfg, prepared_path, model_path, run_dir, on_event=on_event, on_line=logger.info, mirror=checkpoint_mirror(cfg), module=module
    )
