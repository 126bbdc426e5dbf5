"""Registered versions load with plain Hugging Face tools, with no AdaptFlow (issue 13).

Each version is built by the production path (``build_version_folder`` on a run folder
holding a saved tiny classifier with random head and LoRA weights, so every weight
matters), registered on the real SeaweedFS server and pulled. A fresh interpreter running
tests/hf_plain_load.py (which never imports AdaptFlow) loads it with ``transformers`` /
``peft``; its pipeline scores must equal ``adaptflow predict``'s probabilities on the same rows.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from adaptflow.flows.cli.app import app
from adaptflow.tasks.errors import ModelError
from adaptflow.tasks.inference.export import export_version
from adaptflow.tasks.inference.predict import load_version, predict_file
from adaptflow.tasks.registry.hf_folder import MODELING_FILE
from adaptflow.tasks.registry.store import pull_version
from adaptflow.tasks.storage.s3 import S3Settings
from tests.integration.versions import register_head, register_like_a_run

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["the film was wonderful", "an awful, tedious meal that went on and on", "it is a phone"]
LOADER = Path(__file__).resolve().parents[1] / "hf_plain_load.py"


def randomize(model) -> None:
    """A random head and random LoRA updates, so every exported weight changes the predictions."""
    torch.manual_seed(7)
    torch.nn.init.normal_(model.head.linear.weight, std=0.5)
    for name, param in model.backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)


def register(settings: S3Settings, base: Path, tmp: Path, name: str, pooling: str, lora: bool = False) -> tuple[Path, dict]:
    """Register through the production folder builder; returns the pulled folder and its manifest."""
    version, manifest = register_like_a_run(settings, base, tmp, name, "lora" if lora else "full_fine_tuning", pooling, LABELS, randomize)
    return pull_version(settings, name, version.version, tmp / f"{name}-pulled"), manifest


def plain_load(folder: Path, *args: str) -> dict:
    """tests/hf_plain_load.py in a fresh interpreter; its JSON result."""
    done = subprocess.run(
        [sys.executable, str(LOADER), str(folder), "--texts", json.dumps(TEXTS), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["adaptflow_imported"] is False
    return result


def adaptflow_probabilities(settings: S3Settings, ref: str, tmp: Path) -> list[dict[str, float]]:
    """``adaptflow predict`` on TEXTS: probability per label per row."""
    data = tmp / "texts.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(data, index=False)
    predict_file(settings, ref, str(data), tmp / "predictions.csv")
    frame = pd.read_csv(tmp / "predictions.csv")
    return [{label: row[f"prob_{label}"] for label in LABELS} for _, row in frame.iterrows()]


def assert_same(plain: list[dict[str, float]], ours: list[dict[str, float]], tol: float = 1e-5) -> None:
    for mine, theirs in zip(plain, ours, strict=True):
        assert set(mine) == set(LABELS)
        for label in LABELS:
            assert abs(mine[label] - theirs[label]) < tol, (label, mine, theirs)


@pytest.mark.parametrize(
    "kind, pooling, route, architecture",
    [
        ("bert", "pooler", "transformers", "BertForSequenceClassification"),
        ("bert", "mean", "remote_code", "AdaptFlowPooledForSequenceClassification"),
        ("bert", "cls", "remote_code", "AdaptFlowPooledForSequenceClassification"),
        ("gpt2", "last", "remote_code", "AdaptFlowPooledForSequenceClassification"),
    ],
)
def test_full_version_is_a_transformers_folder(s3_env, tiny_bert_dir, tiny_gpt2_dir, tmp_path, kind, pooling, route, architecture):
    base = tiny_bert_dir if kind == "bert" else tiny_gpt2_dir
    folder, manifest = register(s3_env, base, tmp_path, f"hf-{kind}-{pooling}", pooling)

    assert manifest["folder_layout"] == 2 and manifest["hf"]["route"] == route
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [architecture] and config["problem_type"] == "single_label_classification"
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert {"model.safetensors.index.json", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    assert {"model.json", "config.json", "metrics.json", "evaluation.json", "data_manifest.json"} <= {
        p.name for p in (folder / "adaptflow").iterdir()
    }
    assert (folder / "adaptflow" / "plots" / "loss_curves.png").is_file()
    if route == "remote_code":
        assert manifest["hf"]["modeling_sha256"] == hashlib.sha256((folder / MODELING_FILE).read_bytes()).hexdigest()
        assert not re.search(r"^\s*(from|import)\s+adaptflow", (folder / MODELING_FILE).read_text(), flags=re.M)

    plain = plain_load(folder, *(["--trust-remote-code"] if route == "remote_code" else []))
    assert plain["class"] == architecture
    assert_same(plain["scores"], adaptflow_probabilities(s3_env, f"hf-{kind}-{pooling}", tmp_path))


def test_remote_code_route_refuses_to_load_without_trust(s3_env, tiny_bert_dir, tmp_path):
    """Never a model that loads without error but predicts differently: no silent standard head."""
    folder, _ = register(s3_env, tiny_bert_dir, tmp_path, "hf-untrusted", "mean")
    code = "import sys; from transformers import AutoModelForSequenceClassification as A; A.from_pretrained(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "trust_remote_code=True" in done.stderr


def test_lora_pooler_version_is_a_peft_seq_cls_adapter(s3_env, tiny_bert_dir, tmp_path):
    folder, manifest = register(s3_env, tiny_bert_dir, tmp_path, "hf-lora-pooler", "pooler", lora=True)

    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert manifest["hf"]["route"] == "peft" and adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"] == ["classifier"]
    assert adapter["base_model_name_or_path"] == str(tiny_bert_dir)  # the reference the run was given
    assert not list(folder.glob("model*.safetensors")) and not (folder / "adapter" / "README.md").exists()
    plain = plain_load(folder, "--peft", "--labels", json.dumps(LABELS))  # AutoPeftModelForSequenceClassification
    assert plain["class"] == "PeftModelForSequenceClassification"
    ours = adaptflow_probabilities(s3_env, "hf-lora-pooler", tmp_path)
    assert_same(plain["scores"], ours)

    merged = export_version(s3_env, "hf-lora-pooler", tmp_path / "merged", merge=True)
    assert merged.route == "transformers"
    merged_plain = plain_load(merged.output)
    assert_same(merged_plain["scores"], ours)
    assert torch.allclose(torch.tensor(merged_plain["logits"]), torch.tensor(plain["logits"]), atol=1e-4)


def test_lora_mean_version_routes_to_merged_export(s3_env, tiny_bert_dir, tmp_path):
    folder, manifest = register(s3_env, tiny_bert_dir, tmp_path, "hf-lora-mean", "mean", lora=True)

    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert manifest["hf"]["route"] == "peft_backbone" and adapter["task_type"] == "FEATURE_EXTRACTION"
    # A standard PEFT classifier would pool differently: peft refuses this adapter instead of loading it wrongly.
    done = subprocess.run(
        [sys.executable, str(LOADER), str(folder), "--texts", json.dumps(TEXTS), "--peft", "--labels", json.dumps(LABELS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "Expected target PEFT class" in done.stderr
    assert "models export" in (folder / "README.md").read_text()

    loaded = load_version(s3_env, "hf-lora-mean", 1)
    batch = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        adapter_logits = loaded.model(**batch)[1]
    merged = export_version(s3_env, "hf-lora-mean", tmp_path / "merged", merge=True)
    assert merged.route == "remote_code"
    plain = plain_load(merged.output, "--trust-remote-code")
    assert torch.allclose(torch.tensor(plain["logits"]), adapter_logits, atol=1e-4)
    assert_same(plain["scores"], adaptflow_probabilities(s3_env, "hf-lora-mean", tmp_path))


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


@pytest.mark.parametrize("pooling, lora, library", [("mean", False, "transformers"), ("pooler", True, "peft")])
def test_card_metadata_parses_and_its_snippet_runs(s3_env, tiny_bert_dir, tmp_path, pooling, lora, library):
    from huggingface_hub import ModelCard

    folder, _ = register(s3_env, tiny_bert_dir, tmp_path, f"hf-card-{pooling}", pooling, lora=lora)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == library and data["pipeline_tag"] == "text-classification"
    assert data["base_model"] == str(tiny_bert_dir)
    result = data["model-index"][0]["results"][0]
    assert result["dataset"]["name"] == "reviews" and result["dataset"]["revision"] == "reviews-0123456789ab"
    assert "sample://" not in yaml.safe_dump(data)
    text = (folder / "README.md").read_text()
    assert "Overfitting: no." not in text and "backbone/" not in text
    transformers_snippet, adaptflow_snippet = python_blocks(text)
    assert "adaptflow" not in transformers_snippet  # the plain loading of each route runs without AdaptFlow above
    # One interpreter for both (each prints every label's score), to keep the file fast.
    both = f"{transformers_snippet}\nprint('=== adaptflow ===')\n{adaptflow_snippet}"
    done = subprocess.run([sys.executable, "-c", both], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for printed in done.stdout.split("=== adaptflow ==="):
        assert all(label in printed for label in LABELS)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_old_layout_version_still_predicts_and_exports(s3_env, tiny_bert_dir, tmp_path, lora):
    """A version registered before folder layout 2 (adaptflow_model.json, backbone/ or adapter/, head at the root)."""
    weight, bias = torch.randn(2, 32), torch.randn(2)
    version = register_head(s3_env, "hf-old", tiny_bert_dir, tmp_path, weight, bias, lora=lora)
    old = pull_version(s3_env, "hf-old", version)
    assert (old / "adaptflow_model.json").is_file() and (old / ("adapter" if lora else "backbone")).is_dir()
    loaded = load_version(s3_env, "hf-old", version)
    batch = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        old_logits = loaded.model(**batch)[1]

    exported = export_version(s3_env, "hf-old", tmp_path / "exported")
    assert (exported.output / "adaptflow" / "model.json").is_file() and (exported.output / "adaptflow" / "manifest.json").is_file()
    if lora:  # mean pooling: the encoder's adapter at the root, then the merged full model for plain loading
        adapter = json.loads((exported.output / "adapter_config.json").read_text())
        assert exported.route == "peft_backbone" and adapter["base_model_name_or_path"] == str(tiny_bert_dir)
        exported = export_version(s3_env, "hf-old", tmp_path / "merged", merge=True)
    assert exported.route == "remote_code"
    plain = plain_load(exported.output, "--trust-remote-code")
    assert torch.allclose(torch.tensor(plain["logits"]), old_logits, atol=1e-4 if lora else 1e-5)


def test_export_errors_are_one_line(s3_env, tiny_bert_dir, tmp_path, monkeypatch):
    register(s3_env, tiny_bert_dir, tmp_path, "hf-errors", "pooler")
    with pytest.raises(ModelError, match="no adapter to merge"):
        export_version(s3_env, "hf-errors", tmp_path / "x", merge=True)

    # The hub is unreachable here: the export is written, the upload fails with one line, no traceback.
    for name, value in {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        app, ["models", "export", "hf-errors", "--output", str(tmp_path / "out"), "--to-hub", "me/x"], env={"COLUMNS": "200"}
    )
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "--to-hub me/x" in result.output and "upload failed" in result.output
    assert (tmp_path / "out" / "config.json").is_file()


def test_frozen_backbone_is_stored_once(s3_env, tiny_bert_dir, tmp_path):
    """Backbone and head are separate shards: two transfer-learning versions share the backbone's blob."""
    versions = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        version, _ = register_like_a_run(
            s3_env,
            tiny_bert_dir,
            tmp_path,
            "hf-frozen",
            "transfer_learning",
            "mean",
            LABELS,
            lambda m: torch.nn.init.normal_(m.head.linear.weight),
        )
        versions.append(version)
    shards = [{f["path"]: f["sha256"] for f in v.files} for v in versions]
    assert shards[0]["model-00001-of-00002.safetensors"] == shards[1]["model-00001-of-00002.safetensors"]
    assert shards[0]["model-00002-of-00002.safetensors"] != shards[1]["model-00002-of-00002.safetensors"]
    assert versions[1].uploaded_bytes < versions[0].uploaded_bytes / 10


def test_full_causal_lm_version_loads_with_transformers_text_generation(tiny_gpt2_dir, tmp_path):
    """A full-weights decoder saved as the LM worker saves it, written as a version folder: AutoModelForCausalLM
    and pipeline("text-generation") load it, and chat messages use the plain prompt format it was trained on."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from adaptflow.tasks.data.lm import PLAIN_PROMPT
    from adaptflow.tasks.registry.hf_folder import write_lm_folder
    from adaptflow.tasks.training.lm import save_lm

    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)
    save_lm(model, AutoTokenizer.from_pretrained(tiny_gpt2_dir), tmp_path / "model", tiny_gpt2_dir, {"kind": "causal_lm"})
    hf = write_lm_folder(tmp_path / "model", tmp_path / "version", str(tiny_gpt2_dir), "plain")
    assert hf == {"route": "transformers"} and (tmp_path / "version" / "adaptflow" / "model.json").is_file()
    code = (
        "import sys, json; from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1]); tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "prompt = tokenizer.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False, add_generation_prompt=True)\n"
        "out = pipeline('text-generation', model=model, tokenizer=tokenizer)('hello', max_new_tokens=2)\n"
        "print(json.dumps({'class': type(model).__name__, 'prompt': prompt, 'generated': bool(out),"
        " 'adaptflow': any(m.startswith('adaptflow') for m in sys.modules)}))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "version")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"class": "GPT2LMHeadModel", "prompt": PLAIN_PROMPT.format(prompt="hi"), "generated": True, "adaptflow": False}
