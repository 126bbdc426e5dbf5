"""What LoRA costs on CPU, and why: its settings against each other and against full fine-tuning.

    python -m bench.lora_cost [--train-samples 1000] [--repeats 1]

Every configuration trains the offline MiniLM on the same prepared SST-2 rows for one pass,
in a fresh worker process of its own, and is scored on the dev set. The LoRA settings
measured are the suspects for its memory and time on CPU:

- ``lora_dropout``: with a dropout above 0, PEFT applies it to the input of every adapted
  layer, so each one keeps a second (dropped-out) copy of its input for the backward pass;
  at 0 (PEFT's own default) the input itself is used.
- ``lora_target_modules``: ``all-linear`` adapts the six linear layers of every block (the
  attention's query/key/value/output and the feed-forward pair, whose second layer reads the
  4x wider intermediate activations); ``query,value`` only the attention's two (the LoRA
  paper's choice).

Prints one table (train time, samples/s, peak memory, trainable parameters, accuracy) and
writes bench-results/lora_cost.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import SST2, console, prepare_sst2, print_table, require_sst2, strategy_config, train_with_progress, work_dir, write_json

CONFIGS: list[tuple[str, str, dict]] = [
    ("lora, dropout 0.05, all-linear (old default)", "lora", {"lora_dropout": 0.05}),
    ("lora, dropout 0, all-linear (default)", "lora", {"lora_dropout": 0.0}),
    ("lora, dropout 0.05, query,value", "lora", {"lora_dropout": 0.05, "lora_target_modules": ["query", "value"]}),
    ("lora, dropout 0, query,value", "lora", {"lora_dropout": 0.0, "lora_target_modules": ["query", "value"]}),
    ("full_fine_tuning (reference)", "full_fine_tuning", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sst2", type=Path, default=SST2, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is shown (all in the JSON)")
    parser.add_argument("--output", help="JSON file (default bench-results/lora_cost.json)")
    args = parser.parse_args()

    folder = require_sst2(args.sst2)
    work = work_dir("lora-cost")
    model, data_cfg, prepared = prepare_sst2(folder, work, args.train_samples)
    results = []
    for label, strategy, params in CONFIGS:
        runs = []
        for repeat in range(args.repeats):
            cfg = strategy_config(model, data_cfg, strategy, work, params, epochs=1)
            runs.append(train_with_progress(cfg, prepared, model, work / "runs" / f"{len(results)}-{repeat}", label))
        best = min(runs, key=lambda m: m["train_runtime_s"])
        results.append({"label": label, "strategy": strategy, "params": params, "best": best, "runs": runs})
    reference = results[0]["best"]
    rows = [
        [
            r["label"],
            f"{r['best']['train_runtime_s']:.1f} s",
            f"{r['best']['samples_per_s']:.1f}",
            f"{r['best']['peak_memory_mb']:.0f} MB",
            f"{r['best']['peak_memory_mb'] / reference['peak_memory_mb']:.2f}x",
            f"{r['best']['trainable_params']:,}",
            f"{r['best']['eval_accuracy']:.4f}",
        ]
        for r in results
    ]
    columns = ["configuration", "train time", "samples/s", "peak memory", "memory vs old", "trainable", "accuracy"]
    print_table(f"LoRA on CPU, {args.train_samples} SST-2 rows, one pass", columns, rows)
    console.print("accuracy on the SST-2 dev set (872 rows) after one pass; peak memory: RSS of the training process")
    write_json("lora_cost", {"train_samples": args.train_samples, "results": results}, args.output)


if __name__ == "__main__":
    main()
