"""Training on Kubernetes: the run's job for Kubeflow's operators, created and followed with kubectl.

Two job kinds, one follower:

- ``trainjob``: Kubeflow Trainer v2's ``TrainJob`` (infra/k8s/trainjob.yaml) on a training
  runtime (``launch.k8s_runtime``). The runtime's JobSet starts one pod per node; its torch
  policy hands torchrun the node count, node rank and master address.
- ``pytorchjob``: the v1 training operator's ``PyTorchJob`` (infra/k8s/pytorchjob.yaml), for
  clusters that have not moved to Trainer v2 (v2 replaced it and dropped ``ElasticPolicy``).

Either way the pods run the same torchrun agent and worker as the other launchers, reading
the run spec from the shared work volume; the train task streams the first node's log and
reads the job's outcome.
"""

from __future__ import annotations

import json
import re
import string
import subprocess
import time
from pathlib import Path

import yaml

from adaptflow.tasks.assets import asset
from adaptflow.tasks.config import AdaptConfig
from adaptflow.tasks.errors import Problem, TrainingError

PYTORCHJOB_TEMPLATE = asset("adaptflow.infra", "k8s", "pytorchjob.yaml")
TRAINJOB_TEMPLATE = asset("adaptflow.infra", "k8s", "trainjob.yaml")
TORCH_RUNTIME_TEMPLATE = asset("adaptflow.infra", "k8s", "torch-runtime.yaml")
KUBERNETES_LAUNCHERS = ("trainjob", "pytorchjob")


def job_name(run_dir: Path) -> str:
    """A Kubernetes name (DNS-1123) for the run."""
    return re.sub(r"[^a-z0-9-]", "-", f"adaptflow-{run_dir.name}".lower())[:63].strip("-")


def _render(template: Path, cfg: AdaptConfig, spec_path: Path, name: str) -> dict:
    launch = cfg.launch
    text = string.Template(template.read_text()).substitute(
        JOB_NAME=name,
        NAMESPACE=launch.k8s_namespace,
        RUNTIME=launch.k8s_runtime,
        NNODES=launch.nnodes,
        PROCS_PER_NODE=launch.num_processes,
        IMAGE=launch.k8s_image,
        RUN_SPEC=str(spec_path),
        GPUS_PER_NODE=launch.gpus_per_node,
        WORK_DIR=str(cfg.resolved_work_dir()),
        WORK_CLAIM=launch.k8s_work_claim,
        WORKERS=launch.nnodes - 1,
        ACCELERATE_USE_CPU="true" if launch.gpus_per_node == 0 else "false",
    )
    return yaml.safe_load(text)


def _set_gpus(resources_holder: dict, key: str, gpus: int) -> None:
    """GPU limits on a container (or a TrainJob's trainer); none at all for CPU pods."""
    if gpus == 0:
        resources_holder.pop(key)
    else:
        resources_holder[key]["limits"]["nvidia.com/gpu"] = str(gpus)  # a Kubernetes quantity is a string


def render_pytorchjob(cfg: AdaptConfig, spec_path: Path, name: str) -> dict:
    """The PyTorchJob of infra/k8s/pytorchjob.yaml for this run: nnodes pods of num_processes each."""
    job = _render(PYTORCHJOB_TEMPLATE, cfg, spec_path, name)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    if cfg.launch.nnodes == 1:
        del replicas["Worker"]
    for spec in replicas.values():
        _set_gpus(spec["template"]["spec"]["containers"][0], "resources", cfg.launch.gpus_per_node)
    return job


def render_trainjob(cfg: AdaptConfig, spec_path: Path, name: str) -> dict:
    """The TrainJob of infra/k8s/trainjob.yaml for this run: nnodes nodes of num_processes each."""
    job = _render(TRAINJOB_TEMPLATE, cfg, spec_path, name)
    _set_gpus(job["spec"]["trainer"], "resourcesPerNode", cfg.launch.gpus_per_node)
    return job


def render_job(cfg: AdaptConfig, spec_path: Path, name: str) -> KubeJob:
    """The job of the configured Kubernetes launcher, ready to submit."""
    if cfg.launch.launcher == "trainjob":
        return TrainJob(render_trainjob(cfg, spec_path, name))
    return PyTorchJob(render_pytorchjob(cfg, spec_path, name))


class KubeJob:
    """A training job driven through kubectl: create, wait for the first node's pod, follow its log, read the outcome."""

    resource = ""  # the kind as kubectl names it

    def __init__(self, job: dict, poll_s: float = 2.0, timeout_s: float = 1800.0):
        self.job = job
        self.kind = job["kind"]
        self.name = job["metadata"]["name"]
        self.namespace = job["metadata"]["namespace"]
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.leader = ""

    def _kubectl(self, *args: str, stdin: str | None = None) -> str:
        try:
            done = subprocess.run(["kubectl", "-n", self.namespace, *args], input=stdin, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise TrainingError(
                Problem(
                    "launch.launcher",
                    f"a {self.kind} needs kubectl on the PATH",
                    "install kubectl and configure access to the cluster",
                )
            ) from None
        if done.returncode != 0:
            raise TrainingError(
                Problem(
                    f"kubectl {args[0]} {self.name}",
                    done.stderr.strip() or done.stdout.strip(),
                    f"check the cluster, the namespace and that the {self.kind} operator is installed",
                )
            )
        return done.stdout.strip()

    def submit(self) -> None:
        self._kubectl("apply", "-f", "-", stdin=json.dumps(self.job))

    def _poll(self, read, done, what: str):
        """``read()`` until ``done(value)``; the last value."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            value = read()
            if done(value):
                return value
            time.sleep(self.poll_s)
        raise TrainingError(
            Problem(
                f"{self.kind} {self.name}",
                f"{what} did not happen within {self.timeout_s:.0f} s",
                f"look at `kubectl -n {self.namespace} describe {self.resource} {self.name}`",
            )
        )

    def leader_pod(self) -> str:
        """The name of the first node's pod ('' while it does not exist)."""
        raise NotImplementedError

    def finished(self) -> str:
        """'Succeeded' or 'Failed' once the job has ended, '' before."""
        raise NotImplementedError

    def wait_for_leader(self) -> None:
        def phase() -> str:
            self.leader = self.leader or self.leader_pod()
            if not self.leader:
                return ""
            return self._kubectl("get", "pod", self.leader, "--ignore-not-found", "-o", "jsonpath={.status.phase}")

        self._poll(phase, lambda p: p in {"Running", "Succeeded", "Failed"}, "the first node's pod starting")

    def logs_command(self) -> list[str]:
        return ["kubectl", "-n", self.namespace, "logs", "-f", self.leader]

    def outcome(self) -> int:
        """0 when the job succeeded, 1 when it failed."""
        return 0 if self._poll(self.finished, bool, "the job finishing") == "Succeeded" else 1


class PyTorchJob(KubeJob):
    """The v1 training operator's job: its master pod is node 0."""

    resource = "pytorchjob"

    def leader_pod(self) -> str:
        return f"{self.name}-master-0"

    def finished(self) -> str:
        last = self._kubectl("get", self.resource, self.name, "-o", "jsonpath={.status.conditions[-1:].type}")
        return last if last in {"Succeeded", "Failed"} else ""


class TrainJob(KubeJob):
    """Trainer v2's job: the runtime's JobSet runs the trainer nodes as the indexed job 'node'."""

    resource = "trainjob"

    def leader_pod(self) -> str:
        selector = f"jobset.sigs.k8s.io/jobset-name={self.name},jobset.sigs.k8s.io/replicatedjob-name=node,batch.kubernetes.io/job-completion-index=0"
        names = self._kubectl("get", "pod", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}").split()
        return names[0] if names else ""

    def finished(self) -> str:
        true = self._kubectl("get", self.resource, self.name, "-o", 'jsonpath={.status.conditions[?(@.status=="True")].type}').split()
        if "Complete" in true:
            return "Succeeded"
        return "Failed" if "Failed" in true else ""
