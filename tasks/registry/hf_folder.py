"""Registered classification versions as standard Hugging Face model folders (folder layout 2).

Rules of this module, the one place that writes and reads this layout:

- The root of a version is what Hugging Face tools read: ``config.json`` (the Hugging Face
  config: ``model_type``, ``id2label`` / ``label2id``, ``problem_type``, ``architectures``),
  the weights in safetensors, the tokenizer files and ``README.md``. AdaptFlow's own files
  live under ``adaptflow/`` (``model.json``: strategy, pooling, labels, route; the run
  config, metrics, evaluation, data manifest, plots), so no name collides.
- The route depends on the pooling AdaptFlow trained with (:func:`route_for`), and never
  gives a folder that loads without error but predicts differently:

  ``transformers``   pooler pooling on a model type whose standard ``...ForSequenceClassification``
                     is pooler output -> dropout -> linear (:data:`STANDARD_POOLER_HEADS`).
  ``remote_code``    any other pooling: ``model_type: adaptflow_pooled`` and ``modeling_adaptflow.py``
                     (tasks/hf_pooled.py) registered in ``auto_map``. Loads with
                     ``trust_remote_code=True``; without it ``transformers`` refuses the unknown type.
  ``peft``           LoRA on a standard pooler head: a PEFT ``SEQ_CLS`` adapter at the root, the
                     head trained as ``modules_to_save`` (``classifier``).
  ``peft_backbone``  LoRA with any other pooling: no PEFT task type reproduces it, so the root holds
                     the backbone's adapter (``FEATURE_EXTRACTION``, loads on ``AutoModel``) and the
                     head stays in ``adaptflow/head.safetensors``; ``AutoPeftModelForSequenceClassification``
                     refuses the task type. ``adaptflow models export NAME:V --merge`` gives a full
                     ``remote_code`` folder.
- LoRA adapters name their base by the reference the run was given (hub id, ``s3://`` URI or
  folder), never the local path it resolved to; the manifest keeps its sha256.
- Folders of layout 1 (``adaptflow_model.json`` at the root) are read by
  :func:`adaptflow.tasks.modeling.load_classifier`, as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from adaptflow.tasks import hf_pooled
from adaptflow.tasks.base_model import HEAD_FILE, META_FILE
from adaptflow.tasks.data.lm import PLAIN_CHAT_TEMPLATE
from adaptflow.tasks.errors import ModelError, Problem
from adaptflow.tasks.modeling import AdaptClassifier, head_dropout, load_backbone
from adaptflow.tasks.registry.store import hash_file

FOLDER_LAYOUT = 2
ADAPTFLOW_DIR = "adaptflow"
MODEL_META = f"{ADAPTFLOW_DIR}/model.json"
MODELING_FILE = "modeling_adaptflow.py"
HEAD_WEIGHTS = f"{ADAPTFLOW_DIR}/head.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
BACKBONE_SHARD = "model-00001-of-00002.safetensors"
HEAD_SHARD = "model-00002-of-00002.safetensors"
"""Full classifiers are saved as two shards, the backbone's and the head's, so a frozen backbone
(transfer learning) is byte-identical across versions and the registry stores it once."""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_KEY = "classifier"
PEFT_PREFIX = "base_model.model."
POOLED_PREFIX = hf_pooled.AdaptFlowPooledForSequenceClassification.base_model_prefix
STANDARD_POOLER_HEADS = {"bert": ("BertForSequenceClassification", "bert")}
"""model_type -> (its ...ForSequenceClassification, its backbone attribute), for the types whose
standard head is exactly pooler output -> dropout -> linear, as AdaptFlow's 'pooler' pooling."""
SAVED_ADAPTER_DIR = "adapter"
"""Where saved models (both kinds) and layout-1 versions keep a LoRA adapter."""
ROUTES = ("transformers", "remote_code", "peft", "peft_backbone")


def route_for(model_type: str, pooling: str, adapter: bool) -> str:
    """How a classifier with this backbone type and pooling is written (module docstring)."""
    standard = pooling == "pooler" and model_type in STANDARD_POOLER_HEADS
    if adapter:
        return "peft" if standard else "peft_backbone"
    return "transformers" if standard else "remote_code"


def is_hf_folder(folder: Path) -> bool:
    return (folder / MODEL_META).is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    """AdaptFlow's description of a version's model, either layout."""
    for path in (folder / MODEL_META, folder / META_FILE):
        if path.is_file():
            return json.loads(path.read_text())
    raise ModelError(Problem(str(folder), f"holds neither {MODEL_META} nor {META_FILE}; it is not an AdaptFlow classifier"))


def label_fields(label_names: list[str]) -> dict[str, Any]:
    return {
        "id2label": {str(i): name for i, name in enumerate(label_names)},
        "label2id": {name: i for i, name in enumerate(label_names)},
        "problem_type": "single_label_classification",
    }


def plain_head(head_state: dict) -> dict:
    """A head's tensors under the Linear's own keys (``weight``, ``bias``): a saved head has them under ``linear.``."""
    return {k.removeprefix("linear."): v for k, v in head_state.items()}


# ---- writing -------------------------------------------------------------------------


def write_full_classifier(
    out: Path, backbone_config: dict[str, Any], backbone_state: dict, head_state: dict, pooling: str, label_names: list[str]
) -> str:
    """``config.json`` + ``model.safetensors`` (+ the modeling file) of a full classifier; returns the route."""
    from safetensors.torch import save_file  # imported where weights are written or read

    backbone_config = {k: v for k, v in backbone_config.items() if k not in ("architectures", "auto_map", "_name_or_path")}
    head_state = plain_head(head_state)
    model_type = backbone_config["model_type"]
    route = route_for(model_type, pooling, adapter=False)
    dropout = head_dropout(SimpleNamespace(**backbone_config))  # the same head dropout as AdaptFlow's, for training mode too
    if route == "transformers":
        architecture, prefix = STANDARD_POOLER_HEADS[model_type]
        expected = (len(label_names), backbone_config["hidden_size"])
        if tuple(head_state["weight"].shape) != expected:  # the standard head is Linear(hidden_size, num_labels)
            raise ModelError(
                Problem("head", f"has shape {tuple(head_state['weight'].shape)}, {architecture} needs {expected}", "check the labels")
            )
        config = {**backbone_config, "architectures": [architecture], "classifier_dropout": dropout}
    else:
        prefix = POOLED_PREFIX
        config = {
            "model_type": hf_pooled.AdaptFlowPooledConfig.model_type,
            "architectures": [hf_pooled.AdaptFlowPooledForSequenceClassification.__name__],
            "auto_map": {
                "AutoConfig": f"{Path(MODELING_FILE).stem}.{hf_pooled.AdaptFlowPooledConfig.__name__}",
                "AutoModelForSequenceClassification": f"{Path(MODELING_FILE).stem}.{hf_pooled.AdaptFlowPooledForSequenceClassification.__name__}",
            },
            "backbone": backbone_config,
            "pooling": pooling,
            "classifier_dropout": dropout,
        }
        shutil.copy(hf_pooled.__file__, out / MODELING_FILE)
    config.update(label_fields(label_names))
    shards = {
        BACKBONE_SHARD: {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in backbone_state.items()},
        HEAD_SHARD: {f"{HEAD_KEY}.{k}": v.detach().contiguous().cpu() for k, v in head_state.items()},
    }
    for shard, tensors in shards.items():
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for tensors in shards.values() for t in tensors.values())},
        "weight_map": {key: shard for shard, tensors in shards.items() for key in sorted(tensors)},
    }
    (out / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return route


def read_weights(folder: Path) -> dict:
    """Every tensor of a full classifier folder (the shards its index names)."""
    from safetensors.torch import load_file  # imported where weights are written or read

    index = json.loads((folder / WEIGHTS_INDEX).read_text())
    state: dict = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(folder / shard)))
    return state


def _write_adapter(out: Path, adapter_dir: Path, head_state: dict, model_type: str, pooling: str, base_ref: str) -> str:
    from safetensors.torch import load_file, save_file  # imported where weights are written or read

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    state = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    route = route_for(model_type, pooling, adapter=True)
    config["base_model_name_or_path"] = base_ref
    if route == "peft":
        prefix = STANDARD_POOLER_HEADS[model_type][1]
        state = {PEFT_PREFIX + f"{prefix}." + k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
        state.update({f"{PEFT_PREFIX}{HEAD_KEY}.{k}": v for k, v in head_state.items()})
        # The exact modules that carry LoRA weights: "all-linear" on the classification model would also match the head.
        targets = sorted({k.removeprefix(PEFT_PREFIX).split(".lora_")[0] for k in state if ".lora_" in k})
        config.update(task_type="SEQ_CLS", modules_to_save=[HEAD_KEY], target_modules=targets, exclude_modules=None)
    else:
        config["task_type"] = "FEATURE_EXTRACTION"
        save_file({k: v.contiguous() for k, v in head_state.items()}, str(out / HEAD_WEIGHTS))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return route


def write_classifier_folder(model_dir: Path, out: Path, base_ref: str, model_type: str | None = None) -> dict[str, Any]:
    """Turn a saved classifier (tasks/modeling.py's layout, in ``model_dir``) into a layout-2 folder ``out``.

    ``model_type`` is the base's, for adapters saved before the meta recorded it. Returns what
    the manifest records under ``hf``: ``route``, ``pooling`` and, on the remote-code route, the
    sha256 of the modeling file.
    """
    from safetensors.torch import load_file  # imported where weights are written or read
    from transformers import AutoTokenizer  # transformers loads in seconds: imported where a model is read

    meta = json.loads((model_dir / META_FILE).read_text())
    (out / ADAPTFLOW_DIR).mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False).save_pretrained(out)
    head_state = plain_head(load_file(str(model_dir / HEAD_FILE)))
    if meta["weights"] == "adapter":
        route = _write_adapter(
            out, model_dir / SAVED_ADAPTER_DIR, head_state, meta.get("model_type", model_type), meta["pooling"], base_ref
        )
    else:
        backbone_dir = model_dir / "backbone"
        backbone_state: dict = {}
        for file in sorted(backbone_dir.glob("*.safetensors")):
            backbone_state.update(load_file(str(file)))
        backbone_config = json.loads((backbone_dir / "config.json").read_text())
        route = write_full_classifier(out, backbone_config, backbone_state, head_state, meta["pooling"], meta["label_names"])
    return finish_folder(out, meta, route, base_ref)


def finish_folder(out: Path, meta: dict[str, Any], route: str, base_ref: str) -> dict[str, Any]:
    """Write ``adaptflow/model.json``; returns the manifest's ``hf`` entry."""
    hf: dict[str, Any] = {"route": route, "pooling": meta["pooling"]}
    if (out / MODELING_FILE).is_file():
        hf["modeling_sha256"] = hash_file(out / MODELING_FILE)[1]
    full_meta = {**meta, "base_model": base_ref, "folder_layout": FOLDER_LAYOUT, "route": route}
    full_meta["weights"] = "adapter" if route.startswith("peft") else "full"
    (out / MODEL_META).write_text(json.dumps(full_meta, indent=2))
    return hf


def write_lm_folder(model_dir: Path, out: Path, base_ref: str, prompt_format: str | None) -> dict[str, Any]:
    """A language-model run's saved model (tasks/training/lm.py) as a layout-2 folder ``out``.

    Full weights stay at the root (``AutoModelForCausalLM`` / ``AutoModelForMaskedLM``); a LoRA
    adapter moves to the root naming its base by reference (``AutoPeftModelForCausalLM``). A
    run trained on the plain prompt format saves that format as the tokenizer's chat template,
    so ``pipeline("text-generation")`` with chat messages prompts the model as it was trained.
    """
    from transformers import AutoTokenizer  # transformers loads in seconds: imported where a model is read

    meta = json.loads((model_dir / META_FILE).read_text())
    (out / ADAPTFLOW_DIR).mkdir(parents=True, exist_ok=True)
    for entry in model_dir.iterdir():
        if entry.name in (META_FILE, SAVED_ADAPTER_DIR):
            continue
        shutil.copytree(entry, out / entry.name) if entry.is_dir() else shutil.copy(entry, out / entry.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if prompt_format == "plain" and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    adapter = model_dir / SAVED_ADAPTER_DIR
    if adapter.is_dir():
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copy(adapter / file, out / file)
        config = json.loads((out / ADAPTER_CONFIG).read_text())
        config["base_model_name_or_path"] = base_ref
        (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    route = "peft" if adapter.is_dir() else "transformers"
    (out / MODEL_META).write_text(json.dumps({**meta, "base_model": base_ref, "folder_layout": FOLDER_LAYOUT, "route": route}, indent=2))
    return {"route": route}


def adapter_folder(folder: Path) -> Path:
    """Where a version's PEFT adapter is: the root (layout 2) or ``adapter/`` (layout 1)."""
    return folder if is_hf_folder(folder) else folder / SAVED_ADAPTER_DIR


# ---- reading -------------------------------------------------------------------------


def load_hf_classifier(folder: Path, base_model_dir: Path | None = None):
    """Load a layout-2 folder as an :class:`AdaptClassifier`: returns (model, tokenizer, meta).

    Every weight must land (strict loading): a folder that would leave part of the model
    untrained fails here instead of predicting at random.
    """
    from transformers import AutoModel, AutoTokenizer  # transformers loads in seconds: imported where a model is read

    meta = read_meta(folder)
    route = meta["route"]
    if route in ("peft", "peft_backbone"):
        if base_model_dir is None:
            raise ModelError(
                Problem(str(folder), "is a LoRA adapter and needs its base model", f"pass the base model {meta.get('base_model')!r}")
            )
        backbone, head_state = _load_adapter(folder, route, load_backbone(base_model_dir))
    else:
        config = json.loads((folder / "config.json").read_text())
        if route == "remote_code":
            pooled = hf_pooled.AdaptFlowPooledConfig(backbone=config["backbone"], pooling=config["pooling"])
            backbone_config, prefix = pooled.backbone_config(), POOLED_PREFIX
        else:
            backbone_config, prefix = _backbone_config(config), STANDARD_POOLER_HEADS[config["model_type"]][1]
        state = read_weights(folder)
        backbone = AutoModel.from_config(backbone_config)
        backbone.load_state_dict({k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}, strict=True)
        head_state = {k.removeprefix(f"{HEAD_KEY}."): v for k, v in state.items() if k.startswith(f"{HEAD_KEY}.")}
    weight = head_state["weight"]
    model = AdaptClassifier(backbone, meta["pooling"], weight.shape[0], weight.shape[1])
    model.head.linear.load_state_dict(head_state, strict=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=False), meta


def _backbone_config(config: dict[str, Any]):
    from transformers import AutoConfig  # see above

    fields = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "transformers_version")}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _load_adapter(folder: Path, route: str, backbone):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict  # peft loads slowly: LoRA versions only
    from safetensors.torch import load_file  # imported where weights are written or read

    config = LoraConfig.from_pretrained(str(folder))
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    if route == "peft":
        prefix = STANDARD_POOLER_HEADS[backbone.config.model_type][1] + "."
        head_state = {k.removeprefix(f"{PEFT_PREFIX}{HEAD_KEY}."): v for k, v in state.items() if k.startswith(f"{PEFT_PREFIX}{HEAD_KEY}.")}
        state = {PEFT_PREFIX + k.removeprefix(PEFT_PREFIX).removeprefix(prefix): v for k, v in state.items() if ".lora_" in k}
        config.target_modules = sorted({t.removeprefix(prefix) for t in config.target_modules})
    else:
        head_state = load_file(str(folder / HEAD_WEIGHTS))
    config.task_type, config.modules_to_save, config.inference_mode = None, None, True
    model = get_peft_model(backbone, config)
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise ModelError(
            Problem(
                str(folder / ADAPTER_WEIGHTS),
                f"does not fit its base model ({len(missing)} missing, {len(result.unexpected_keys)} unexpected weights)",
            )
        )
    return model, head_state
