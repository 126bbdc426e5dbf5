"""What keeps a training launch from starting, found before any work: the launch settings,
the accelerate config, Ray and its cluster, the language-model settings.

The CLI's checks run these before a Prefect server or the training stack is involved, so
this module imports neither torch nor the Hugging Face libraries nor Ray: a refusal answers
in about a second (tests/unit/test_cli_imports.py). The worker runs the same checks again.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from adaptflow.tasks.assets import asset
from adaptflow.tasks.config import AdaptConfig, LaunchConfig, Lora
from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.storage.local_stack import default_home

ACCELERATE_CONFIGS = asset("adaptflow.infra", "accelerate")
LOCAL_HEAD_FILE = Path("stack") / "ray" / "head.json"
"""Under $ADAPTFLOW_HOME: the address of the local head started by `adaptflow stack up --ray`."""
INSTALL_FIX = "install it with: pip install 'adaptflow[ray]' (or pip install 'ray[train]')"
NO_CLUSTER_FIX = (
    "start one here with `adaptflow stack up --ray` (or `ray start --head`), or give a running cluster's "
    "head as --ray-address HOST:PORT or in RAY_ADDRESS"
)


def accelerate_config_path(name_or_path: str) -> Path:
    """A user's accelerate config file, or one shipped in infra/accelerate by name."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given.resolve()
    shipped = ACCELERATE_CONFIGS / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
    raise ConfigError(
        Problem(
            "launch.accelerate_config", f"{name_or_path!r} is neither a file nor a shipped config", f"use a file path or one of: {names}"
        )
    )


def ray_installed() -> bool:
    """Whether Ray Train is installed here (the optional 'ray' extra), asked without importing it (seconds)."""
    try:
        return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.train") is not None
    except (ImportError, ValueError):
        return False


def local_head_address(home: Path | None = None) -> str | None:
    """The address of the running head started by `adaptflow stack up --ray`, if there is one."""
    path = (home or default_home()) / LOCAL_HEAD_FILE
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)  # still running?
    except (OSError, ValueError, KeyError):
        return None
    return state["address"]


def cluster_address(launch: LaunchConfig) -> str:
    """Where the Ray cluster is: the config, else RAY_ADDRESS, else the local stack's head."""
    address = launch.ray_address or os.environ.get("RAY_ADDRESS") or local_head_address()
    if not address:
        raise ConfigError(Problem("launch.ray_address", "no Ray cluster is given and no local Ray head is running", NO_CLUSTER_FIX))
    return address


def check_ray_launch(launch: LaunchConfig) -> list[Problem]:
    """What keeps a 'ray' run from starting, found before any work: Ray missing, or no cluster."""
    problems = []
    if not ray_installed():
        problems.append(Problem("launch.launcher", "'ray' needs Ray Train, which is not installed here", INSTALL_FIX))
    try:
        cluster_address(launch)
    except ConfigError as exc:
        problems.extend(exc.problems)
    return problems


def check_lm_config(cfg: AdaptConfig, is_decoder: bool) -> list[Problem]:
    """Problems only visible once the base model is known (checked before launching)."""
    problems = []
    if cfg.task == "causal_lm" and not is_decoder:
        problems.append(
            Problem(
                "model",
                "is an encoder; --task causal_lm needs a decoder model (GPT-2, Llama, Qwen...)",
                "pick a decoder model, or use --task classification",
            )
        )
    if isinstance(cfg.strategy, Lora) and cfg.strategy.qlora and importlib.util.find_spec("bitsandbytes") is None:
        # optional: only QLoRA needs it, and only on CUDA machines
        problems.append(
            Problem("strategy.qlora (--qlora)", "needs the bitsandbytes package", "pip install bitsandbytes (on a CUDA machine)")
        )
    return problems
