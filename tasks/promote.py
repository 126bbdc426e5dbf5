"""The promotion gate: move an alias (``champion``) to a candidate only if it is better.

:func:`promote_if_better` scores the candidate and the version the alias points at on
the same labelled evaluation file (:func:`tasks.predict.evaluate_version`) and moves the
alias only if the candidate's ``metric`` is at least the champion's plus ``min_delta``.
The move is a compare-and-swap on the alias object (the etag read with it): if another
promotion moved the alias meanwhile, the gate reads it again and compares against the
new champion. A "not better" verdict is likewise only recorded if the alias still
points where it did. Every decision, promoted or not, is appended to the model's
decision log in the registry; the Prefect task also publishes it as a markdown artifact.

Prefect-free down to the thin task at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.data import read_data_file, sha256_file
from tasks.errors import ConfigError, Problem, StorageError
from tasks.predict import default_cache_dir, evaluate_version, local_input
from tasks.registry import AliasConflict, AliasInfo, append_decision, get_alias, resolve_ref, set_alias
from tasks.s3 import S3Settings

METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall")
"""Metrics the gate can compare; higher is better for each."""
SUMMARY_KEYS = ("n", *METRICS)

Scorer = Callable[[int], dict[str, Any]]


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

    def to_record(self) -> dict[str, Any]:
        return {"kind": "promotion_gate", **asdict(self)}


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
) -> PromotionDecision:
    """Move ``alias`` to the candidate if it beats the alias's version by ``min_delta``; record why.

    With no alias yet, the candidate is promoted. A candidate that already holds the
    alias is not promoted again. Each version is scored once per call. Raises
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
        if decision.promoted:
            try:
                set_alias(settings, name, alias, candidate, expected_etag=current.etag if current else None, reason=decision.reason)
            except AliasConflict:
                continue  # another promotion moved it: compare against the new champion
        elif _etag(get_alias(settings, name, alias)) != _etag(current):
            continue  # the verdict was against a version that no longer holds the alias
        append_decision(settings, name, decision.to_record())
        return decision
    raise StorageError(
        Problem(f"alias {name}@{alias}", f"moved during each of {max_attempts} attempts to promote version {candidate}", "run the promotion again")
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
            **base, previous_version=None, candidate_score=cand, champion_score=None, promoted=True,
            reason=f"no version held '{alias}'; version {candidate} takes it ({metric} {cand:.4f})",
            decided_at=_now(), candidate_metrics=_summary(mine),
        )
    theirs = score(current.version)
    held = float(theirs[metric])
    if current.version == candidate:
        promoted, reason = False, f"version {candidate} already holds '{alias}'"
    elif cand >= held + min_delta:
        promoted, reason = True, f"{metric} {cand:.4f} >= {held:.4f} (version {current.version}) + min_delta {min_delta:g}"
    else:
        promoted, reason = False, f"{metric} {cand:.4f} < {held:.4f} (version {current.version}) + min_delta {min_delta:g}: not better enough"
    return PromotionDecision(
        **base, previous_version=current.version, candidate_score=cand, champion_score=held, promoted=promoted,
        reason=reason, decided_at=_now(), candidate_metrics=_summary(mine), champion_metrics=_summary(theirs),
    )


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
) -> PromotionDecision:
    """Run the gate for ``candidate_ref``; publish the decision as a markdown artifact."""
    decision = promote_if_better(
        S3Settings.resolve(), candidate_ref, alias=alias, metric=metric, min_delta=min_delta,
        eval_data=eval_data, text_column=text_column, label_column=label_column,
    )
    create_markdown_artifact(decision_markdown(decision), key="promotion-decision", description=f"Promotion of {decision.name}:{decision.candidate_version}")
    get_run_logger().info(f"{decision.name}:{decision.candidate_version} {'promoted' if decision.promoted else 'not promoted'} to {decision.alias}: {decision.reason}")
    return decision
