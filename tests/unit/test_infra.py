"""Kubernetes manifests, the Dockerfile and the TrainJob / PyTorchJob launchers (kubectl replaced by a fake).

The rendered jobs and the shipped runtime are checked against the schemas Kubeflow publishes
(tests/k8s_schemas.py).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from adaptflow.tasks.config import load_config
from adaptflow.tasks.training.kubernetes import (
    PYTORCHJOB_TEMPLATE,
    TORCH_RUNTIME_TEMPLATE,
    PyTorchJob,
    job_name,
    render_pytorchjob,
    render_trainjob,
)
from adaptflow.tasks.training.launch import launch_command, other_node_commands, run_training
from tests.k8s_schemas import trainer_v2_problems, training_operator_v1_problems

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / "k8s" / name).read_text()) if d]


def _pytorchjob_config(launcher: str = "pytorchjob", **launch) -> object:
    return load_config(
        {
            "work_dir": "/work",
            "launch": {
                "launcher": launcher,
                "nnodes": 3,
                "num_processes": 4,
                "gpus_per_node": 4,
                "k8s_image": "registry.example/adaptflow:1",
                **launch,
            },
        }
    )


def test_pytorchjob_renders_master_and_workers_sharing_the_run_spec():
    cfg = _pytorchjob_config()
    job = render_pytorchjob(cfg, Path("/work/runs/m/r1/run_spec.json"), "adaptflow-r1")
    assert job["kind"] == "PyTorchJob" and job["apiVersion"] == "kubeflow.org/v1"
    assert job["metadata"] == {"name": "adaptflow-r1", "namespace": "adaptflow", "labels": {"app.kubernetes.io/part-of": "adaptflow"}}
    assert job["spec"]["nprocPerNode"] == "4"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for spec in replicas.values():
        pod = spec["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "registry.example/adaptflow:1"
        assert container["command"][-2:] == ["adaptflow.tasks.training.worker", "/work/runs/m/r1/run_spec.json"]
        assert "torch.distributed.run" in container["command"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert {"name": "work", "mountPath": "/work"} in container["volumeMounts"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "adaptflow-work"
        assert {"name": "ACCELERATE_USE_CPU", "value": "false"} in container["env"]


def test_single_pod_cpu_job_has_no_workers_and_no_gpu_request():
    cfg = _pytorchjob_config(nnodes=1, gpus_per_node=0)
    job = render_pytorchjob(cfg, Path("/work/s.json"), "adaptflow-x")
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "resources" not in container and {"name": "ACCELERATE_USE_CPU", "value": "true"} in container["env"]


def test_job_names_are_valid_kubernetes_names():
    name = job_name(Path("/w/runs/m/20261123T125251Z-1adf41dd"))
    assert name == "adaptflow-20261123t125251z-1adf41dd" and len(name) <= 63


def test_prefect_worker_takes_s3_keys_from_a_secret_and_may_create_pytorchjobs():
    docs = {d["kind"]: d for d in _docs("prefect-worker.yaml")}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] and "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["PREFECT_API_URL"]["value"].endswith("/api")
    assert container["command"][:3] == ["prefect", "worker", "start"]
    rules = docs["Role"]["rules"]
    assert any("pytorchjobs" in r["resources"] and "create" in r["verbs"] for r in rules)
    assert any("trainjobs" in r["resources"] and "trainer.kubeflow.org" in r["apiGroups"] and "create" in r["verbs"] for r in rules)
    assert any("pods/log" in r["resources"] for r in rules)
    assert docs["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]


def test_seaweedfs_serves_s3_with_identities_from_a_secret():
    docs = {d["kind"]: d for d in _docs("seaweedfs.yaml")}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "-s3" in container["args"] and any(a.startswith("-s3.config=") for a in container["args"])
    assert docs["Service"]["spec"]["ports"][0]["port"] == 8333
    assert docs["Deployment"]["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"]


def test_work_volume_is_shared_between_pods():
    (claim,) = _docs("work-volume.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["metadata"]["name"] == "adaptflow-work"


def test_dockerfile_installs_torch_first_and_runs_unprivileged():
    text = (INFRA / "Dockerfile").read_text()
    assert text.index("torch==") < text.index("pip install .")
    assert "USER adaptflow" in text and 'ENTRYPOINT ["adaptflow"]' in text


FAKE_KUBECTL = r'''#!PYTHON
"""A stand-in for kubectl and the operators (v1 PyTorchJob, Trainer v2 TrainJob): runs node 0's command here."""
import json, os, subprocess, sys
state = os.environ["FAKE_KUBE_STATE"]
args = sys.argv[1:]
if args[:1] == ["-n"]:
    args = args[2:]
with open(os.path.join(state, "calls.log"), "a") as log:
    log.write(" ".join(args) + "\n")
job_file = os.path.join(state, "job.json")
if args[0] == "apply":
    json.dump(json.load(sys.stdin), open(job_file, "w"))
    print("job created")
elif args[:3] == ["get", "pod", "-l"]:
    print(json.load(open(job_file))["metadata"]["name"] + "-node-0-0-x7k2p")
elif args[:2] == ["get", "pod"]:
    print("Running")
elif args[0] == "logs":
    job = json.load(open(job_file))
    if job["kind"] == "TrainJob":
        container, procs = job["spec"]["trainer"], str(job["spec"]["trainer"]["numProcPerNode"])
    else:
        container, procs = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0], job["spec"]["nprocPerNode"]
    env = dict(os.environ, PET_NNODES="1", PET_NODE_RANK="0", PET_NPROC_PER_NODE=procs, PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=os.environ["FAKE_KUBE_PORT"])
    env.update({e["name"]: e["value"] for e in container["env"]})
    command = [sys.executable if c == "python" else c for c in container["command"]]
    code = subprocess.call(command, env=env)
    open(os.path.join(state, "exit"), "w").write(str(code))
elif args[:2] == ["get", "pytorchjob"]:
    print("Succeeded" if open(os.path.join(state, "exit")).read() == "0" else "Failed")
elif args[:2] == ["get", "trainjob"]:
    print("Created Complete" if open(os.path.join(state, "exit")).read() == "0" else "Created Failed")
'''


@pytest.mark.parametrize(
    ("launcher", "leader_lookup", "outcome_read"),
    [
        ("trainjob", "get pod -l jobset.sigs.k8s.io/jobset-name=adaptflow-20261123t000000z-abc", "get trainjob"),
        ("pytorchjob", "get pod adaptflow-20261123t000000z-abc-master-0", "get pytorchjob"),
    ],
)
def test_kubernetes_launcher_creates_follows_and_collects_the_job(
    launcher, leader_lookup, outcome_read, tmp_path, tiny_bert_dir, monkeypatch
):
    from adaptflow.tasks.data.prepare import prepare_data
    from tests.integration.conftest import write_reviews

    bin_dir, state = tmp_path / "bin", tmp_path / "kube"
    bin_dir.mkdir(), state.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.replace("#!PYTHON", f"#!{sys.executable}"))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBE_STATE", str(state))
    monkeypatch.setenv("FAKE_KUBE_PORT", "29517")
    work = tmp_path / "work"
    cfg = load_config(
        {
            "model": str(tiny_bert_dir),
            "work_dir": str(work),
            "data": {"data": str(write_reviews(tmp_path / "r.csv", rows=40)), "max_length": 32},
            "strategy": {"name": "full_fine_tuning"},
            "training": {"max_steps": 2, "batch_size": 8},
            "launch": {"launcher": launcher, "nnodes": 1, "num_processes": 2},
        }
    )
    prepared = prepare_data(cfg.data, tiny_bert_dir, work)
    run_dir = work / "runs" / "m" / "20261123T000000Z-abc"
    metrics = run_training(cfg, prepared.path, tiny_bert_dir, run_dir)
    assert metrics["num_processes"] == 2 and metrics["steps"] == 2
    calls = (state / "calls.log").read_text().splitlines()
    assert calls[0] == "apply -f -" and calls[-1].startswith(f"{outcome_read} adaptflow-20261123t000000z-abc")
    assert any(c.startswith(leader_lookup) for c in calls)
    leader = "adaptflow-20261123t000000z-abc-" + ("node-0-0-x7k2p" if launcher == "trainjob" else "master-0")
    assert f"logs -f {leader}" in calls
    job = json.loads((state / "job.json").read_text())
    assert job["metadata"]["name"] == "adaptflow-20261123t000000z-abc"
    assert job["kind"] == {"trainjob": "TrainJob", "pytorchjob": "PyTorchJob"}[launcher]


def test_pytorchjob_launcher_without_kubectl_says_so(tmp_path, monkeypatch):
    from adaptflow.tasks.errors import TrainingError

    monkeypatch.setenv("PATH", str(tmp_path))
    job = PyTorchJob(render_pytorchjob(_pytorchjob_config(), Path("/work/s.json"), "adaptflow-y"))
    with pytest.raises(TrainingError, match="needs kubectl"):
        job.submit()
    assert PYTORCHJOB_TEMPLATE.is_file()


def test_trainjob_renders_nodes_on_the_runtime_sharing_the_run_spec():
    cfg = _pytorchjob_config("trainjob", k8s_runtime="adaptflow-torch")
    job = render_trainjob(cfg, Path("/work/runs/m/r1/run_spec.json"), "adaptflow-r1")
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "adaptflow-torch"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4 and trainer["image"] == "registry.example/adaptflow:1"
    assert trainer["command"][-2:] == ["adaptflow.tasks.training.worker", "/work/runs/m/r1/run_spec.json"]
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "4"}
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["containers"][0]["name"] == "node"
    assert {"name": "work", "mountPath": "/work"} in pod["containers"][0]["volumeMounts"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "adaptflow-work"
    cpu = render_trainjob(_pytorchjob_config("trainjob", gpus_per_node=0, nnodes=1), Path("/work/s.json"), "adaptflow-x")
    assert "resourcesPerNode" not in cpu["spec"]["trainer"] and cpu["spec"]["trainer"]["numNodes"] == 1


@pytest.mark.parametrize("gpus", [0, 4])
@pytest.mark.parametrize("nnodes", [1, 3])
def test_rendered_jobs_and_the_runtime_match_kubeflows_published_schemas(nnodes, gpus):
    spec = Path("/work/runs/m/r1/run_spec.json")
    trainjob = render_trainjob(_pytorchjob_config("trainjob", nnodes=nnodes, gpus_per_node=gpus), spec, "adaptflow-r1")
    assert trainer_v2_problems(trainjob) == []
    pytorchjob = render_pytorchjob(_pytorchjob_config(nnodes=nnodes, gpus_per_node=gpus), spec, "adaptflow-r1")
    assert training_operator_v1_problems(pytorchjob) == []
    (runtime,) = _docs(TORCH_RUNTIME_TEMPLATE.name)
    assert trainer_v2_problems(runtime) == [] and runtime["metadata"]["name"] == "adaptflow-torch"


def test_the_schema_check_catches_what_a_cluster_would_refuse():
    spec = Path("/work/s.json")
    trainjob = render_trainjob(_pytorchjob_config("trainjob"), spec, "adaptflow-r1")
    trainjob["spec"]["podTemplateOverrides"] = []  # Trainer 2.0's field, replaced by runtimePatches
    trainjob["spec"]["trainer"]["numNodes"] = "3"
    assert any("numNodes" in p for p in trainer_v2_problems(trainjob))
    del trainjob["spec"]["trainer"]["numNodes"]
    assert trainer_v2_problems(trainjob) == ["spec.podTemplateOverrides: not in the schema"]
    pytorchjob = render_pytorchjob(_pytorchjob_config(), spec, "adaptflow-r1")
    pytorchjob["spec"]["runPolicy"]["backofLimit"] = 0
    assert training_operator_v1_problems(pytorchjob) == ["spec.runPolicy.backofLimit: not in the schema"]


def _elastic(**launch) -> object:
    base = {"launcher": "multinode", "nnodes": 2, "master_addr": "10.0.0.1", "master_port": 29600, "min_nodes": 1, "max_restarts": 3}
    return load_config({"launch": {**base, **launch}})


def test_elastic_multinode_meets_through_c10d_with_a_node_range_and_restarts():
    command = launch_command(_elastic(max_nodes=4, nnodes=3), Path("/shared/runs/m/20261203T100000Z-ab/run_spec.json"))
    joined = " ".join(command)
    assert "--nnodes 1:4 --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29600 --rdzv-id 20261203T100000Z-ab" in joined
    assert "--rdzv-conf is_host=1 --max-restarts 3" in joined  # node 0 hosts the rendezvous store
    assert "--node-rank" not in command  # ranks are handed out at every rendezvous
    (other,) = other_node_commands(_elastic(), Path("/shared/runs/m/r/run_spec.json"))
    assert "--rdzv-conf is_host=0" in other and "--nnodes 1:2" in other
    assert other.startswith("env ") and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in other  # every round publishes its address
    fixed = launch_command(_elastic(min_nodes=None), Path("/s/r/run_spec.json"))
    assert "--node-rank" in fixed and "--rdzv-backend" not in fixed


@pytest.mark.parametrize(
    ("launch", "message"),
    [
        ({"min_nodes": 3}, "nnodes 2 must lie between min_nodes 3 and max_nodes 2"),
        ({"max_restarts": 0}, "needs launch.max_restarts of at least 1"),
        ({"launcher": "local", "nnodes": 1, "master_addr": None}, "use them with that launcher"),
        ({"accelerate_config": "ddp"}, "leave launch.accelerate_config empty"),
    ],
)
def test_elastic_settings_that_cannot_work_are_refused(launch, message):
    from adaptflow.tasks.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _elastic(**launch)
