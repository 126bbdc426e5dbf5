"""What `pip install` puts in site-packages: only the `adaptflow` namespace, with every asset it reads.

Builds the wheel from this checkout (setuptools, no network) and reads its file list, so a
package folder missing from pyproject's `packages` or an asset missing from `package-data`
fails here rather than in a user's non-editable install.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"flows": "adaptflow.flows", "tasks": "adaptflow.tasks", "infra": "adaptflow.infra", "deployments": "adaptflow.deployments"}


def _package_folders() -> set[str]:
    found = set()
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == _package_folders()


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = out.glob("adaptflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_installs_only_the_adaptflow_namespace(wheel_files):
    top = {name.split("/")[0] for name in wheel_files if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"adaptflow"}
    assert "adaptflow/__init__.py" not in wheel_files  # a namespace package: flows/, tasks/, infra/ are its portions


@pytest.mark.parametrize(
    "asset",
    [
        "adaptflow/tasks/sample_data/reviews.csv",
        "adaptflow/tasks/reference/general_text.txt",
        "adaptflow/infra/accelerate/ddp.yaml",
        "adaptflow/infra/k8s/pytorchjob.yaml",
        "adaptflow/infra/k8s/trainjob.yaml",
        "adaptflow/infra/k8s/torch-runtime.yaml",
        "adaptflow/infra/k8s/gpu-work-pool.json",
        "adaptflow/infra/Dockerfile",
        "adaptflow/deployments/prefect.yaml",
        "adaptflow/deployments/github/retrain.yml",
        "adaptflow/flows/adapt.py",  # prefect.yaml's entrypoints are relative to adaptflow/
        "adaptflow/flows/strategies.py",
    ],
)
def test_the_wheel_ships_what_the_code_reads(wheel_files, asset):
    assert asset in wheel_files
