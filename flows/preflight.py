"""The checks before any heavy work, shared by every flow and by the CLI.

Rules:

- Everything that can be checked before training is checked first: S3 access, the
  accelerate config, the base model, the settings that depend on the model (strategy,
  language-model task, launcher), and the data.
- Every problem found is reported at once (:class:`InputError` when they are of several
  kinds), each with its fix; nothing is trained, and no run folder is made, while one is left.
- ``adaptflow run`` and ``adaptflow compare`` call :func:`preflight` before a Prefect
  server is involved, so a bad input is reported in seconds: this module imports neither
  Prefect nor torch nor the Hugging Face libraries (tests/unit/test_cli_imports.py). The flows check again with
  :func:`check_inputs` (UI and scheduled runs have no CLI), then prepare the data with
  :func:`collect`, which adds the data's problems to the others before raising them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from adaptflow.tasks.base_model import inspect_model, resolve_model
from adaptflow.tasks.config import AdaptConfig, DomainAdaptation, validate_name
from adaptflow.tasks.data.check import check_data
from adaptflow.tasks.errors import AdaptFlowError, ConfigError, DataError, ModelError, Problem, StorageError, raise_together
from adaptflow.tasks.storage.settings import S3Settings
from adaptflow.tasks.strategies import check_against_model
from adaptflow.tasks.training.checks import accelerate_config_path, check_lm_config, check_ray_launch

T = TypeVar("T")


class InputError(AdaptFlowError):
    title = "AdaptFlow cannot start"


def is_language_model_run(cfg: AdaptConfig) -> bool:
    """Causal LM fine-tuning or domain adaptation (flows/lm.py), rather than a classification run."""
    return cfg.task == "causal_lm" or isinstance(cfg.strategy, DomainAdaptation)


def check_inputs(cfg: AdaptConfig, deep: bool = True) -> tuple[Path | None, list[AdaptFlowError]]:
    """Everything that can be checked before heavy work: S3 access, the base model, model-dependent settings.

    Returns the local model folder (None when unusable) and the errors found, so the
    caller can report them together with data problems. ``deep``: the base model's config
    is read by ``transformers`` too (seconds of imports; the flows do it, the CLI does not).
    The flows call it as a task (``check_inputs_task`` in flows/tasks.py).
    """
    found: list[AdaptFlowError] = []
    needs_s3 = (
        cfg.registry.register_model
        or cfg.launch.launcher == "ray"
        or any(  # Ray Train checkpoints to S3
            ref and ref.startswith("s3://") for ref in (cfg.model, cfg.data.data, cfg.data.eval_data, cfg.training.checkpoint_uri)
        )
    )
    if cfg.registry.register_model:
        try:
            validate_name(cfg.model_name(), "registry.model_name (--model-name)")
        except AdaptFlowError as exc:  # a name is the user's input: exit 2, before any work
            found.append(ConfigError(exc.problems))
    settings = None
    if needs_s3:
        try:
            settings = S3Settings.resolve()
            from adaptflow.tasks.storage.s3 import check_access, download_prefix  # boto3: only once S3 is configured

            check_access(settings)
        except StorageError as exc:
            found.append(exc)
            settings = None
    if cfg.launch.accelerate_config:
        try:
            accelerate_config_path(cfg.launch.accelerate_config)
        except ConfigError as exc:
            found.append(exc)
    if cfg.launch.launcher == "ray":
        problems = check_ray_launch(cfg.launch)
        if problems:
            found.append(ConfigError(problems))
    model_path = None
    info = None
    try:
        fetch = (lambda uri, dest: download_prefix(settings, uri, dest)) if settings else None
        model_path = resolve_model(cfg.model, cfg.resolved_work_dir() / "cache", fetch)
        info = inspect_model(model_path, cfg.trust_remote_code, deep=deep)
        mismatches = check_against_model(cfg, info)
        if mismatches:
            found.append(ConfigError(mismatches))
    except ModelError as exc:
        found.append(exc)
        model_path = None
    if is_language_model_run(cfg):
        if cfg.launch.launcher in ("trainjob", "pytorchjob"):
            found.append(
                ConfigError(
                    Problem(
                        "launch.launcher",
                        f"{cfg.launch.launcher!r} does not run language-model training yet",
                        "use 'local' or 'multinode'",
                    )
                )
            )
        problems = check_lm_config(cfg, info.is_decoder) if model_path is not None and info is not None else []
        if problems:
            found.append(ConfigError(problems))
    return model_path, found


def collect(
    found: list[AdaptFlowError], step: Callable[..., T], *args, errors: tuple[type[AdaptFlowError], ...] = (DataError,)
) -> T | None:
    """``step(*args)``, or None with its error added to ``found``: data problems are reported with the others."""
    try:
        return step(*args)
    except errors as exc:
        found.append(exc)
        return None


def preflight(cfg: AdaptConfig) -> None:
    """The checks of :func:`check_inputs`, plus reading the local data, as plain function calls.

    Needs no Prefect server: the CLI calls it before a flow run starts, so a bad input is
    reported in seconds and once, instead of after the server's start-up and again by every
    layer of the failed run.
    """
    _, found = check_inputs(cfg, deep=False)
    if not is_language_model_run(cfg):  # language-model data is checked by its own preparation
        collect(found, check_data, cfg.data, cfg.resolved_work_dir())
    raise_together(found, mixed=InputError)
