"""Register the deployments of ``deployments/prefect.yaml`` with Prefect's own ``prefect deploy``.

``adaptflow deploy`` adds three things to ``prefect deploy --all``, and nothing else:

1. The work pools the file names exist first (``prefect deploy`` stops at the first
   deployment whose pool is missing): ``adaptflow-local`` (process, Prefect's default job
   template) and ``adaptflow-k8s-gpu`` (kubernetes, base job template
   ``infra/k8s/gpu-work-pool.json``). A pool that exists is left as it is.
2. ``ADAPTFLOW_PROJECT_DIR`` is this checkout: the pull step of the process pool's
   deployments, so their runs start here.
3. ``prefect --no-prompt deploy`` runs from the repository root (entrypoints are relative
   to it); a failure becomes one error line and a non-zero exit.

Everything else (parameter schemas, schedules, triggers, pull steps) is ``prefect deploy``'s
job. ``load_specs`` reads the file as ``prefect deploy`` does, for the tests that check it
against the flows' schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.utilities.templating import apply_values

from adaptflow.tasks.assets import asset, project_root
from adaptflow.tasks.errors import AdaptFlowError, ConfigError, Problem

PROJECT_ROOT = project_root()
PREFECT_FILE = asset("adaptflow.deployments", "prefect.yaml")
GPU_SUFFIX = "-k8s-gpu"
GPU_POOL_TEMPLATE = asset("adaptflow.infra", "k8s", "gpu-work-pool.json")
POOL_TYPES = {"adaptflow-local": "process", "adaptflow-k8s-gpu": "kubernetes"}
"""The work pools prefect.yaml may name, and their type."""
DEPLOY_TIMEOUT_S = 600


class DeployError(AdaptFlowError):
    title = "Deploy failed"
    exit_code = 1


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of ``deployments:`` after templating."""

    name: str
    entrypoint: str
    config: dict[str, Any]

    @property
    def flow_file(self) -> Path:
        return PROJECT_ROOT / self.entrypoint.split(":")[0]

    @property
    def available(self) -> bool:
        """Whether the entrypoint's file is in this checkout."""
        return self.flow_file.is_file()

    @property
    def pool(self) -> str:
        return self.config["work_pool"]["name"]


def load_specs(prefect_file: Path = PREFECT_FILE) -> list[DeploymentSpec]:
    """The deployments of ``prefect_file`` with ``{{ $VAR }}`` filled from the environment, as ``prefect deploy`` does.

    ``ADAPTFLOW_PROJECT_DIR`` (the process pool's working directory) defaults to this checkout.
    Other placeholders (``{{ event.payload.data }}`` in a trigger) are left as they are.
    """
    os.environ.setdefault("ADAPTFLOW_PROJECT_DIR", str(PROJECT_ROOT))
    raw = yaml.safe_load(prefect_file.read_text())
    specs = []
    for entry in raw.get("deployments", []):
        filled = apply_values(entry, dict(os.environ), remove_notset=False)
        specs.append(DeploymentSpec(filled["name"], filled["entrypoint"], filled))
    return specs


def check_names(specs: list[DeploymentSpec], names: list[str]) -> None:
    """Raise one error naming every deployment in ``names`` that the file does not have."""
    known = {spec.name for spec in specs}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            Problem("--name", f"no deployment named {', '.join(unknown)} in {PREFECT_FILE}", f"choose from {', '.join(sorted(known))}")
        )


def ensure_pools(specs: list[DeploymentSpec]) -> list[str]:
    """Create the work pools that ``specs`` name and the server lacks; returns the names created."""
    from prefect.workers.process import ProcessWorker  # Prefect's worker parts (0.2 s): only when a pool is created

    names = sorted({spec.pool for spec in specs})
    unknown = [name for name in names if name not in POOL_TYPES]
    if unknown:
        raise ConfigError(
            Problem(
                str(PREFECT_FILE),
                f"work pool {', '.join(unknown)} is not one AdaptFlow knows how to create",
                f"use one of {', '.join(POOL_TYPES)}",
            )
        )
    created = []
    try:
        with get_client(sync_client=True) as client:
            for name in names:
                try:
                    client.read_work_pool(name)
                    continue
                except ObjectNotFound:
                    pass
                if POOL_TYPES[name] == "kubernetes":
                    template = json.loads(GPU_POOL_TEMPLATE.read_text())
                else:
                    template = ProcessWorker.get_default_base_job_template()
                client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPES[name], base_job_template=template))
                created.append(name)
    except httpx.HTTPError as exc:
        url = os.environ.get("PREFECT_API_URL", "the Prefect server")
        raise DeployError(
            Problem(
                url,
                f"creating the work pools failed: {type(exc).__name__}: {exc}",
                "start the server (`adaptflow stack up`) or fix PREFECT_API_URL",
            )
        ) from None
    return created


def prefect_deploy_args(names: list[str] | None) -> list[str]:
    """The ``prefect deploy`` command line: every deployment, or only those named."""
    selection = [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    return [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), *selection]


def run_prefect_deploy(names: list[str] | None, api_url: str) -> str:
    """Run ``prefect deploy`` from the repository root against ``api_url``; returns its output, raises :class:`DeployError` when it fails."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "ADAPTFLOW_PROJECT_DIR": str(PROJECT_ROOT)}
    args = prefect_deploy_args(names)
    command = "prefect " + " ".join(args[3:]).replace(str(PROJECT_ROOT) + "/", "")
    try:
        done = subprocess.run(
            args, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise DeployError(Problem(command, f"did not finish within {DEPLOY_TIMEOUT_S} s", f"check that {api_url} answers")) from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.stderr.write(output)
        raise DeployError(Problem(command, f"exit {done.returncode}: {_last_line(output)}", "see its output above"))
    return output


def _last_line(output: str) -> str:
    """The last line of ``output`` that says something (Prefect ends a failure with its reason)."""
    lines = [line.strip(" │╭╮╰╯─") for line in output.splitlines()]
    return next((line for line in reversed(lines) if line), "no output")
