"""Check Kubernetes manifests against the schemas Kubeflow publishes, as typed models from PyPI.

- Trainer v2 (TrainJob, ClusterTrainingRuntime): ``kubeflow-trainer-api``, pydantic models
  generated from Trainer's OpenAPI spec.
- Training operator v1 (PyTorchJob): ``kubeflow-training``, the operator's swagger models
  (and the Kubernetes core types they refer to).

A model ignores keys it does not know and coerces some values, so a manifest is valid here
when it loads *and* writes back unchanged: a misspelt field, a field from another API
version, or a number where the schema wants a string all show up as a difference.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any


def _differences(given: Any, back: Any, path: str = "") -> list[str]:
    if isinstance(given, dict) and isinstance(back, dict):
        found = []
        for key in given.keys() | back.keys():
            where = f"{path}.{key}" if path else key
            if key not in back:
                found.append(f"{where}: not in the schema")
            elif key not in given:
                found.append(f"{where}: added by the schema ({back[key]!r})")
            else:
                found += _differences(given[key], back[key], where)
        return found
    if isinstance(given, list) and isinstance(back, list) and len(given) == len(back):
        return [d for i, (g, b) in enumerate(zip(given, back)) for d in _differences(g, b, f"{path}[{i}]")]
    if given != back or type(given) is not type(back):
        return [f"{path}: {given!r} reads back as {back!r}"]
    return []


def trainer_v2_problems(manifest: dict) -> list[str]:
    """What is wrong with a TrainJob or ClusterTrainingRuntime against Trainer v2's schema."""
    from kubeflow_trainer_api import models

    kinds = {"TrainJob": models.TrainerV1alpha1TrainJob, "ClusterTrainingRuntime": models.TrainerV1alpha1ClusterTrainingRuntime}
    if manifest.get("apiVersion") != "trainer.kubeflow.org/v1alpha1" or manifest.get("kind") not in kinds:
        return [f"apiVersion/kind: {manifest.get('apiVersion')}/{manifest.get('kind')} is not a Trainer v2 kind"]
    try:
        typed = kinds[manifest["kind"]].from_dict(manifest)
    except Exception as exc:  # pydantic's ValidationError lists every field it refused
        return [str(exc)]
    return _differences(manifest, typed.to_dict())


def training_operator_v1_problems(manifest: dict) -> list[str]:
    """What is wrong with a PyTorchJob against the v1 training operator's schema."""
    from kubeflow.training.api_client import ApiClient

    if manifest.get("apiVersion") != "kubeflow.org/v1" or manifest.get("kind") != "PyTorchJob":
        return [f"apiVersion/kind: {manifest.get('apiVersion')}/{manifest.get('kind')} is not a v1 PyTorchJob"]
    client = ApiClient()
    try:
        typed = client.deserialize(SimpleNamespace(data=json.dumps(manifest)), "KubeflowOrgV1PyTorchJob")
    except ValueError as exc:  # a required field missing
        return [str(exc)]
    return _differences(manifest, client.sanitize_for_serialization(typed))
