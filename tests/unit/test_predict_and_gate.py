"""The pure parts of batch inference and of the promotion gate and its approval (no S3, no Prefect server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from adaptflow.tasks.data.columns import text_column_of
from adaptflow.tasks.data.labels import label_ids_of
from adaptflow.tasks.data.readers import Table
from adaptflow.tasks.errors import DataError
from adaptflow.tasks.inference.predict import OutputFile, output_format, prediction_frame
from adaptflow.tasks.promotion import Approval, PromotionApproval, PromotionDecision, apply_approval, approval_markdown, decide
from adaptflow.tasks.registry.store import AliasInfo


def scorer(table: dict[int, float]):
    calls: list[int] = []

    def score(version: int) -> dict:
        calls.append(version)
        f1 = table[version]
        return {"n": 10, "accuracy": f1, "macro_f1": f1, "macro_precision": f1, "macro_recall": f1}

    return score, calls


def alias_at(version: int) -> AliasInfo:
    return AliasInfo(name="m", alias="champion", version=version, etag='"e"', set_at="", reason="")


@pytest.mark.parametrize(
    "current, candidate_f1, champion_f1, min_delta, promoted, words",
    [
        (None, 0.5, None, 0.0, True, "no version held"),
        (1, 0.80, 0.70, 0.0, True, ">="),
        (1, 0.70, 0.70, 0.0, True, ">="),  # a tie with min_delta 0 promotes
        (1, 0.75, 0.70, 0.1, False, "not better enough"),
        (1, 0.60, 0.70, 0.0, False, "not better enough"),
        (2, 0.90, 0.90, 0.0, False, "already holds"),
    ],
)
def test_decide(current, candidate_f1, champion_f1, min_delta, promoted, words):
    score, _ = scorer({2: candidate_f1, 1: champion_f1 or 0.0})
    decision = decide("m", 2, alias_at(current) if current else None, "champion", "macro_f1", min_delta, score)
    assert decision.promoted is promoted and words in decision.reason
    assert decision.previous_version == current and decision.champion_score == (
        None if current is None else (champion_f1 if current == 1 else candidate_f1)
    )


def promoting(**changes) -> PromotionDecision:
    """A decision of the gate to move 'champion' from m:1 to m:2."""
    mine = {"n": 10, "accuracy": 0.8, "macro_f1": 0.8, "macro_precision": 0.8, "macro_recall": 0.8}
    theirs = {"n": 10, "accuracy": 0.7, "macro_f1": 0.7, "macro_precision": 0.7, "macro_recall": 0.7}
    fields = {
        "name": "m",
        "candidate_version": 2,
        "previous_version": 1,
        "alias": "champion",
        "metric": "macro_f1",
        "candidate_score": 0.8,
        "champion_score": 0.7,
        "promoted": True,
        "reason": "macro_f1 0.8000 >= 0.7000 (version 1) + min_delta 0",
        "decided_at": "",
        "eval_data": {"uri": "eval.csv", "sha256": "ab" * 32},
        "candidate_metrics": mine,
        "champion_metrics": theirs,
    }
    return PromotionDecision(**{**fields, **changes})


@pytest.mark.parametrize(
    "answer, promoted, ending",
    [
        (Approval("approved", note="beats v1 on the new data", reviewer="alice"), True, "; approved by alice: beats v1 on the new data"),
        (Approval("rejected", note="wait for the audit"), False, ", but rejected by the reviewer: wait for the audit"),
        (Approval("rejected"), False, ", but rejected by the reviewer"),
        (Approval("timed_out", timeout_s=60), False, ", but approval timed out after 60 s"),
    ],
)
def test_only_an_approval_lets_the_gate_move_the_alias(answer, promoted, ending):
    decision = apply_approval(promoting(), answer)
    assert decision.promoted is promoted and decision.reason.endswith(ending) and decision.approval == answer
    record = decision.to_record()
    assert record["approval"]["outcome"] == answer.outcome and record["approval"]["note"] == answer.note


def test_the_approval_request_shows_both_versions_the_metric_and_the_delta():
    text = approval_markdown(promoting(), "s3://b/p/models/m/versions/000002/", "s3://b/p/models/m/versions/000001/", 3600)
    assert text.startswith("# Promote `m:2` to `champion`?")
    for row in (
        "| version | `m:2` | `m:1` |",
        "| location | `s3://b/p/models/m/versions/000002/` | `s3://b/p/models/m/versions/000001/` |",
        "| **macro_f1** (gate) | **0.8000** | **0.7000** |",
        "| delta | +0.1000 (min_delta 0) | |",
        "| accuracy | 0.8000 | 0.7000 |",
    ):
        assert row in text
    assert "`eval.csv`" in text and "(3600 s)" in text and "stays registered either way" in text
    first = approval_markdown(promoting(previous_version=None, champion_score=None, champion_metrics=None), "s3://x/", None, 60)
    assert (
        "from none to version 2" in first
        and "| delta | no version to compare with | |" in first
        and "| location | `s3://x/` | - |" in first
    )


def test_the_approval_form_describes_every_field_and_rejects_by_default():
    properties = PromotionApproval.model_json_schema()["properties"]
    assert set(properties) == {"approve", "note", "reviewer"}
    assert all(field.get("description") for field in properties.values())
    assert PromotionApproval().approve is False


def test_the_approval_timeout_is_bounded():
    from prefect.exceptions import ParameterTypeError

    from adaptflow.flows.retrain import retrain

    for bad in (0, -1, 7 * 24 * 3600 + 1):
        with pytest.raises(ParameterTypeError, match="approval_timeout_s"):
            retrain.validate_parameters({"require_approval": True, "approval_timeout_s": bad})
    assert retrain.validate_parameters({"approval_timeout_s": 60})["require_approval"] is False


def test_the_cli_refuses_approval_options_it_cannot_honour():
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from adaptflow.flows.cli.app import app

    runner = CliRunner()
    command = ["retrain", "--data", "x.csv", "--model-name", "m"]
    alone = runner.invoke(app, [*command, "--approval-timeout", "0"], env={"COLUMNS": "300"})
    assert alone.exit_code == 2 and "must be 1 to 604800 seconds" in alone.output and "only applies with --require-approval" in alone.output
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server set: a temporary one is asked for
        serverless = runner.invoke(app, [*command, "--require-approval"], env={"COLUMNS": "300", "ADAPTFLOW_PREFECT_SERVER": "temporary"})
    assert serverless.exit_code == 2 and "needs a Prefect server to pause on" in serverless.output


def test_prediction_frame_keeps_clashing_input_columns():
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    out = prediction_frame(frame, ["neg", "pos"], np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert list(out.columns) == ["text", "input_label", "label", "score", "prob_neg", "prob_pos"]
    assert out["label"].tolist() == ["neg", "pos"] and out["score"].tolist() == [0.9, 0.8]


def test_output_format_by_extension():
    assert output_format("x.CSV") == "csv" and output_format("a/b.jsonl") == "jsonl"
    with pytest.raises(DataError, match="unsupported output file type"):
        output_format("x.parquet")


def test_label_ids_match_the_models_names_and_name_bad_rows():
    table = Table("eval.csv", pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["1", 0, "01", None]}), [2, 3, 4, 5])
    with pytest.raises(DataError) as caught:
        label_ids_of(table, "label", ["0", "1"])
    assert [p.where for p in caught.value.problems] == ["eval.csv, row 4, line 5"]
    assert label_ids_of(Table("e", table.frame.iloc[:3]), "label", ["0", "1"]) == [1, 0, 1]
    with pytest.raises(DataError, match="label 'maybe' is not one the model knows"):
        label_ids_of(Table("e", pd.DataFrame({"label": ["maybe"]})), "label", ["no", "yes"])


def test_text_column_is_detected_or_named():
    table = Table("in.csv", pd.DataFrame({"id": [1, 2], "review": ["a", "b"], "label": ["x", "y"]}))
    assert text_column_of(table, None, {"label"}) == "review"
    with pytest.raises(DataError, match="several text columns"):
        text_column_of(table, None, set())
    with pytest.raises(DataError, match="no text column 'body'"):
        text_column_of(table, "body", {"label"})


# ---- the output file --------------------------------------------------------------------


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_output_file_appears_whole_with_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        with OutputFile(tmp_path / "out.csv") as out:
            out.write(pd.DataFrame({"a": [1, 2]}))
            assert not (tmp_path / "out.csv").exists()  # not before it is complete
            out.write(pd.DataFrame({"a": [3]}))
    finally:
        os.umask(old)
    assert (tmp_path / "out.csv").read_text() == "a\n1\n2\n3\n"
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_failed_write_leaves_nothing_and_a_killed_one_is_cleaned_up_next_time(tmp_path):
    with pytest.raises(RuntimeError), OutputFile(tmp_path / "out.jsonl") as out:
        out.write(pd.DataFrame({"a": [1]}))
        raise RuntimeError("inference failed")
    assert list(tmp_path.iterdir()) == []
    host = socket.gethostname()
    killed = tmp_path / f".out.jsonl.{host}-{_dead_pid()}-0badc0de.partial"  # what a SIGKILLed predict leaves
    running = tmp_path / f".out.jsonl.{host}-{os.getpid()}-1234abcd.partial"  # another predict still writing
    elsewhere = tmp_path / f".out.jsonl.other-host-{_dead_pid()}-5678abcd.partial"  # not ours to judge
    for path in (killed, running, elsewhere):
        path.write_text("{}\n")
    with OutputFile(tmp_path / "out.jsonl") as out:
        out.write(pd.DataFrame({"a": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, elsewhere.name, "out.jsonl"])
    assert (tmp_path / "out.jsonl").read_text() == '{"a":1}\n'
