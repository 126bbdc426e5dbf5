"""Files shipped inside the package (sample data, reference text, accelerate configs, k8s
templates, prefect.yaml), found with :mod:`importlib.resources` so that they are there in a
wheel install as in a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def asset(package: str, *parts: str) -> Path:
    """The file or folder ``parts`` inside ``package`` (e.g. ``asset("adaptflow.infra", "k8s", "pytorchjob.yaml")``).

    AdaptFlow is installed as plain files (a wheel or an editable checkout, never a zip), so
    the resource is a real path that subprocesses such as ``accelerate`` and ``prefect`` can open.
    """
    return Path(str(resources.files(package).joinpath(*parts)))


def project_root() -> Path:
    """The folder holding ``flows/``, ``tasks/``, ``infra/`` and ``deployments/``: the checkout,
    or ``site-packages/adaptflow`` in a wheel install. prefect.yaml's entrypoints are relative to it."""
    return asset("adaptflow.flows").parent
