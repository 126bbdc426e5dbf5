"""bench/gpu_check.py, the GPU proof, rehearsed on CPU with tiny models: every row runs or says why not.

The rehearsal is one subprocess (``--device cpu --tiny``, about 40 s on 2 cores) whose JSON rows
the tests read; the checks that need CUDA by nature (QLoRA, DeepSpeed) must be "skip" with a
reason, every other row must really run and pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import accelerate_command

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
STRATEGIES = ("full_fine_tuning", "partial_fine_tuning", "lora", "transfer_learning")
TRAINING_ROWS = (
    *(f"engine: {s}" for s in STRATEGIES),
    "sft lora, checkpointing off",
    "sft lora, checkpointing on",
    "accelerate fsdp",
)
CUDA_ONLY_ROWS = ("sft qlora", "accelerate deepspeed_zero2", "accelerate deepspeed_zero3")
ALL_ROWS = (  # in the order they run: Trainer right after the engine on the same strategy
    "environment",
    "models",
    "warm-up",
    *(row for s in STRATEGIES for row in (f"engine: {s}", f"Trainer: {s}")),
    "sft lora, checkpointing off",
    "sft lora, checkpointing on",
    "sft qlora",
    "accelerate fsdp",
    "accelerate deepspeed_zero2",
    "accelerate deepspeed_zero3",
    "checkpoint resume",
    "estimate --gpu h100 vs measured",
)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("gpu-check")
    out = folder / "rows.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--work", str(folder / "work"), "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    result = json.loads(out.read_text())
    return {"result": result, "rows": {r["check"]: r for r in result["rows"]}, "stdout": done.stdout, "work": folder / "work"}


def test_every_row_is_there_and_none_fails(rehearsal):
    rows = rehearsal["rows"]
    assert list(rows) == list(ALL_ROWS)
    assert {name: r["status"] for name, r in rows.items() if r["status"] == "fail"} == {}
    for name in ALL_ROWS:  # the printed table holds every row too
        assert name in rehearsal["stdout"]


def test_training_rows_run_and_their_loss_falls(rehearsal):
    for name in TRAINING_ROWS:
        row = rehearsal["rows"][name]
        figures = row["figures"]
        assert row["status"] == "pass", (name, row["note"])
        assert figures["loss_falls"] is True and figures["loss_last"] < figures["loss_first"], name
        assert figures["samples_per_s"] > 0 and figures["tflops"] > 0, name
        assert figures["device"] == "cpu", name
        assert figures["peak_gpu_mb"] is None and figures["mfu"] is None, name  # no GPU, no peak to measure against


def test_trainer_rows_compare_with_the_engine_row_of_the_same_strategy(rehearsal):
    rows = rehearsal["rows"]
    for strategy in STRATEGIES:
        ours, peer = rows[f"engine: {strategy}"]["figures"], rows[f"Trainer: {strategy}"]["figures"]
        assert rows[f"Trainer: {strategy}"]["status"] == "pass"
        assert peer["ours_samples_per_s"] == ours["samples_per_s"]
        assert peer["ours_over_trainer"] == pytest.approx(ours["samples_per_s"] / peer["samples_per_s"])
        assert peer["loss_first"] is not None and peer["loss_last"] is not None


def test_checkpoint_resumes_with_the_same_loss(rehearsal):
    row = rehearsal["rows"]["checkpoint resume"]
    figures = row["figures"]
    assert row["status"] == "pass" and figures["resumed_ok"] is True
    assert figures["resumed_from_step"] == 3
    assert abs(figures["loss_next_step_resumed"] - figures["loss_next_step_uninterrupted"]) <= 1e-3


def test_rows_that_need_cuda_skip_and_say_why(rehearsal):
    for name in CUDA_ONLY_ROWS:
        row = rehearsal["rows"][name]
        assert row["status"] == "skip" and row["note"], name


def test_estimate_row_projects_the_full_fine_tuning_run(rehearsal):
    figures = rehearsal["rows"]["estimate --gpu h100 vs measured"]["figures"]
    full = rehearsal["rows"]["engine: full_fine_tuning"]["figures"]
    assert figures["flops"] > 0 and figures["projected_s"] > 0
    assert figures["measured_s"] == pytest.approx(full["train_s"])
    assert figures["measured_over_projected"] == pytest.approx(figures["measured_s"] / figures["projected_s"])


def test_the_pack_holds_what_the_gpu_machine_reads(rehearsal):
    pack = rehearsal["work"] / "pack"
    info = json.loads((pack / "pack.json").read_text())
    assert info["rows"]["train"] == 320 and info["rows"]["eval"] >= 8
    for name in ("tokenizer/vocab.txt", "classification/manifest.json", "sft/manifest.json", "rows_train.tsv", "sft_train.csv"):
        assert (pack / name).is_file(), name
    assert sum(p.stat().st_size for p in pack.rglob("*") if p.is_file()) < 64 * 2**20
    assert rehearsal["result"]["pack"] == info


def test_the_fsdp_row_launches_what_adaptflow_launches(tmp_path):
    """gpu_check cannot import the launcher (it imports Prefect); its command must stay the launcher's."""
    from adaptflow.tasks.config import load_config
    from adaptflow.tasks.training.launch import launch_command

    config_file = ROOT / "infra" / "accelerate" / "fsdp.yaml"
    cfg = load_config({"launch": {"accelerate_config": str(config_file), "num_processes": 1}})
    spec = tmp_path / "run_spec.json"
    assert accelerate_command(config_file, spec) == launch_command(cfg, spec)


def test_a_bare_checkout_imports_as_adaptflow():
    """Without the installed package (no site-packages at all: python -S), the script maps adaptflow.* to the checkout."""
    code = (
        "from bench.gpu_check import ensure_adaptflow; ensure_adaptflow(); "
        "import adaptflow.tasks.errors as e, os; print(os.path.realpath(e.__file__))"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == (ROOT / "tasks" / "errors.py").resolve()
