"""Language-model flows end to end, with real Prefect, real S3 and real transformers/peft models:

- domain adaptation (masked LM on MiniLM) followed by a classification strategy, in one flow run;
- causal LM LoRA fine-tuning of a tiny decoder on prompt/response JSONL, registered, then
  `predict` generating from the registered version.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from adaptflow.flows.adapt import adapt
from adaptflow.flows.predict import predict
from adaptflow.tasks.config import load_config
from adaptflow.tasks.registry.store import pull_version
from tests.integration.conftest import write_reviews

TERMS = ["patient", "dose", "tablet", "symptom", "clinic", "diagnosis", "therapy", "infection", "insulin", "ward"]


def write_domain_text(path: Path, lines: int = 40) -> Path:
    path.write_text(
        "\n".join(f"The {TERMS[i % 10]} note {i} mentions the {TERMS[(3 * i) % 10]} and the {TERMS[(7 * i) % 10]}." for i in range(lines))
        + "\n"
    )
    return path


def write_sft(path: Path, rows: int = 24) -> Path:
    with path.open("w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"prompt": f"Which word goes with {i}?", "response": f"{TERMS[i % 10]} {i}"}) + "\n")
    return path


def test_domain_adaptation_then_classification_on_minilm(prefect_api, minilm_dir, tmp_path):
    cfg = load_config(
        {
            "model": str(minilm_dir),
            "strategy": {
                "name": "domain_adaptation",
                "domain_max_steps": 2,
                "then": "transfer_learning",
                "task_data": str(write_reviews(tmp_path / "reviews.csv", rows=80)),
            },
            "data": {"data": str(write_domain_text(tmp_path / "notes.txt")), "max_length": 32},
            "training": {"batch_size": 8, "log_every": 1},
            "registry": {"register_model": False},
            "work_dir": str(tmp_path / "work"),
        }
    )
    summary = adapt(config=cfg)

    domain = summary["domain"]
    assert domain["objective"] == "mlm" and domain["strategy"] == "domain_adaptation"
    for key in ("eval_mlm_loss", "eval_mlm_loss_before", "reference_mlm_loss", "reference_mlm_loss_before", "forgetting"):
        assert math.isfinite(domain["metrics"][key]), key
    adapted = Path(domain["model_dir"])
    assert (adapted / "model.safetensors").is_file() and (adapted / "1_Pooling" / "config.json").is_file()
    domain_metrics = json.loads((Path(domain["run_dir"]) / "metrics.json").read_text())
    assert domain_metrics["steps"] == 2 and len(domain_metrics["history"]) == 2

    # the task run trained on the adapted model, in the same flow run
    assert summary["strategy"] == "transfer_learning" and 0 <= summary["accuracy"] <= 1
    task_config = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert task_config["model"] == str(adapted)
    assert task_config["data"]["data"] == cfg.strategy.task_data


def test_causal_lora_sft_registers_and_generates(prefect_api, s3_env, tiny_gpt2_dir, tmp_path):
    cfg = load_config(
        {
            "model": str(tiny_gpt2_dir),
            "task": "causal_lm",
            "strategy": {"name": "lora", "lora_r": 4},
            "data": {"data": str(write_sft(tmp_path / "sft.jsonl")), "max_length": 48},
            "training": {"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "log_every": 1},
            "lm": {"packing": True, "generation_samples": 2, "generation_max_new_tokens": 4},
            "registry": {"model_name": "sft-tiny"},
            "work_dir": str(tmp_path / "work"),
        }
    )
    summary = adapt(config=cfg)

    assert summary["objective"] == "sft" and summary["version"] == 1
    m = summary["metrics"]
    for key in (
        "eval_perplexity",
        "eval_perplexity_before",
        "reference_perplexity",
        "reference_perplexity_before",
        "exact_match",
        "rouge_l",
    ):
        assert math.isfinite(m[key]), key
    assert len(json.loads((Path(summary["run_dir"]) / "generations.json").read_text())) == 2

    folder = pull_version(s3_env, "sft-tiny", 1)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["task"] == "causal_lm" and manifest["base_model"]["ref"] == str(tiny_gpt2_dir)
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adaptflow" / "model.json").is_file()
    assert not (folder / "model.safetensors").exists()  # the base is recorded, not copied
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_gpt2_dir)
    # Plain peft + transformers load it (no AdaptFlow in that interpreter), and the prompt format is the chat template.
    plain = (
        "import sys, json; from peft import AutoPeftModelForCausalLM; from transformers import AutoTokenizer, pipeline\n"
        "model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert tokenizer.chat_template\n"
        "out = pipeline('text-generation', model=model, tokenizer=tokenizer)([{'role': 'user', 'content': 'hi'}], max_new_tokens=2)\n"
        "print(json.dumps({'ok': bool(out), 'adaptflow': any(m.startswith('adaptflow') for m in sys.modules)}))"
    )
    done = subprocess.run([sys.executable, "-c", plain, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ok": True, "adaptflow": False}

    prompts = tmp_path / "prompts.jsonl"
    pd.DataFrame({"id": [1, 2, 3], "prompt": ["Which word goes with 3?", "Which word goes with 5?", "hello"]}).to_json(
        prompts, orient="records", lines=True
    )
    out = tmp_path / "answers.jsonl"
    result = predict(model="sft-tiny", data=str(prompts), output=str(out), max_new_tokens=3, do_sample=True, temperature=0.8, seed=1)
    assert result["rows"] == 3 and result["task"] == "causal_lm"
    written = pd.read_json(out, lines=True, dtype=False)
    assert list(written["id"]) == [1, 2, 3] and written["generated"].map(lambda s: isinstance(s, str)).all()
    again = tmp_path / "again.jsonl"
    predict(model="sft-tiny:1", data=str(prompts), output=str(again), max_new_tokens=3, do_sample=True, temperature=0.8, seed=1)
    assert list(pd.read_json(again, lines=True, dtype=False)["generated"]) == list(
        written["generated"]
    )  # the seed makes sampling repeatable
