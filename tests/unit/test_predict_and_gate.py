"""The pure parts of batch inference and of the promotion gate (no S3, no Prefect server)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.data import Table, label_ids_of, text_column_of
from tasks.errors import DataError
from tasks.predict import output_format, prediction_frame
from tasks.promote import decide
from tasks.registry import AliasInfo


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
    assert decision.previous_version == current and decision.champion_score == (None if current is None else (champion_f1 if current == 1 else candidate_f1))


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
