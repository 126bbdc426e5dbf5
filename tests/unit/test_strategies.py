"""Strategies decide which parameters train; the classifier pools and classifies."""

from __future__ import annotations

import pytest
import torch

from adaptflow.tasks.base_model import inspect_model
from adaptflow.tasks.config import load_config
from adaptflow.tasks.modeling import build_classifier, count_parameters, pool
from adaptflow.tasks.strategies import check_against_model, get_strategy


def _model(tiny_bert_dir, strategy: dict):
    cfg = load_config({"strategy": strategy})
    info = inspect_model(tiny_bert_dir)
    model = build_classifier(info, cfg.strategy.pooling, num_labels=3)
    return get_strategy(cfg.strategy.name).configure_classifier(model, cfg), cfg


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_transfer_learning_trains_only_the_head(tiny_bert_dir):
    model, _ = _model(tiny_bert_dir, {"name": "transfer_learning"})
    assert _trainable(model) == {"head.linear.weight", "head.linear.bias"}
    assert get_strategy("transfer_learning").uses_cached_features


def test_partial_fine_tuning_trains_last_layers_and_head(tiny_bert_dir):
    model, _ = _model(tiny_bert_dir, {"name": "partial_fine_tuning", "last_n_layers": 1})
    names = _trainable(model)
    assert any(n.startswith("backbone.encoder.layer.1.") for n in names)
    assert not any(n.startswith("backbone.encoder.layer.0.") for n in names)
    assert not any("embeddings" in n for n in names)
    assert "head.linear.weight" in names


def test_full_fine_tuning_trains_everything_the_forward_pass_uses(tiny_bert_dir):
    model, _ = _model(tiny_bert_dir, {"name": "full_fine_tuning"})
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.pooler.dense.weight", "backbone.pooler.dense.bias"}  # unused with mean pooling
    model, _ = _model(tiny_bert_dir, {"name": "full_fine_tuning", "pooling": "pooler"})
    trainable, total = count_parameters(model)
    assert trainable == total


def test_lora_trains_adapters_and_head_only(tiny_bert_dir):
    model, _ = _model(tiny_bert_dir, {"name": "lora", "lora_r": 2})
    names = _trainable(model)
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert not any("pooler" in n for n in names)  # unused with mean pooling: no adapter there
    assert "head.linear.weight" in names
    trainable, total = count_parameters(model)
    assert trainable < 0.2 * total


def test_settings_that_do_not_fit_the_model_are_reported(tiny_bert_dir):
    cfg = load_config({"strategy": {"name": "partial_fine_tuning", "last_n_layers": 5, "pooling": "last"}})
    problems = check_against_model(cfg, inspect_model(tiny_bert_dir))
    text = " ".join(p.render() for p in problems)
    assert "strategy.last_n_layers" in text and "only 2 layers" in text
    assert "strategy.pooling" in text


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(pool(hidden, mask, "last"), torch.tensor([[3.0, 4.0]]))


def test_auto_pooling_follows_the_checkpoint(minilm_dir, tiny_bert_dir, tiny_gpt2_dir):
    assert inspect_model(minilm_dir).default_pooling == "mean"  # sentence-transformers config says so
    assert inspect_model(tiny_bert_dir).default_pooling == "mean"
    gpt2 = inspect_model(tiny_gpt2_dir)
    assert gpt2.is_decoder and gpt2.default_pooling == "last"


@pytest.mark.parametrize("strategy", ["partial_fine_tuning", "lora"])
def test_decoder_backbones_work_too(tiny_gpt2_dir, strategy):
    cfg = load_config({"strategy": {"name": strategy, "last_n_layers": 1} if strategy == "partial_fine_tuning" else {"name": strategy}})
    model = get_strategy(strategy).configure_classifier(build_classifier(inspect_model(tiny_gpt2_dir), "auto", 2), cfg)
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    loss, logits = model(input_ids=ids, attention_mask=(ids != 0).long(), labels=torch.tensor([0, 1]))
    loss.backward()
    assert logits.shape == (2, 2)
    assert any(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head"))
