"""Register the deployments of ``deployments/prefect.yaml`` on a Prefect server.

Reads the file the way ``prefect deploy`` does (``{{ $ENV_VAR }}`` placeholders filled from
the environment, YAML anchors for shared work pools and pull steps) and creates or updates
each deployment through the Prefect client: the flow's parameter schema, enforced; its
schedules with their own parameters; pull steps; work pool, queue and job variables.

Why not ``prefect deploy --all``: in prefect 3.8.8 with fastapi 0.154 (the versions this
project pins) the CLI crashes with a 422 after the first deployment, while checking the
pool's workers (its client sends ``limit: null``). The Prefect file stays the standard
one, so ``prefect deploy`` works as soon as that is fixed upstream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import ConfigError, Problem

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = PROJECT_ROOT / "deployments" / "prefect.yaml"
GPU_SUFFIX = "-k8s-gpu"


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


def load_specs(prefect_file: Path = PREFECT_FILE) -> list[DeploymentSpec]:
    """The deployments of ``prefect_file`` with ``{{ $VAR }}`` filled from the environment.

    ``ADAPTFLOW_PROJECT_DIR`` (the process pool's working directory) defaults to this checkout.
    """
    from prefect.utilities.templating import apply_values

    os.environ.setdefault("ADAPTFLOW_PROJECT_DIR", str(PROJECT_ROOT))
    raw = yaml.safe_load(prefect_file.read_text())
    specs = []
    for entry in raw.get("deployments", []):
        filled = apply_values(entry, dict(os.environ), remove_notset=False)
        specs.append(DeploymentSpec(filled["name"], filled["entrypoint"], filled))
    return specs


def ensure_pools(specs: list[DeploymentSpec]) -> list[str]:
    """Create the work pools the specs name (process pool; Kubernetes GPU pool from its template); returns their names."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    created = []
    with get_client(sync_client=True) as client:
        for name in sorted({spec.config["work_pool"]["name"] for spec in specs}):
            try:
                client.read_work_pool(name)
                continue
            except ObjectNotFound:
                pass
            if name.endswith(GPU_SUFFIX):
                template = json.loads((PROJECT_ROOT / "infra" / "k8s" / "gpu-work-pool.json").read_text())
                pool = WorkPoolCreate(name=name, type="kubernetes", base_job_template=template)
            else:
                pool = WorkPoolCreate(name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
            client.create_work_pool(pool)
            created.append(name)
    return created


def schedule_objects(spec: DeploymentSpec) -> list[Any]:
    """``DeploymentScheduleCreate`` objects for the spec's cron schedules."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    schedules = []
    for item in spec.config.get("schedules") or []:
        if "cron" not in item:
            raise ConfigError(Problem(f"{PREFECT_FILE} deployment {spec.name}", "only cron schedules are supported here", "write `cron: ...`"))
        schedules.append(
            DeploymentScheduleCreate(
                schedule=CronSchedule(cron=item["cron"], timezone=item.get("timezone", "UTC")),
                active=item.get("active", True),
                parameters=item.get("parameters") or {},
                slug=item.get("slug"),
            )
        )
    return schedules


def register(spec: DeploymentSpec) -> str:
    """Create or update one deployment on the server of PREFECT_API_URL; returns its id."""
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow = load_flow_from_entrypoint(str(spec.flow_file) + ":" + spec.entrypoint.split(":")[1])
    pool = spec.config.get("work_pool") or {}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow.name)
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=spec.name,
            entrypoint=spec.entrypoint,
            description=spec.config.get("description") or flow.description,
            tags=spec.config.get("tags") or [],
            parameters=spec.config.get("parameters") or {},
            parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
            enforce_parameter_schema=spec.config.get("enforce_parameter_schema", True),
            work_pool_name=pool.get("name"),
            work_queue_name=pool.get("work_queue_name"),
            job_variables=pool.get("job_variables") or {},
            pull_steps=spec.config.get("pull") or [],
            schedules=schedule_objects(spec),
        )
    return f"{flow.name}/{spec.name} {deployment_id}"
