"""Forgetting score: 0 for an unchanged model, larger the more the weights moved."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from adaptflow.tasks.base_model import inspect_model
from adaptflow.tasks.evaluation.forgetting import forgetting_score
from adaptflow.tasks.evaluation.lm import reference_texts
from adaptflow.tasks.modeling import build_classifier, load_backbone, save_classifier

TEXTS = reference_texts()[:24]  # enough to average over, quick on a tiny model


def _perturbed(model_dir, scale: float):
    backbone = load_backbone(model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.startswith(("encoder.layer", "h.")):  # the transformer layers of BERT / GPT-2
                p.add_(scale * torch.randn(p.shape, generator=generator))
    return backbone


def test_reference_set_is_general_text():
    sentences = reference_texts()
    assert len(sentences) >= 100 and len(set(sentences)) == len(sentences)
    assert not any(s.startswith("#") for s in sentences)


def test_unchanged_encoder_saved_as_a_transfer_learning_model_scores_zero(tiny_bert_dir, tmp_path):
    info = inspect_model(tiny_bert_dir)
    model = build_classifier(info, "mean", num_labels=2)
    folder = save_classifier(
        model,
        tmp_path / "model",
        AutoTokenizer.from_pretrained(tiny_bert_dir),
        {"strategy": "transfer_learning", "label_names": ["a", "b"], "base_model": str(tiny_bert_dir)},
    )
    assert abs(forgetting_score(tiny_bert_dir, folder, texts=TEXTS)) < 1e-6


def test_encoder_drift_grows_with_the_change(tiny_bert_dir):
    small = forgetting_score(tiny_bert_dir, _perturbed(tiny_bert_dir, 0.01), "encoder", texts=TEXTS)
    large = forgetting_score(tiny_bert_dir, _perturbed(tiny_bert_dir, 0.2), "encoder", texts=TEXTS)
    assert 1e-6 < small < large <= 2.0


def test_decoder_perplexity_ratio(tiny_gpt2_dir):
    assert abs(forgetting_score(tiny_gpt2_dir, load_backbone(tiny_gpt2_dir), texts=TEXTS)) < 1e-6  # 'auto' picks decoder
    changed = forgetting_score(tiny_gpt2_dir, _perturbed(tiny_gpt2_dir, 0.5), "decoder", texts=TEXTS)
    assert abs(changed) > 1e-3
