"""The promotion gate: move an alias (``champion``) to a candidate only if it is better.

:func:`promote_if_better` scores the candidate and the version the alias points at on
the same labelled evaluation file (:func:`adaptflow.tasks.inference.predict.evaluate_version`) and moves the
alias only if the candidate's ``metric`` is at least the champion's plus ``min_delta``.
The move is a compare-and-swap on the alias object (the etag read with it): if another
promotion moved the alias meanwhile, the gate reads it again and compares against the
new champion. A "not better" verdict is likewise only recorded if the alias still
points where it did. Every decision, promoted or not, is appended to the model's
decision log in the registry; the Prefect task also publishes it as a markdown artifact.

**Approval.** Given an ``approve`` callback, the gate asks it before every alias move it
would make (never for "not better"), with the decision and both sets of metrics. Only an
:class:`Approval` whose outcome is ``approved`` moves the alias; ``rejected`` and
``timed_out`` are recorded as not promoted, with the reviewer's note. The candidate version
stays registered either way: only the alias move waits. If the alias moved while the
person was deciding, the compare-and-swap fails and the gate decides, and asks, again.

Prefect-free down to the thin task at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from adaptflow.tasks.data.readers import read_data_file
from adaptflow.tasks.data.sources import sha256_file
from adaptflow.tasks.errors import AdaptFlowError, ConfigError, Problem, StorageError
from adaptflow.tasks.inference.predict import default_cache_dir, evaluate_version, local_input
from adaptflow.tasks.registry.store import AliasConflict, AliasInfo, append_decision, get_alias, resolve_ref, set_alias, version_key
from adaptflow.tasks.storage.s3 import S3Settings

METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall")
"""Metrics the gate can compare; higher is better for each."""
SUMMARY_KEYS = ("n", *METRICS)

Scorer = Callable[[int], dict[str, Any]]


@dataclass(frozen=True)
class Approval:
    """A person's answer to an alias move the gate would make."""

    outcome: Literal["approved", "rejected", "timed_out"]
    note: str = ""
    """What the reviewer wrote; recorded with the decision."""
    reviewer: str = ""
    timeout_s: int | None = None
    """How long the answer was waited for."""
    answered_at: str = field(default_factory=lambda: _now())

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"

    def describe(self) -> str:
        if self.outcome == "timed_out":
            return f"approval timed out after {self.timeout_s} s"
        said = f"{self.outcome} by {self.reviewer or 'the reviewer'}"
        return f"{said}: {self.note}" if self.note else said


@dataclass(frozen=True)
class PromotionDecision:
    """One decision of the gate, as recorded in the registry's decision log."""

    name: str
    candidate_version: int
    previous_version: int | None
    """The alias's version when the decision was taken (None: the alias did not exist)."""
    alias: str
    metric: str
    candidate_score: float
    champion_score: float | None
    promoted: bool
    reason: str
    decided_at: str
    min_delta: float = 0.0
    eval_data: dict[str, Any] = field(default_factory=dict)
    """``{"uri", "sha256"}`` of the evaluation file both versions were scored on."""
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    """n, accuracy and macro precision/recall/F1 of the candidate."""
    champion_metrics: dict[str, Any] | None = None
    attempts: int = 1
    """Times the alias was read; more than one when other promotions moved it meanwhile."""
    approval: Approval | None = None
    """The person's answer, when the move needed approval."""

    def to_record(self) -> dict[str, Any]:
        return {"kind": "promotion_gate", **asdict(self)}


Approver = Callable[[PromotionDecision], Approval]
"""Asked before an alias move with the decision the gate took; answers whether to make it."""

APPROVAL_POLL_S = 5
"""How often a paused run asks the Prefect server whether someone answered."""


class ApprovalTimedOut(AdaptFlowError):
    """Nobody answered an alias move that needed approval in time: not promoted."""

    title = "Not promoted"
    exit_code = 11


def promote_if_better(
    settings: S3Settings,
    candidate_ref: str,
    *,
    alias: str = "champion",
    metric: str = "macro_f1",
    min_delta: float = 0.0,
    eval_data: str,
    text_column: str | None = None,
    label_column: str = "label",
    max_attempts: int = 5,
    approve: Approver | None = None,
) -> PromotionDecision:
    """Move ``alias`` to the candidate if it beats the alias's version by ``min_delta``; record why.

    With no alias yet, the candidate is promoted. A candidate that already holds the
    alias is not promoted again. Each version is scored once per call. With ``approve``,
    a move happens only if it answers "approved" (see the module docstring). Raises
    :class:`StorageError` when the alias moved during every one of ``max_attempts``.
    """
    _check_arguments(metric, min_delta, max_attempts)
    name, candidate = resolve_ref(settings, candidate_ref)
    local = local_input(settings, eval_data, default_cache_dir())
    read_data_file(eval_data, local)  # a clear DataError for a missing or unreadable file, before any scoring
    evaluation = {"uri": eval_data, "sha256": sha256_file(local)[0]}
    scores: dict[int, dict[str, Any]] = {}

    def score(version: int) -> dict[str, Any]:
        if version not in scores:
            scores[version] = evaluate_version(settings, f"{name}:{version}", str(local), text_column, label_column)
        return scores[version]

    for attempt in range(1, max_attempts + 1):
        current = get_alias(settings, name, alias)
        decision = replace(decide(name, candidate, current, alias, metric, min_delta, score), eval_data=evaluation, attempts=attempt)
        if decision.promoted and approve is not None:
            decision = apply_approval(decision, approve(decision))
        if decision.promoted:
            try:
                set_alias(settings, name, alias, candidate, expected_etag=current.etag if current else None, reason=decision.reason)
            except AliasConflict:
                continue  # another promotion moved it: compare against the new champion (and ask again)
        elif decision.approval is None and _etag(get_alias(settings, name, alias)) != _etag(current):
            continue  # the verdict was against a version that no longer holds the alias
        append_decision(settings, name, decision.to_record())
        return decision
    raise StorageError(
        Problem(
            f"alias {name}@{alias}",
            f"moved during each of {max_attempts} attempts to promote version {candidate}",
            "run the promotion again",
        )
    )


def decide(
    name: str, candidate: int, current: AliasInfo | None, alias: str, metric: str, min_delta: float, score: Scorer
) -> PromotionDecision:
    """The verdict against the alias as read (``current``); nothing is written here."""
    mine = score(candidate)
    base = {"name": name, "candidate_version": candidate, "alias": alias, "metric": metric, "min_delta": min_delta}
    cand = float(mine[metric])
    if current is None:
        return PromotionDecision(
            **base,
            previous_version=None,
            candidate_score=cand,
            champion_score=None,
            promoted=True,
            reason=f"no version held '{alias}'; version {candidate} takes it ({metric} {cand:.4f})",
            decided_at=_now(),
            candidate_metrics=_summary(mine),
        )
    theirs = score(current.version)
    held = float(theirs[metric])
    if current.version == candidate:
        promoted, reason = False, f"version {candidate} already holds '{alias}'"
    elif cand >= held + min_delta:
        promoted, reason = True, f"{metric} {cand:.4f} >= {held:.4f} (version {current.version}) + min_delta {min_delta:g}"
    else:
        promoted, reason = (
            False,
            f"{metric} {cand:.4f} < {held:.4f} (version {current.version}) + min_delta {min_delta:g}: not better enough",
        )
    return PromotionDecision(
        **base,
        previous_version=current.version,
        candidate_score=cand,
        champion_score=held,
        promoted=promoted,
        reason=reason,
        decided_at=_now(),
        candidate_metrics=_summary(mine),
        champion_metrics=_summary(theirs),
    )


def apply_approval(decision: PromotionDecision, answer: Approval) -> PromotionDecision:
    """The gate's "promote" once a person answered: it stands only if approved; the reason says who decided and why."""
    if answer.approved:
        return replace(decision, approval=answer, reason=f"{decision.reason}; {answer.describe()}")
    return replace(decision, promoted=False, approval=answer, reason=f"{decision.reason}, but {answer.describe()}")


def _check_arguments(metric: str, min_delta: float, max_attempts: int) -> None:
    problems = []
    if metric not in METRICS:
        problems.append(Problem("metric", f"unknown metric {metric!r}", f"use one of {', '.join(METRICS)}"))
    if not min_delta >= 0:
        problems.append(Problem("min_delta", f"must be 0 or more (got {min_delta})"))
    if max_attempts < 1:
        problems.append(Problem("max_attempts", f"must be 1 or more (got {max_attempts})"))
    if problems:
        raise ConfigError(problems)


def _etag(info: AliasInfo | None) -> str | None:
    return info.etag if info is not None else None


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics[key] for key in SUMMARY_KEYS}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- Prefect wrapper -----------------------------------------------------------------


def decision_markdown(decision: PromotionDecision) -> str:
    """The decision and both sets of metrics, for a Prefect artifact."""
    verdict = "promoted" if decision.promoted else "not promoted"
    champion = f"version {decision.previous_version}" if decision.previous_version is not None else "none"
    lines = [
        f"# {decision.name}: version {decision.candidate_version} {verdict} to `{decision.alias}`",
        "",
        f"{decision.reason}.",
        "",
        f"Compared on `{decision.eval_data.get('uri')}` (sha256 `{str(decision.eval_data.get('sha256'))[:16]}`), "
        f"metric `{decision.metric}`, min_delta {decision.min_delta:g}; previous `{decision.alias}`: {champion}.",
        "",
        f"| metric | candidate (v{decision.candidate_version}) | {decision.alias} ({champion}) |",
        "|---|---|---|",
    ]
    for key in SUMMARY_KEYS:
        mine = decision.candidate_metrics.get(key)
        theirs = decision.champion_metrics.get(key) if decision.champion_metrics else None
        lines.append(f"| {key} | {_cell(mine)} | {_cell(theirs)} |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def approval_markdown(decision: PromotionDecision, candidate_uri: str, champion_uri: str | None, timeout_s: int) -> str:
    """What a reviewer is shown before an alias move: both versions and where they are, the metric, the delta."""
    name, alias, metric, candidate = decision.name, decision.alias, decision.metric, decision.candidate_version
    held = f"`{name}:{decision.previous_version}`" if decision.previous_version is not None else "none"
    theirs = decision.champion_metrics or {}
    if decision.champion_score is None:
        delta = "no version to compare with"
    else:
        delta = f"{decision.candidate_score - decision.champion_score:+.4f} (min_delta {decision.min_delta:g})"
    deadline = (datetime.now(timezone.utc) + timedelta(seconds=timeout_s)).isoformat(timespec="seconds")
    lines = [
        f"# Promote `{name}:{candidate}` to `{alias}`?",
        "",
        f"The gate would move `{alias}` from {held} to version {candidate}: {decision.reason}.",
        "",
        f"| | candidate | `{alias}` now |",
        "|---|---|---|",
        f"| version | `{name}:{candidate}` | {held} |",
        f"| location | `{candidate_uri}` | {f'`{champion_uri}`' if champion_uri else '-'} |",
        f"| **{metric}** (gate) | **{_cell(decision.candidate_metrics.get(metric))}** | **{_cell(theirs.get(metric))}** |",
        f"| delta | {delta} | |",
    ]
    for key in SUMMARY_KEYS:
        if key != metric:
            lines.append(f"| {key} | {_cell(decision.candidate_metrics.get(key))} | {_cell(theirs.get(key))} |")
    lines += [
        "",
        f"Both scored on the same rows: `{decision.eval_data.get('uri')}` (sha256 `{str(decision.eval_data.get('sha256'))[:16]}`).",
        "",
        f"**Approve** (tick *approve*, then submit) moves `{alias}` to version {candidate}. Left unticked, the promotion is "
        f"rejected and `{alias}` stays on {held}. No answer by {deadline} ({timeout_s} s): not promoted, and the run fails. "
        f"Version {candidate} stays registered either way; your note goes into the model's decision log.",
    ]
    return "\n".join(lines) + "\n"


class PromotionApproval(RunInput):
    """The form of a run paused for approval (the Resume button of the flow run in the Prefect UI)."""

    approve: bool = Field(
        default=False,
        title="Approve promotion",
        description="Tick to move the alias to the candidate. Unticked: rejected, the alias stays where it is (the candidate stays registered).",
    )
    note: str = Field(
        default="", max_length=2000, description="Why: recorded in the model's decision log and the run's retrain-decision artifact."
    )
    reviewer: str = Field(default="", max_length=200, description="Your name, recorded with the decision.")


def ask_in_prefect_ui(settings: S3Settings, timeout_s: int) -> Approver:
    """An :data:`Approver` that pauses the flow run until someone answers in the Prefect UI, or ``timeout_s`` passes.

    The question (:func:`approval_markdown`) is the pause's description, shown above the
    form, and the run's ``promotion-approval`` artifact. Needs a Prefect server that stays up
    while the run waits.
    """

    def approve(decision: PromotionDecision) -> Approval:
        name, candidate, held = decision.name, decision.candidate_version, decision.previous_version
        champion_uri = settings.uri(version_key(settings, name, held)) if held is not None else None
        request = approval_markdown(decision, settings.uri(version_key(settings, name, candidate)), champion_uri, timeout_s)
        create_markdown_artifact(request, key="promotion-approval", description=f"Approve {name}:{candidate} as {decision.alias}?")
        get_run_logger().info(
            f"waiting up to {timeout_s} s for a person to approve moving {decision.alias} to {name}:{candidate} (Resume on this run)"
        )
        try:
            answer = pause_flow_run(
                wait_for_input=PromotionApproval.with_initial_data(description=request), timeout=timeout_s, poll_interval=APPROVAL_POLL_S
            )
        except FlowPauseTimeout:
            return Approval("timed_out", timeout_s=timeout_s)
        outcome = "approved" if answer.approve else "rejected"
        return Approval(outcome, note=answer.note.strip(), reviewer=answer.reviewer.strip(), timeout_s=timeout_s)

    return approve


@task(name="promote-if-better", cache_policy=NO_CACHE)
def promote_task(
    candidate_ref: str,
    *,
    eval_data: str,
    alias: str = "champion",
    metric: str = "macro_f1",
    min_delta: float = 0.0,
    text_column: str | None = None,
    label_column: str = "label",
    approval_timeout_s: int | None = None,
) -> PromotionDecision:
    """Run the gate for ``candidate_ref``; publish the decision as a markdown artifact.

    With ``approval_timeout_s``, an alias move waits for a person's approval in the Prefect
    UI (:func:`ask_in_prefect_ui`) for at most that many seconds.
    """
    settings = S3Settings.resolve()
    approve = ask_in_prefect_ui(settings, approval_timeout_s) if approval_timeout_s is not None else None
    decision = promote_if_better(
        settings,
        candidate_ref,
        alias=alias,
        metric=metric,
        min_delta=min_delta,
        eval_data=eval_data,
        text_column=text_column,
        label_column=label_column,
        approve=approve,
    )
    create_markdown_artifact(
        decision_markdown(decision), key="promotion-decision", description=f"Promotion of {decision.name}:{decision.candidate_version}"
    )
    get_run_logger().info(
        f"{decision.name}:{decision.candidate_version} {'promoted' if decision.promoted else 'not promoted'} to {decision.alias}: {decision.reason}"
    )
    return decision
