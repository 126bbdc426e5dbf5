"""The pure parts of folder layout 2: routes, label fields, card metadata, the shipped pooling."""

from __future__ import annotations

import ast

import pytest
import torch

from adaptflow.tasks import hf_pooled
from adaptflow.tasks.registry.card import dataset_name, loading_snippet
from adaptflow.tasks.registry.hf_folder import label_fields, route_for


@pytest.mark.parametrize(
    "model_type, pooling, adapter, route",
    [
        ("bert", "pooler", False, "transformers"),
        ("bert", "mean", False, "remote_code"),
        ("bert", "cls", False, "remote_code"),  # BERT's standard head pools with dense+tanh, not the raw CLS state
        ("roberta", "pooler", False, "remote_code"),  # RoBERTa's standard head is not pooler -> linear
        ("gpt2", "last", False, "remote_code"),
        ("bert", "pooler", True, "peft"),
        ("bert", "mean", True, "peft_backbone"),
    ],
)
def test_route_for_each_pooling(model_type, pooling, adapter, route):
    assert route_for(model_type, pooling, adapter) == route


def test_label_fields_are_what_transformers_reads():
    fields = label_fields(["neg", "pos"])
    assert fields == {"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}, "problem_type": "single_label_classification"}


@pytest.mark.parametrize(
    "ref, name", [("sample://reviews", "reviews"), ("/data/x/reviews.csv", "reviews.csv"), ("s3://b/p/d.jsonl", "d.jsonl")]
)
def test_dataset_name_drops_the_scheme_and_folders(ref, name):
    assert dataset_name(ref) == name


@pytest.mark.parametrize("route", ["transformers", "remote_code", "peft"])
def test_loading_snippets_are_python(route):
    snippet = loading_snippet(route, ["neg", "pos"])
    ast.parse(snippet)
    assert ("trust_remote_code=True" in snippet) == (route == "remote_code")
    assert "adaptflow" not in snippet


def test_no_plain_snippet_where_no_plain_loader_reproduces_the_pooling():
    assert loading_snippet("peft_backbone", ["neg", "pos"]) is None


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_shipped_pooling_is_the_training_pooling(pooling):
    from adaptflow.tasks.modeling import pool

    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = {
        "mean": (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
        "cls": hidden[:, 0],
        "last": hidden[[0, 1, 2], [2, 4, 0]],
    }
    assert torch.allclose(hf_pooled.pool(hidden, mask, pooling, None), expected[pooling])
    assert torch.equal(pool(hidden, mask, pooling), hf_pooled.pool(hidden, mask, pooling, None))


def test_shipped_modeling_file_imports_no_adaptflow():
    tree = ast.parse(open(hf_pooled.__file__).read())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not any(name.startswith("adaptflow") for name in imported)
