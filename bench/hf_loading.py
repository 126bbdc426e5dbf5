"""Do registered versions load with plain Hugging Face tools, and predict as ``adaptflow predict``?

For each strategy and pooling, builds a MiniLM classifier as a run would (head fitted by
ridge regression on the bundled sample reviews, on frozen features: seconds, not a training
run; LoRA updates random and small so the adapter matters), registers it through the
production folder builder on a temporary local S3 server, pulls it and loads it in a fresh
interpreter with no AdaptFlow (tests/hf_plain_load.py: ``transformers`` / ``peft`` and
``pipeline("text-classification")``). LoRA versions whose pooling no PEFT head reproduces
are loaded from ``adaptflow models export --merge``. Prints the pipeline's label and score
for three sentences, whether every probability equals ``adaptflow predict``'s (to 1e-5),
and the size of a LoRA version against a full one.

    python bench/hf_loading.py            # the bundled MiniLM, offline
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SENTENCES = ["Absolutely loved it, would buy again.", "It arrived on Tuesday.", "Broke after two days, a waste of money."]
ROUTES = [  # strategy, pooling
    ("transfer_learning", "mean"),
    ("full_fine_tuning", "pooler"),
    ("partial_fine_tuning", "cls"),
    ("lora", "pooler"),
    ("lora", "mean"),
]
TOLERANCE = 1e-5
RIDGE = 1e-2


def fit_head_on_sample(model, tokenizer, texts: list[str], labels: list[int], num_labels: int) -> None:
    """Ridge-regression head on the model's pooled features of the sample reviews (one-hot targets)."""
    import torch

    torch.manual_seed(0)
    for name, param in model.backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        features = model.eval().encode(**batch).double()
    design = torch.cat([features, torch.ones(len(texts), 1, dtype=torch.float64)], dim=1)
    target = torch.nn.functional.one_hot(torch.tensor(labels), num_labels).double()
    # Ridge (fewer reviews than features): a unique, stable solution rather than an exact fit.
    gram = design.T @ design + RIDGE * torch.eye(design.shape[1], dtype=torch.float64)
    solution = torch.linalg.solve(gram, design.T @ target)
    with torch.no_grad():
        model.head.linear.weight.copy_(solution[:-1].T.float())
        model.head.linear.bias.copy_(solution[-1].float())


def plain_load(folder: Path, args: list[str]) -> dict:
    loader = Path(__file__).resolve().parents[1] / "tests" / "hf_plain_load.py"
    done = subprocess.run(
        [sys.executable, str(loader), str(folder), "--texts", json.dumps(SENTENCES), *args], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    import pandas as pd
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from adaptflow.infra.stack import LocalS3Stack
    from adaptflow.tasks.assets import asset
    from adaptflow.tasks.config import DEFAULT_MODEL
    from adaptflow.tasks.inference.export import export_version
    from adaptflow.tasks.inference.predict import predict_file
    from adaptflow.tasks.registry.store import pull_version
    from tests.integration.versions import register_like_a_run
    from tests.model_fixtures import minilm_path

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base = minilm_path()
    sample = pd.read_csv(asset("adaptflow.tasks", "sample_data", "reviews.csv"))
    labels = sorted(sample["label"].unique())
    tokenizer = AutoTokenizer.from_pretrained(base)
    texts, ids = sample["text"].tolist(), [labels.index(v) for v in sample["label"]]
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory(prefix="adaptflow-bench-") as tmp:
        work = Path(tmp)
        stack = LocalS3Stack(work / "home")
        stack.up(timeout=90)
        try:
            settings = stack.settings()
            (work / "texts.csv").write_text(pd.DataFrame({"text": SENTENCES}).to_csv(index=False))
            for strategy, pooling in ROUTES:
                name = f"bench-{strategy.replace('_', '-')}-{pooling}"
                version, manifest = register_like_a_run(
                    settings,
                    base,
                    work,
                    name,
                    strategy,
                    pooling,
                    labels,
                    lambda m: fit_head_on_sample(m, tokenizer, texts, ids, len(labels)),
                    base_ref=DEFAULT_MODEL,
                )
                sizes[(strategy, pooling)] = version.total_bytes
                route = manifest["hf"]["route"]
                folder = pull_version(settings, name, version.version, work / f"{name}-pulled")
                how = {
                    "transformers": ("pipeline(model=DIR)", []),
                    "remote_code": ("pipeline(model=DIR, trust_remote_code=True)", ["--trust-remote-code"]),
                    "peft": ("PeftModel(base, DIR) -> pipeline", ["--peft", "--labels", json.dumps(labels), "--base", str(base)]),
                    "peft_backbone": ("export --merge -> pipeline(trust_remote_code=True)", ["--trust-remote-code"]),
                }[route]
                if route == "peft_backbone":
                    folder = export_version(settings, name, work / f"{name}-merged", merge=True).output
                plain = plain_load(folder, how[1])
                predict_file(settings, name, str(work / "texts.csv"), work / f"{name}.csv")
                ours = pd.read_csv(work / f"{name}.csv")
                same = (
                    all(
                        abs(plain["scores"][i][label] - ours.loc[i, f"prob_{label}"]) < TOLERANCE
                        for i in range(len(SENTENCES))
                        for label in labels
                    )
                    and not plain["adaptflow_imported"]
                )
                results = [max(scores.items(), key=lambda item: item[1]) for scores in plain["scores"]]
                shown = "; ".join(f"{label} {score:.3f}" for label, score in results)
                rows.append((f"{strategy} ({pooling})", route, how[0], shown, "yes" if same else "NO"))
        finally:
            stack.down()
    table = Table(title=f"Registered versions of {DEFAULT_MODEL} loaded without AdaptFlow", title_style="bold")
    for column in ("strategy (pooling)", "route", "loaded with", "pipeline(...) on the three sentences", "same as adaptflow predict?"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console = Console(width=200)
    console.print("sentences: " + " | ".join(SENTENCES))
    console.print(table)
    lora = sizes[("lora", "pooler")] / sizes[("full_fine_tuning", "pooler")]
    console.print(f"LoRA version size / full fine-tuning version size: {lora:.2%} (must stay under 5%)")
    return 0 if all(row[-1] == "yes" for row in rows) and lora < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
