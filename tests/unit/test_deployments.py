"""Every YAML/JSON file in deployments/ and infra/ loads, and prefect.yaml matches the flows it deploys.

The deployments' parameters and each schedule's parameters validate against the flow's
parameter schema (what the server enforces), so do the parameters the retrain trigger
renders from an event, every parameter of the deployed flows has a description for the UI
form, the GPU work pool template declares every variable it uses, and the CI workflow runs
a deployment that exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from adaptflow.flows.cli.retrain import NOT_BETTER_EXIT
from adaptflow.infra.deploy import GPU_SUFFIX, POOL_TYPES, PREFECT_FILE, PROJECT_ROOT, check_names, load_specs, prefect_deploy_args
from adaptflow.tasks.errors import ConfigError

SPECS = load_specs()
WORKFLOW = PROJECT_ROOT / "deployments" / "github" / "retrain.yml"


def _schema(spec) -> dict:
    if not spec.available:
        pytest.skip(f"{spec.entrypoint} is not in this checkout yet (another change adds it)")
    path, name = spec.entrypoint.split(":")
    return parameter_schema(load_flow_from_entrypoint(f"{PROJECT_ROOT / path}:{name}")).model_dump_for_openapi()


@pytest.mark.parametrize(
    "path",
    sorted((PROJECT_ROOT / "deployments").rglob("*.y*ml"))
    + sorted((PROJECT_ROOT / "infra").rglob("*.y*ml"))
    + sorted((PROJECT_ROOT / "infra").rglob("*.json")),
    ids=lambda p: str(p.relative_to(PROJECT_ROOT)),
)
def test_every_file_loads(path: Path) -> None:
    text = re.sub(r"\$\{\w+\}", "placeholder", path.read_text())  # ${VAR}: templates rendered by the code (infra/k8s/pytorchjob.yaml)
    docs = [json.loads(text)] if path.suffix == ".json" else [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs and all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_deployment_parameters_match_the_flow_schema(spec) -> None:
    schema = _schema(spec)
    assert spec.config["enforce_parameter_schema"] is True
    assert spec.config["work_pool"]["name"] in ("adaptflow-local", "adaptflow-k8s-gpu")
    defaults = spec.config.get("parameters") or {}
    assert not validate(defaults, schema, ignore_required=False) if defaults else True
    assert set(defaults) <= set(schema["properties"])
    for schedule in spec.config.get("schedules") or []:
        merged = {**defaults, **schedule["parameters"]}
        assert set(schedule["parameters"]) <= set(schema["properties"]), schedule
        assert not validate(merged, schema, ignore_required=True), schedule
    undocumented = [
        name for name, prop in schema["properties"].items() if not prop.get("description") and "$ref" not in prop and "allOf" not in prop
    ]
    assert not undocumented, f"{spec.name}: parameters without a description: {undocumented}"


def test_retrain_form_has_dropdowns_and_rejects_bad_values() -> None:
    (spec,) = [s for s in SPECS if s.name == "retrain"]
    schema = _schema(spec)
    assert schema["properties"]["metric"]["enum"] == ["macro_f1", "accuracy", "macro_precision", "macro_recall"]
    strategy = schema["definitions"]["AdaptConfig"]["properties"]["strategy"]
    assert set(strategy["discriminator"]["mapping"]) >= {"transfer_learning", "partial_fine_tuning", "full_fine_tuning", "lora"}
    assert validate({"metric": "loudness"}, schema)
    assert validate({"min_delta": -1}, schema)
    assert not validate({"model_name": "reviews", "data": "s3://bucket/reviews.csv", "min_delta": 0.01}, schema)


def test_schedules_have_their_cron_and_parameters() -> None:
    by_name = {spec.name: spec for spec in SPECS}
    (nightly,) = by_name["retrain"].config["schedules"]
    assert (nightly["cron"], nightly["timezone"], nightly["slug"]) == ("0 2 * * *", "UTC", "nightly-retrain")
    assert nightly["parameters"]["model_name"] == "sample-reviews-transfer-learning" and nightly["parameters"]["data"] == "sample://reviews"
    (weekly,) = by_name["compare-weekly"].config["schedules"]
    assert (weekly["cron"], weekly["slug"]) == ("0 3 * * 1", "weekly-compare")


def test_retrain_trigger_renders_an_event_into_valid_parameters() -> None:
    """The server renders the trigger's parameters from the event with this template engine, then enforces the schema."""
    from prefect.server.events.schemas.events import Event
    from prefect.server.utilities.user_templates import render_user_template_sync

    (spec,) = [s for s in SPECS if s.name == "retrain"]
    (trigger,) = spec.config["triggers"]
    assert (trigger["expect"], trigger["match"]) == (["adaptflow.data.arrived"], {"prefect.resource.id": "adaptflow.dataset.*"})
    event = Event(
        event="adaptflow.data.arrived",
        resource={"prefect.resource.id": "adaptflow.dataset.reviews.v2"},
        payload={"data": "s3://adaptflow/data/reviews.csv"},
        occurred="2026-12-01T00:00:00Z",
        id="01a23720-cbf3-788d-9634-7083037ef915",
    )
    rendered = {key: render_user_template_sync(value, {"event": event}) for key, value in trigger["parameters"].items()}
    assert rendered == {"model_name": "reviews.v2", "data": "s3://adaptflow/data/reviews.csv"}
    assert not validate(rendered, _schema(spec), ignore_required=True)


def test_every_flow_has_a_deployment_and_pools_pull_the_right_code() -> None:
    entrypoints = {spec.entrypoint for spec in SPECS}
    assert {
        "flows/adapt.py:adapt",
        "flows/strategies.py:transfer_learning",
        "flows/strategies.py:partial_fine_tuning",
        "flows/strategies.py:full_fine_tuning",
        "flows/strategies.py:lora",
        "flows/strategies.py:domain_adaptation",
        "flows/compare.py:compare",
        "flows/retrain.py:retrain",
        "flows/predict.py:predict",
    } <= entrypoints
    for spec in SPECS:
        (step,) = spec.config["pull"]
        directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
        assert directory == ("/opt/adaptflow" if spec.name.endswith(GPU_SUFFIX) else str(PROJECT_ROOT))


def test_adaptflow_deploy_runs_prefect_deploy_for_all_or_the_named_and_names_unknown_ones() -> None:
    assert prefect_deploy_args(None)[-5:] == ["--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--all"]
    assert prefect_deploy_args(["retrain", "adapt"])[-4:] == ["--name", "retrain", "--name", "adapt"]
    check_names(SPECS, ["retrain", "adapt-k8s-gpu"])
    with pytest.raises(ConfigError, match="no deployment named nope, nix"):
        check_names(SPECS, ["nope", "retrain", "nix"])
    assert {spec.pool for spec in SPECS} == set(POOL_TYPES)  # adaptflow deploy can create every pool the file names


def test_gpu_work_pool_template_declares_every_variable_it_uses() -> None:
    template = json.loads((PROJECT_ROOT / "infra" / "k8s" / "gpu-work-pool.json").read_text())
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used <= declared, used - declared
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["envFrom"] == [{"secretRef": {"name": "{{ s3_secret }}"}}]  # keys from a Secret, not parameters
    gpu_pool = next(s for s in SPECS if s.name.endswith(GPU_SUFFIX)).config["work_pool"]
    assert set(gpu_pool["job_variables"]) <= declared


def test_ci_workflow_retrains_on_data_changes_through_an_existing_deployment() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert trigger["push"]["paths"] == ["data/**"]
    server_steps = " ".join(step.get("run", "") for step in workflow["jobs"]["with-prefect-server"]["steps"])
    match = re.search(r"prefect deployment run ([\w-]+)/([\w-]+)(.*)", server_steps, re.S)
    assert match and "--watch" in match.group(3)
    flow_name, deployment = match.group(1), match.group(2)
    (spec,) = [s for s in SPECS if s.name == deployment]
    assert load_flow_from_entrypoint(f"{PROJECT_ROOT / spec.entrypoint.split(':')[0]}:{spec.entrypoint.split(':')[1]}").name == flow_name
    params = re.findall(r"--param (\w+)=", match.group(3))
    assert set(params) <= set(_schema(spec)["properties"])
    cli_steps = " ".join(step.get("run", "") for step in workflow["jobs"]["without-server"]["steps"])
    assert "adaptflow retrain" in cli_steps and "--fail-if-not-better" in cli_steps
    assert f"{NOT_BETTER_EXIT} not better" in WORKFLOW.read_text()
    assert PREFECT_FILE.is_file()


def test_ci_event_is_the_one_the_retrain_trigger_expects() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = " ".join(step.get("run", "") for step in workflow["jobs"]["by-event"]["steps"])
    (trigger,) = next(spec for spec in SPECS if spec.name == "retrain").config["triggers"]
    match = re.search(r'prefect event emit ([\w.]+)[\s\\]*--resource-id "([\w.]+)\$MODEL_NAME"[\s\\]*--payload "\{\\"data\\": ', steps)
    assert match, steps
    assert [match.group(1)] == trigger["expect"] and match.group(2) + "*" == trigger["match"]["prefect.resource.id"]
    assert "event.payload.data" in trigger["parameters"]["data"]
