"""The promotion gate against the real registry: first promotion, worse candidates,
min_delta, an alias moved during scoring, two promotions racing, and a person's approval.

Versions of known quality are registered without training (tests/integration/versions.py):
``good`` classifies the evaluation file perfectly, ``constant`` always says "negative"
(accuracy 0.5, macro-F1 1/3) and ``wrong`` is always wrong.
"""

from __future__ import annotations

import threading

import pytest
import torch
from prefect import flow

import adaptflow.tasks.promotion
from adaptflow.tasks.errors import AdaptFlowError, ConfigError
from adaptflow.tasks.promotion import Approval, PromotionDecision, promote_if_better, promote_task
from adaptflow.tasks.registry.store import get_alias, list_decisions, set_alias
from tests.integration.test_predict import flow_run_artifacts
from tests.integration.versions import fit_head, register_head, stack_env, write_labelled

EVAL_ROWS = [
    (f"the {thing} was {word}", label)
    for thing in ("film", "hotel", "meal")
    for word, label in (("great", "positive"), ("awful", "negative"), ("lovely", "positive"), ("boring", "negative"))
]


@pytest.fixture
def env(s3_stack, tmp_path):
    with stack_env(s3_stack, "promote", tmp_path / "home") as settings:
        yield settings


@pytest.fixture(scope="module")
def heads(tiny_bert_dir):
    weight, bias = fit_head(tiny_bert_dir, EVAL_ROWS)
    return {
        "good": (weight, bias),
        "wrong": (-weight, -bias),
        "constant": (torch.zeros_like(weight), torch.tensor([1.0, -1.0])),
    }


@pytest.fixture
def make(env, heads, tiny_bert_dir, tmp_path):
    """register(kind) -> version number of a new version of model 'gate'."""
    return lambda kind: register_head(env, "gate", tiny_bert_dir, tmp_path, *heads[kind])


@pytest.fixture
def eval_csv(tmp_path) -> str:
    return str(write_labelled(tmp_path / "eval.csv", EVAL_ROWS))


def test_first_promotion_takes_the_alias(env, make, eval_csv):
    version = make("good")
    decision = promote_if_better(env, f"gate:{version}", eval_data=eval_csv)
    assert decision.promoted and decision.previous_version is None and decision.candidate_score == 1.0
    assert get_alias(env, "gate", "champion").version == version
    (record,) = list_decisions(env, "gate")
    assert record["promoted"] is True and record["candidate_version"] == version
    assert len(record["eval_data"]["sha256"]) == 64


def test_worse_candidate_is_not_promoted_and_the_decision_is_recorded(env, make, eval_csv, prefect_api):
    champion = make("constant")
    promote_if_better(env, f"gate:{champion}", eval_data=eval_csv)
    worse = make("wrong")

    @flow
    def gate() -> PromotionDecision:
        return promote_task(f"gate:{worse}", eval_data=eval_csv)

    state = gate(return_state=True)
    decision = state.result()
    assert not decision.promoted and decision.previous_version == champion
    assert decision.candidate_score == 0.0 and decision.champion_score == pytest.approx(1 / 3)
    assert "not better enough" in decision.reason
    assert get_alias(env, "gate", "champion").version == champion
    records = list_decisions(env, "gate")
    assert [r["promoted"] for r in records] == [True, False] and records[1]["candidate_version"] == worse
    assert records[1]["champion_metrics"]["accuracy"] == 0.5 and records[1]["candidate_metrics"]["accuracy"] == 0.0

    artifact = flow_run_artifacts(prefect_api, str(state.state_details.flow_run_id))["promotion-decision"]["data"]
    assert f"version {worse} not promoted to `champion`" in artifact
    assert "| accuracy | 0.0000 | 0.5000 |" in artifact and "| macro_f1 | 0.0000 | 0.3333 |" in artifact


def test_min_delta_is_respected(env, make, eval_csv):
    champion, candidate = make("constant"), make("good")
    promote_if_better(env, f"gate:{champion}", eval_data=eval_csv)
    # macro-F1: candidate 1.0, champion 1/3: better by 0.67
    held = promote_if_better(env, f"gate:{candidate}", eval_data=eval_csv, min_delta=0.7)
    assert not held.promoted and get_alias(env, "gate", "champion").version == champion
    taken = promote_if_better(env, f"gate:{candidate}", eval_data=eval_csv, min_delta=0.6)
    assert taken.promoted and taken.previous_version == champion
    assert get_alias(env, "gate", "champion").version == candidate
    again = promote_if_better(env, f"gate:{candidate}", eval_data=eval_csv)
    assert not again.promoted and "already holds" in again.reason
    assert [r["promoted"] for r in list_decisions(env, "gate")] == [True, False, True, False]


def test_alias_moved_during_scoring_is_checked_against_the_new_champion(env, make, eval_csv, monkeypatch):
    champion, rival, candidate = make("constant"), make("good"), make("good")
    promote_if_better(env, f"gate:{champion}", eval_data=eval_csv)
    real = adaptflow.tasks.promotion.evaluate_version

    def scoring_while_another_promotion_lands(settings, ref, *args, **kwargs):
        if ref == f"gate:{candidate}" and get_alias(env, "gate", "champion").version == champion:
            set_alias(env, "gate", "champion", rival, expected_etag=get_alias(env, "gate", "champion").etag, reason="rival")
        return real(settings, ref, *args, **kwargs)

    monkeypatch.setattr(adaptflow.tasks.promotion, "evaluate_version", scoring_while_another_promotion_lands)
    # beats the old champion by 0.67 but ties the rival: min_delta 0.1 keeps the rival
    decision = promote_if_better(env, f"gate:{candidate}", eval_data=eval_csv, min_delta=0.1)
    assert not decision.promoted and decision.previous_version == rival and decision.attempts == 2
    assert get_alias(env, "gate", "champion").version == rival


def test_only_an_approved_move_happens_and_an_alias_moved_meanwhile_is_asked_about_again(env, make, eval_csv):
    champion, candidate = make("constant"), make("good")
    promote_if_better(env, f"gate:{champion}", eval_data=eval_csv)
    asked: list[PromotionDecision] = []

    def reject(decision: PromotionDecision) -> Approval:
        asked.append(decision)
        return Approval("rejected", note="wait for the audit", reviewer="bob")

    held = promote_if_better(env, f"gate:{candidate}", eval_data=eval_csv, approve=reject)
    assert not held.promoted and held.reason.endswith("but rejected by bob: wait for the audit")
    assert [(d.promoted, d.previous_version) for d in asked] == [(True, champion)] and asked[0].champion_metrics["accuracy"] == 0.5
    assert get_alias(env, "gate", "champion").version == champion
    assert list_decisions(env, "gate")[-1]["approval"] | {"answered_at": ""} == {
        "outcome": "rejected",
        "note": "wait for the audit",
        "reviewer": "bob",
        "timeout_s": None,
        "answered_at": "",
    }

    # Another promotion lands while the person decides: the approved move loses the compare-and-swap,
    # and the gate decides against the new champion and asks again.
    rival = make("constant")
    asked.clear()

    def approve_while_a_rival_lands(decision: PromotionDecision) -> Approval:
        asked.append(decision)
        if len(asked) == 1:
            set_alias(env, "gate", "champion", rival, expected_etag=get_alias(env, "gate", "champion").etag, reason="rival")
        return Approval("approved", reviewer="carol")

    taken = promote_if_better(env, f"gate:{candidate}", eval_data=eval_csv, approve=approve_while_a_rival_lands)
    assert taken.promoted and taken.previous_version == rival and taken.attempts == 2 and taken.reason.endswith("; approved by carol")
    assert [d.previous_version for d in asked] == [champion, rival]
    assert get_alias(env, "gate", "champion").version == candidate

    # A candidate that is not better is never put to a person.
    worse = promote_if_better(
        env, f"gate:{make('wrong')}", eval_data=eval_csv, approve=lambda d: pytest.fail("asked about a worse candidate")
    )
    assert not worse.promoted and worse.approval is None
    assert [r["promoted"] for r in list_decisions(env, "gate")] == [True, False, True, False]


@pytest.mark.parametrize(
    "start, better, worse", [("constant", "good", "wrong"), (None, "good", "constant")], ids=["with-champion", "no-champion"]
)
def test_concurrent_promotions_end_on_the_better_candidate(env, make, eval_csv, start, better, worse):
    if start is not None:
        promote_if_better(env, f"gate:{make(start)}", eval_data=eval_csv)
    candidates = {"better": make(better), "worse": make(worse)}
    barrier = threading.Barrier(len(candidates))
    decisions: dict[str, PromotionDecision] = {}
    failures: list[BaseException] = []

    def promote(which: str) -> None:
        barrier.wait()
        try:
            decisions[which] = promote_if_better(env, f"gate:{candidates[which]}", eval_data=eval_csv)
        except BaseException as exc:  # re-raised below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=promote, args=(which,)) for which in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if failures:
        raise failures[0]

    assert get_alias(env, "gate", "champion").version == candidates["better"]
    assert decisions["better"].promoted
    records = list_decisions(env, "gate")
    recorded = {r["candidate_version"]: r for r in records[1 if start else 0 :]}
    assert set(recorded) == set(candidates.values()) and len(records) == (3 if start else 2)
    assert recorded[candidates["better"]]["promoted"] is True


def test_bad_arguments_and_names_are_refused_before_scoring(env, make, eval_csv, tmp_path):
    version = make("good")
    with pytest.raises(ConfigError) as caught:
        promote_if_better(env, f"gate:{version}", eval_data=eval_csv, metric="loss", min_delta=-1)
    assert len(caught.value.problems) == 2 and "macro_f1" in str(caught.value)
    for alias in ("../champion", "a/b", "x..y"):
        with pytest.raises(AdaptFlowError, match="alias|name"):
            promote_if_better(env, f"gate:{version}", alias=alias, eval_data=eval_csv)
    with pytest.raises(AdaptFlowError, match="no such file"):
        promote_if_better(env, f"gate:{version}", eval_data=str(tmp_path / "missing.csv"))
    assert list_decisions(env, "gate") == []
    assert get_alias(env, "gate", "champion") is None


def test_models_promote_cli_is_the_gate_with_if_better_on(env, make, eval_csv):
    from typer.testing import CliRunner

    from adaptflow.flows.cli.app import app

    good, wrong = make("good"), make("wrong")
    runner = CliRunner()
    first = runner.invoke(app, ["models", "promote", f"gate:{good}", "--if-better-on", eval_csv], env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    assert "promoted" in first.output
    second = runner.invoke(
        app, ["models", "promote", f"gate:{wrong}", "--if-better-on", eval_csv, "--metric", "accuracy"], env={"COLUMNS": "200"}
    )
    assert second.exit_code == 1 and "not promoted" in second.output
    assert get_alias(env, "gate", "champion").version == good
    assert [d["promoted"] for d in list_decisions(env, "gate")] == [True, False]
