"""The classifier built on a base model (where base models come from and what they are:
:mod:`adaptflow.tasks.base_model`, which needs no torch).

Weights are only ever read from ``safetensors`` files (never pickles), and checkpoint
code only runs when the user sets ``trust_remote_code``.

Every classification strategy trains the same :class:`AdaptClassifier`: a
``transformers`` backbone, a pooling rule and a linear head. It is saved as

    model/
      adaptflow_model.json   what this is: strategy, pooling, labels, base model
      head.safetensors       the task head
      backbone/              the backbone in Hugging Face layout (AutoModel.from_pretrained)
      adapter/               for LoRA instead of backbone/: the PEFT adapter only
      tokenizer files
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from adaptflow.tasks.base_model import HEAD_FILE, META_FILE, MODEL_FORMAT, ModelInfo
from adaptflow.tasks.errors import ModelError, Problem

# ---- the classifier ------------------------------------------------------------------


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, pooler_output: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sequence from token states ``hidden`` [batch, seq, dim]: the rule of tasks/hf_pooled.py,
    which registered versions ship as their modeling file, so training and export pool alike."""
    from adaptflow.tasks import hf_pooled  # imports transformers: loaded with the first model

    if pooling == "pooler" and pooler_output is None:
        raise ModelError(Problem("strategy.pooling", "'pooler' was chosen but this model has no pooler layer", "use 'mean' or 'cls'"))
    if pooling not in hf_pooled.POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}")
    return hf_pooled.pool(hidden, attention_mask, pooling, pooler_output)


class ClassifierHead(nn.Module):
    """Dropout + linear layer on a pooled vector; trained alone on cached features."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.linear(self.dropout(features))
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return loss, logits


def head_dropout(config) -> float:
    """The head's dropout: the checkpoint's classifier dropout, else its hidden dropout, else 0.1."""
    for name in ("classifier_dropout", "hidden_dropout_prob", "resid_pdrop", "hidden_dropout"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.1


class AdaptClassifier(nn.Module):
    """A pre-trained backbone, a pooling rule and a task head."""

    def __init__(self, backbone: nn.Module, pooling: str, num_labels: int, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.head = ClassifierHead(hidden_size, num_labels, head_dropout(getattr(backbone, "config", None)))

    def unused_module_names(self) -> list[str]:
        """Backbone modules the forward pass does not use (the pooler, unless pooling='pooler').

        They must not train: DDP fails on parameters that get no gradient.
        """
        if self.pooling != "pooler" and isinstance(getattr(self.backbone, "pooler", None), nn.Module):
            return ["pooler"]
        return []

    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(**kwargs)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None):
        return self.head(self.encode(input_ids, attention_mask, token_type_ids), labels)


def load_language_model(path: Path | str, auto_class=None, **kwargs) -> nn.Module:
    """A language model (``AutoModelForCausalLM`` unless ``auto_class`` says otherwise) read from ``path``.

    A checkpoint saved without its LM head (a ``GPT2Model``, many hub decoders) relies on the
    config's ``tie_word_embeddings``: the head is the input embeddings. transformers makes that
    tie while loading, but in a long-lived process that had loaded other models it was seen
    leaving the head untied and uninitialised (nan perplexity, "Cannot copy out of meta
    tensor"). So the tie the config declares is checked here, and made where the checkpoint
    had no head of its own; a checkpoint with a head of its own is left as it is.
    """
    from transformers import AutoModelForCausalLM  # transformers loads in seconds: imported where a model is read

    model, info = (auto_class or AutoModelForCausalLM).from_pretrained(path, output_loading_info=True, **kwargs)
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if getattr(model.config, "tie_word_embeddings", False) and head is not None and embeddings is not None:
        head_names = {name for name, p in model.named_parameters(remove_duplicate=False) if p is head.weight}
        if head.weight is not embeddings.weight and head_names & set(info["missing_keys"]):
            head.weight = embeddings.weight
    return model


def load_backbone(path: Path, trust_remote_code: bool = False) -> nn.Module:
    from transformers import AutoModel  # transformers loads in seconds: imported where a model is read

    return AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code)


def build_classifier(info: ModelInfo, pooling: str, num_labels: int, trust_remote_code: bool = False) -> AdaptClassifier:
    backbone = load_backbone(info.path, trust_remote_code)
    if info.is_decoder and getattr(backbone.config, "pad_token_id", None) is None:
        backbone.config.pad_token_id = backbone.config.eos_token_id
    return AdaptClassifier(backbone, info.resolve_pooling(pooling), num_labels, info.hidden_size)


def save_classifier(model: AdaptClassifier, out_dir: Path, tokenizer, meta: dict, state_dict: dict | None = None) -> Path:
    """Write the layout described in the module docstring; PEFT backbones save the adapter only.

    ``state_dict`` is the whole classifier's weights when they were gathered from sharded
    training processes (FSDP, ZeRO-3); otherwise the model's own weights are saved.
    """
    from safetensors.torch import save_file  # imported where weights are written or read

    state_dict = state_dict if state_dict is not None else model.state_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model.backbone, "peft_config")
    backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    model.backbone.save_pretrained(out_dir / ("adapter" if is_peft else "backbone"), state_dict=backbone_state, safe_serialization=True)
    head_state = {k.removeprefix("head."): v.detach().contiguous().cpu() for k, v in state_dict.items() if k.startswith("head.")}
    save_file(head_state, str(out_dir / HEAD_FILE))
    tokenizer.save_pretrained(out_dir)
    full_meta = {
        "format": MODEL_FORMAT,
        "kind": "sequence_classification",
        "pooling": model.pooling,
        "model_type": model.backbone.config.model_type,
        "num_labels": model.head.linear.out_features,
        "hidden_size": model.head.linear.in_features,
        "weights": "adapter" if is_peft else "backbone",
        **meta,
    }
    (out_dir / META_FILE).write_text(json.dumps(full_meta, indent=2))
    return out_dir


def load_classifier(model_dir: Path, base_model_dir: Path | None = None, trust_remote_code: bool = False):
    """Load a saved classifier for inference: returns (model, tokenizer, meta).

    LoRA versions need the base model folder they were trained on (``base_model_dir``).
    """
    from safetensors.torch import load_file  # imported where weights are written or read
    from transformers import AutoTokenizer  # transformers loads in seconds: imported where a model is read

    meta_path = model_dir / META_FILE
    if not meta_path.is_file():
        raise ModelError(Problem(str(model_dir), f"has no {META_FILE}; not an AdaptFlow model", "pull a registered version"))
    meta = json.loads(meta_path.read_text())
    if meta["weights"] == "adapter":
        from peft import PeftModel  # peft loads slowly: imported for LoRA models only

        if base_model_dir is None:
            raise ModelError(
                Problem(str(model_dir), "is a LoRA adapter and needs its base model", f"pass the base model {meta.get('base_model')!r}")
            )
        backbone = PeftModel.from_pretrained(load_backbone(base_model_dir, trust_remote_code), model_dir / "adapter")
    else:
        backbone = load_backbone(model_dir / "backbone", trust_remote_code)
    model = AdaptClassifier(backbone, meta["pooling"], meta["num_labels"], meta["hidden_size"])
    model.head.load_state_dict(load_file(str(model_dir / HEAD_FILE)))
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir), meta


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return trainable, total


def cpu_threads_per_process(num_processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, num_processes))
