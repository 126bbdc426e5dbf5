"""A Hugging Face sequence classifier that pools the way AdaptFlow trained it.

Rules of this file:

- It is shipped inside registered model folders as ``modeling_adaptflow.py`` and loaded by
  ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``;
  so it imports only ``torch`` and ``transformers``, never AdaptFlow.
- Its ``model_type`` (``adaptflow_pooled``) is unknown to ``transformers``: loading the
  folder without ``trust_remote_code=True`` fails with an error instead of silently
  building a standard head (which would pool differently and predict wrongly).
- The weights are the backbone's under ``backbone.`` and the head's under ``classifier.``;
  eval-mode logits equal AdaptFlow's ``AdaptClassifier``: pooled vector -> dropout -> linear.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls", "last", "pooler")


class AdaptFlowPooledConfig(PretrainedConfig):
    """The backbone's own config (``backbone``, a dict with its ``model_type``) plus the pooling rule."""

    model_type = "adaptflow_pooled"

    def __init__(self, backbone: dict | None = None, pooling: str = "mean", classifier_dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.backbone = dict(backbone or {})
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout

    def backbone_config(self) -> PretrainedConfig:
        fields = dict(self.backbone)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, pooler_output: torch.Tensor | None) -> torch.Tensor:
    """One vector per sequence from token states ``hidden`` [batch, seq, dim] (right padding)."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = attention_mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last.clamp(min=0)]
    if pooling == "pooler" and pooler_output is not None:
        return pooler_output
    raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS} or the backbone has no pooler")


class AdaptFlowPooledForSequenceClassification(PreTrainedModel):
    """Backbone -> pooling (``config.pooling``) -> dropout -> linear ``classifier``."""

    config_class = AdaptFlowPooledConfig
    base_model_prefix = "backbone"

    def __init__(self, config: AdaptFlowPooledConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config())
        hidden = self.backbone.config.get_text_config().hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.backbone(**inputs)
        pooled = pool(out.last_hidden_state, attention_mask, self.config.pooling, getattr(out, "pooler_output", None))
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
