"""Training samples/s of AdaptFlow's engine against Hugging Face ``Trainer``, side by side in one run.

    python bench/speed.py [--train-samples 2000] [--strategies ...] [--tl-epochs 5]

Both engines train the identical model (the same AdaptClassifier built by tasks/modeling.py,
with the same parameters frozen by the same strategy code) on the identical prepared data,
batch size, maximum sequence length, learning-rate schedule and precision (bf16 where the
machine runs it natively). Each gets its own best options: AdaptFlow its defaults (length-
grouped batches, dynamic padding, fused AdamW, cached backbone features for transfer
learning); Trainer bf16, ``train_sampling_strategy="group_by_length"`` and ``adamw_torch_fused``.
Both pad each batch the same way: to its longest row on CPUs (rounding up to a multiple
of 8 made a CPU pass about 15% slower), to a multiple of 8 on GPUs (tensor cores). Each runs in a fresh process of its own, ``--repeats`` times in A-B-B-A order; the best run
of each engine is compared (all runs are in the JSON).
Fine-tuning strategies make 1 pass; transfer learning makes ``--tl-epochs`` passes in both
engines (its head is cheap to train; the backbone is what costs).
Prints the table and writes bench-results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adaptflow.tasks.config import TASK_STRATEGY_NAMES, AdaptConfig
from bench.common import SST2, console, prepare_sst2, print_table, require_sst2, strategy_config, train_with_progress, work_dir, write_json


def peer_run(cfg: AdaptConfig, prepared_path: Path, model_path: Path, epochs: int) -> dict:
    """Train with transformers.Trainer in this process; returns its samples/s and peak memory."""
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from adaptflow.tasks.base_model import inspect_model
    from adaptflow.tasks.data.store import load_prepared
    from adaptflow.tasks.modeling import build_classifier
    from adaptflow.tasks.strategies import get_strategy
    from adaptflow.tasks.training.engine import pad_multiple, peak_memory_mb, resolve_precision

    ds, manifest = load_prepared(prepared_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = build_classifier(inspect_model(model_path), cfg.strategy.pooling, len(manifest["label_names"]))
    model = get_strategy(cfg.strategy.name).configure_classifier(model, cfg)
    t = cfg.training
    precision = resolve_precision(t.mixed_precision)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="adaptflow-peer-"),
        per_device_train_batch_size=t.batch_size,
        num_train_epochs=epochs,
        learning_rate=cfg.learning_rate(),
        warmup_steps=t.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.scheduler,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length",
        optim="adamw_torch_fused",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        dataloader_num_workers=0,
        seed=t.seed,
        disable_tqdm=True,
    )
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in ds["train"].column_names]
    # the padding rule AdaptFlow uses on this device, so neither engine gets extra tokens (8 on GPUs, none on CPUs)
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(args.device))  # 1 pads to the longest row
    trainer = Trainer(model=model, args=args, train_dataset=ds["train"].select_columns(columns), data_collator=collator)
    out = trainer.train()
    from accelerate import PartialState

    return {
        "samples_per_s": out.metrics["train_samples_per_second"],
        "train_runtime_s": out.metrics["train_runtime"],
        "peak_memory_mb": peak_memory_mb(PartialState()),
        "mixed_precision": precision,
        "train_loss": out.metrics["train_loss"],
    }


def _peer_subprocess(cfg: AdaptConfig, prepared_path: Path, model_path: Path, epochs: int, work: Path) -> dict:
    spec = work / f"peer-{cfg.strategy.name}.json"
    spec.write_text(
        json.dumps({"config": cfg.model_dump(mode="json"), "prepared": str(prepared_path), "model": str(model_path), "epochs": epochs})
    )
    done = subprocess.run([sys.executable, "-m", "bench.speed", "--peer", str(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the Trainer run for {cfg.strategy.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sst2", type=Path, default=SST2, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tl-epochs", type=int, default=5, help="passes over the data for transfer learning, in both engines")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine per strategy, in A-B-B-A order; the best counts")
    parser.add_argument("--strategies", nargs="+", default=list(TASK_STRATEGY_NAMES), choices=TASK_STRATEGY_NAMES)
    parser.add_argument("--output", help="JSON file (default bench-results/speed.json)")
    parser.add_argument("--peer", help=argparse.SUPPRESS)  # internal: run one Trainer job from a spec file
    args = parser.parse_args()
    if args.peer:
        spec = json.loads(Path(args.peer).read_text())
        result = peer_run(AdaptConfig.model_validate(spec["config"]), Path(spec["prepared"]), Path(spec["model"]), spec["epochs"])
        print(json.dumps(result))
        return

    folder = require_sst2(args.sst2)
    work = work_dir("speed")
    model, data_cfg, prepared = prepare_sst2(folder, work, args.train_samples, eval_samples=200)
    rows = []
    for name in args.strategies:
        epochs = args.tl_epochs if name == "transfer_learning" else 1
        extra = {"head_epochs": epochs} if name == "transfer_learning" else {}
        cfg = strategy_config(model, data_cfg, name, work, epochs=epochs, batch_size=args.batch_size)
        if extra:
            cfg = AdaptConfig.model_validate({**cfg.model_dump(), "strategy": {**cfg.strategy.model_dump(), **extra}})
        # A-B-B-A order over --repeats rounds, best run of each engine: drifting machine load
        # (other processes, CPU clocks) then weighs on both engines alike.
        ours_runs, peer_runs = [], []
        for round_ in range(args.repeats):
            for engine in ("ours", "peer") if round_ % 2 == 0 else ("peer", "ours"):
                if engine == "ours":
                    # every run computes its transfer-learning features, as a first run on new data does
                    shutil.rmtree(prepared.path / "features", ignore_errors=True)
                    started = time.perf_counter()
                    metrics = train_with_progress(cfg, prepared, model, work / "runs" / f"{name}-{round_}", f"{name} (AdaptFlow)")
                    ours_runs.append({**metrics, "process_wall_s": time.perf_counter() - started})
                else:
                    console.print(f"{name} (Trainer): training ...")
                    peer_runs.append(_peer_subprocess(cfg, prepared.path, model, epochs, work))
        ours = max(ours_runs, key=lambda m: m["samples_per_s"])
        peer = max(peer_runs, key=lambda m: m["samples_per_s"])
        ours_wall = ours["process_wall_s"]
        rows.append(
            {
                "strategy": name,
                "passes": epochs,
                "adaptflow_samples_per_s": ours["samples_per_s"],
                "adaptflow_train_s": ours["train_runtime_s"],
                "adaptflow_process_wall_s": ours_wall,
                "adaptflow_peak_memory_mb": ours["peak_memory_mb"],
                "trainer_samples_per_s": peer["samples_per_s"],
                "trainer_train_s": peer["train_runtime_s"],
                "trainer_peak_memory_mb": peer["peak_memory_mb"],
                "precision": ours["mixed_precision"],
                "ratio": ours["samples_per_s"] / peer["samples_per_s"],
                "adaptflow_all_samples_per_s": [m["samples_per_s"] for m in ours_runs],
                "trainer_all_samples_per_s": [m["samples_per_s"] for m in peer_runs],
                "target": 3.0 if name == "transfer_learning" else 1.0,
            }
        )
    table = [
        [
            r["strategy"],
            str(r["passes"]),
            r["precision"],
            f"{r['adaptflow_samples_per_s']:.1f}",
            f"{r['trainer_samples_per_s']:.1f}",
            f"{r['ratio']:.2f}x",
            f">= {r['target']:.1f}x",
            "met" if r["ratio"] >= r["target"] else "MISSED",
            f"{r['adaptflow_peak_memory_mb']:.0f} / {r['trainer_peak_memory_mb']:.0f} MB",
        ]
        for r in rows
    ]
    columns = [
        "strategy",
        "passes",
        "precision",
        "AdaptFlow samples/s",
        "Trainer samples/s",
        "ratio",
        "target",
        "",
        "peak memory (ours / Trainer)",
    ]
    print_table(
        f"Training speed, MiniLM-L6, {args.train_samples:,} SST-2 examples, batch {args.batch_size}, max length 128", columns, table
    )
    write_json("speed", {"train_samples": args.train_samples, "rows": rows}, args.output)


if __name__ == "__main__":
    main()
