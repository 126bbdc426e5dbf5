"""Kubernetes manifests, the Dockerfile and the PyTorchJob launcher (kubectl replaced by a fake)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from adaptflow.tasks.config import load_config
from adaptflow.tasks.training.launch import PYTORCHJOB_TEMPLATE, job_name, render_pytorchjob, run_training

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / "k8s" / name).read_text()) if d]


def _pytorchjob_config(**launch) -> object:
    return load_config(
        {
            "work_dir": "/work",
            "launch": {
                "launcher": "pytorchjob",
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
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
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
"""A stand-in for kubectl and the training operator: runs the master pod's command here."""
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
    print("pytorchjob created")
elif args[:2] == ["get", "pod"]:
    print("Running")
elif args[0] == "logs":
    job = json.load(open(job_file))
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = dict(os.environ, PET_NNODES="1", PET_NODE_RANK="0", PET_NPROC_PER_NODE=job["spec"]["nprocPerNode"], PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=os.environ["FAKE_KUBE_PORT"])
    env.update({e["name"]: e["value"] for e in container["env"]})
    command = [sys.executable if c == "python" else c for c in container["command"]]
    code = subprocess.call(command, env=env)
    open(os.path.join(state, "exit"), "w").write(str(code))
elif args[:2] == ["get", "pytorchjob"]:
    print("Succeeded" if open(os.path.join(state, "exit")).read() == "0" else "Failed")
'''


def test_pytorchjob_launcher_creates_follows_and_collects_the_job(tmp_path, tiny_bert_dir, monkeypatch):
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
            "launch": {"launcher": "pytorchjob", "nnodes": 1, "num_processes": 2},
        }
    )
    prepared = prepare_data(cfg.data, tiny_bert_dir, work)
    run_dir = work / "runs" / "m" / "20261123T000000Z-abc"
    metrics = run_training(cfg, prepared.path, tiny_bert_dir, run_dir)
    assert metrics["num_processes"] == 2 and metrics["steps"] == 2
    calls = (state / "calls.log").read_text().splitlines()
    assert calls[0] == "apply -f -" and calls[-1].startswith("get pytorchjob adaptflow-20261123t000000z-abc")
    assert any(c.startswith("logs -f adaptflow-20261123t000000z-abc-master-0") for c in calls)
    assert json.loads((state / "job.json").read_text())["metadata"]["name"] == "adaptflow-20261123t000000z-abc"


def test_pytorchjob_launcher_without_kubectl_says_so(tmp_path, monkeypatch):
    from adaptflow.tasks.errors import TrainingError
    from adaptflow.tasks.training.launch import PyTorchJob

    monkeypatch.setenv("PATH", str(tmp_path))
    job = PyTorchJob(render_pytorchjob(_pytorchjob_config(), Path("/work/s.json"), "adaptflow-y"))
    with pytest.raises(TrainingError, match="needs kubectl"):
        job.submit()
    assert PYTORCHJOB_TEMPLATE.is_file()
