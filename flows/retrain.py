"""The ``retrain`` flow: retrain a model when its data changed, promote the result only if it is better.

1. Take the model's lock (a Prefect global concurrency limit ``retrain-<model>`` of one
   slot, created on first use): a second retrain of the same model waits for the first.
2. Fingerprint the data (sha256 of the file, local or ``s3://``). Equal to the data of the
   version holding the alias (``champion``): finish as **up to date**, nothing trained.
3. Compute the retrain key (data + config + code version, ``tasks/retrain.py``). A version
   registered with the same key is reused: the same retrain never trains twice.
4. Otherwise run the adaptation pipeline with the champion's recorded configuration (or
   the one given; without a champion the latest version's, for a new model the defaults)
   on the new data, which registers a candidate version.
5. Score candidate and champion on the same rows (the candidate's prepared evaluation
   split) and move the alias only if the candidate is better (``tasks/promote.py``).
   A markdown artifact explains the decision with both sets of metrics.
6. With ``require_approval``, a move the gate would make first waits for a person: the run
   pauses (both versions' metrics in the pause's form and the ``promotion-approval``
   artifact) until someone resumes it in the Prefect UI. Approved: the alias moves.
   Rejected: the run completes as "not promoted", with the note. No answer within
   ``approval_timeout_s``: not promoted, and the run **fails** ("approval timed out after
   N s"), as Prefect fails every pause nobody answered, so the missed approval is seen and
   alerted on. The candidate stays registered in every case; the lock is held while waiting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Failed
from pydantic import Field

from adaptflow.flows.adapt import run_pipeline
from adaptflow.flows.preflight import InputError, collect
from adaptflow.flows.tasks import check_inputs_task
from adaptflow.tasks.config import DEFAULT_APPROVAL_TIMEOUT_S, MAX_APPROVAL_TIMEOUT_S, AdaptConfig, validate_name
from adaptflow.tasks.data.sources import input_fingerprint, s3_fetcher
from adaptflow.tasks.data.store import PreparedData, open_prepared
from adaptflow.tasks.data.task import prepare_data_task
from adaptflow.tasks.errors import ConfigError, Problem, raise_together, run_all
from adaptflow.tasks.promotion import METRICS, ApprovalTimedOut, promote_task
from adaptflow.tasks.registry.card import code_version
from adaptflow.tasks.registry.retrain_key import (
    config_without_locations,
    content,
    export_eval_split,
    find_trained,
    retrain_config,
    retrain_key,
    retrain_markdown,
    trained_on,
)
from adaptflow.tasks.registry.store import get_alias, get_manifest, latest_version
from adaptflow.tasks.storage.s3 import S3Settings

DEFAULT_RETRAIN_MODEL = "sample-reviews-transfer-learning"
Metric = Literal["macro_f1", "accuracy", "macro_precision", "macro_recall"]
assert set(Metric.__args__) == set(METRICS)


def lock_name(model_name: str) -> str:
    return f"retrain-{model_name}"


@contextmanager
def model_lock(model_name: str, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the one slot of the global concurrency limit ``retrain-<model>``; wait while another run holds it."""
    name = lock_name(model_name)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it meanwhile
                pass
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
        yield


@flow(
    name="retrain",
    description="Retrain a registered model when its data changed; promote the new version only if it scores better (optionally once a person approves).",
)
def retrain(
    model_name: str = DEFAULT_RETRAIN_MODEL,
    data: str = "sample://reviews",
    config: AdaptConfig | None = None,
    metric: Metric = "macro_f1",
    min_delta: Annotated[float, Field(ge=0)] = 0.0,
    alias: str = "champion",
    require_approval: bool = False,
    approval_timeout_s: Annotated[int, Field(gt=0, le=MAX_APPROVAL_TIMEOUT_S)] = DEFAULT_APPROVAL_TIMEOUT_S,
) -> dict[str, Any]:
    """Retrain a registered model when its data changed; promote the new version only if it scores better.

    Args:
        model_name: Registry name of the model to retrain (lowercase letters, digits, '.', '_', '-').
            Its champion's recorded configuration (else its latest version's) is reused unless one is given.
        data: The current training data: a CSV, TSV, JSONL or Parquet file, or an s3:// URI of one.
            When its contents equal the champion's training data the run finishes as 'up to date'.
        config: Optional. Train with this configuration instead of the champion's recorded one (its
            training data and model name are replaced by the fields above). Empty: the champion's
            configuration, or the defaults for a model without a champion.
        metric: The metric on which the candidate must beat the champion (both scored on the same rows).
        min_delta: The candidate is promoted only if its metric is at least the champion's plus this.
        alias: The alias marking the version in production; it moves to the candidate only if better.
        require_approval: Before moving the alias, pause this run until a person approves in the Prefect UI
            (Resume on the paused run; both versions' metrics are shown). Needs a Prefect server.
        approval_timeout_s: Seconds to wait for that answer (at most 7 days). No answer: not promoted, the run fails.
    """
    run_all(lambda: validate_name(model_name), lambda: check_approval(require_approval))
    logger = get_run_logger()
    logger.info(f"waiting for the lock {lock_name(model_name)} (one retrain per model at a time)")
    with model_lock(model_name):
        result = _retrain_locked(model_name, data, config, metric, min_delta, alias, approval_timeout_s if require_approval else None)
    create_markdown_artifact(retrain_markdown(result), key="retrain-decision", description=f"Retrain of {model_name}")
    logger.info(f"retrain of {model_name}: {result['status']} - {result['explanation']}")
    if result["approval"] and result["approval"]["outcome"] == "timed_out":
        error = approval_timed_out(result)
        _fail_this_run(str(error))
        raise error
    return result


def check_approval(require_approval: bool) -> None:
    """Pausing for approval needs a Prefect server that outlives the wait, not Prefect's temporary in-process one."""
    if require_approval and not PREFECT_API_URL.value():
        raise ConfigError(
            Problem(
                "require_approval",
                "needs a Prefect server to pause on: PREFECT_API_URL is not set (Prefect would use a temporary in-process one)",
                "run `adaptflow stack up` or set PREFECT_API_URL, then retrain again; or run the retrain/retrain deployment",
            )
        )


def approval_timed_out(result: dict[str, Any]) -> ApprovalTimedOut:
    """The error ending a run whose promotion nobody approved in time."""
    name, candidate, alias = result["model_name"], result["candidate_version"], result["alias"]
    held = f"version {result['champion_after']}" if result["champion_after"] is not None else "no version"
    return ApprovalTimedOut(
        Problem(
            f"{name}:{candidate}",
            f"approval timed out after {result['approval']['timeout_s']} s; the version stays registered and '{alias}' stays on {held}",
            f"promote it later with `adaptflow models promote {name}:{candidate} --alias {alias} --reason ...`, or retrain again",
        )
    )


def _fail_this_run(message: str) -> None:
    """Set this flow run's state to Failed with ``message``.

    Once a pause has timed out, the server refuses every transition out of Paused and puts in
    its own "The flow was failed and never resumed"; forcing the state keeps ours in the UI.
    """
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(FlowRunContext.get().flow_run.id, Failed(message=message), force=True)


def _retrain_locked(
    name: str, data: str, given: AdaptConfig | dict | None, metric: str, min_delta: float, alias: str, approval_timeout_s: int | None
) -> dict[str, Any]:
    started = time.perf_counter()
    settings = S3Settings.resolve()
    current = get_alias(settings, name, alias)
    champion = get_manifest(settings, name, current.version) if current else None
    latest = latest_version(settings, name) if champion is None else None
    recorded = champion or (get_manifest(settings, name, latest.version) if latest else None)
    cfg = retrain_config(name, data, given, recorded)  # the champion's config, else the latest version's, else defaults
    if getattr(cfg, "task", "classification") != "classification":
        raise ConfigError(
            Problem("task", f"retrain gates classification models only (got {cfg.task!r})", "retrain language models with `adaptflow run`")
        )
    work_dir = cfg.resolved_work_dir()
    fetch = s3_fetcher() if any(ref and ref.startswith("s3://") for ref in (data, cfg.data.eval_data)) else None
    data_fp = input_fingerprint(data, work_dir, fetch)
    eval_fp = input_fingerprint(cfg.data.eval_data, work_dir, fetch, role="eval_data") if cfg.data.eval_data else None
    key = retrain_key(data_fp, eval_fp, cfg.model_dump(mode="json"), code_version())
    result: dict[str, Any] = {
        "model_name": name,
        "data": data,
        "data_sha256": data_fp.get("sha256"),
        "retrain_key": key,
        "alias": alias,
        "champion_before": current.version if current else None,
        "champion_after": current.version if current else None,
        "candidate_version": None,
        "trained": False,
        "candidate_metrics": None,
        "champion_metrics": None,
        "eval_file": None,
        "approval": None,
    }
    same_config = given is None or (champion is not None and _same_config(cfg, champion))
    if champion is not None and same_config and content(trained_on(champion)) == content(data_fp):
        return _finish(
            result, started, "up_to_date", f"The data equals the training data of {name}:{current.version} (the {alias}); nothing to train."
        )

    candidate = find_trained(settings, name, key)
    if candidate is not None:
        get_run_logger().info(f"version {candidate} was trained from the same data, config and code: not training again")
        prepared = _prepared_again(cfg)
        eval_file = export_eval_split(
            prepared.dataset_path, prepared.label_names, work_dir / "retrain" / name / f"eval-{prepared.manifest['key']}.csv"
        )
    else:
        trained = run_pipeline(cfg)
        candidate = trained.version
        result["trained"] = True
        prepared = open_prepared(Path(trained.prepared_data), reused=True)
        eval_file = export_eval_split(prepared.dataset_path, prepared.label_names, Path(trained.run_dir) / "gate_eval.csv")

    if current is not None and candidate == current.version:
        result["candidate_version"] = candidate
        return _finish(
            result, started, "up_to_date", f"Version {candidate}, trained from the same data, config and code, already holds '{alias}'."
        )
    decision = promote_task(
        f"{name}:{candidate}",
        eval_data=str(eval_file),
        alias=alias,
        metric=metric,
        min_delta=min_delta,
        approval_timeout_s=approval_timeout_s,
    )
    approval = {**asdict(decision.approval), "summary": decision.approval.describe()} if decision.approval else None
    result.update(
        candidate_version=candidate,
        eval_file=str(eval_file),
        champion_after=candidate if decision.promoted else decision.previous_version,
        candidate_metrics=decision.candidate_metrics,
        champion_metrics=decision.champion_metrics,
        approval=approval,
    )
    return _finish(
        result, started, "promoted" if decision.promoted else "not_promoted", decision.reason[:1].upper() + decision.reason[1:] + "."
    )


def _same_config(cfg: AdaptConfig, champion: dict[str, Any]) -> bool:
    return config_without_locations(cfg.model_dump(mode="json")) == config_without_locations(champion["config"])


def _prepared_again(cfg: AdaptConfig) -> PreparedData:
    """The prepared data of ``cfg`` (reused from the work folder when it is still there) for scoring."""
    model_path, found = check_inputs_task(cfg)
    prepared = collect(found, prepare_data_task, cfg.data, model_path, cfg.resolved_work_dir()) if model_path is not None else None
    raise_together(found, mixed=InputError)
    return prepared


def _finish(result: dict[str, Any], started: float, status: str, explanation: str) -> dict[str, Any]:
    result.update(status=status, explanation=explanation, wall_s=round(time.perf_counter() - started, 2))
    return result
