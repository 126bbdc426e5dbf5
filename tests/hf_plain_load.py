"""Load a pulled or exported AdaptFlow version the way the Hugging Face ecosystem does, with no AdaptFlow.

Run as a script (tests and bench/hf_loading.py start it in a fresh interpreter); prints one
JSON object: the model class, the text-classification pipeline's scores per text, the logits
of one padded batch, and whether any ``adaptflow`` module got imported (it must not).

    python tests/hf_plain_load.py FOLDER --texts '["good", "bad"]' [--trust-remote-code]
    python tests/hf_plain_load.py FOLDER --texts '[...]' --peft --labels '["neg", "pos"]' [--base LOCAL_BASE]
"""

from __future__ import annotations

import argparse
import json
import sys


def load(folder: str, trust_remote_code: bool, peft: bool, labels: list[str] | None, base: str | None):
    from transformers import AutoModelForSequenceClassification

    if not peft:
        return AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code)
    label_args = {
        "num_labels": len(labels or []),
        "id2label": dict(enumerate(labels or [])),
        "label2id": {name: i for i, name in enumerate(labels or [])},
    }
    if base is None:
        from peft import AutoPeftModelForSequenceClassification

        return AutoPeftModelForSequenceClassification.from_pretrained(folder, **label_args)
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, **label_args), folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--texts", required=True, help="JSON list of texts")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--peft", action="store_true", help="a PEFT adapter folder (AutoPeftModelForSequenceClassification)")
    parser.add_argument("--labels", help="JSON list of label names (PEFT: the base model does not know them)")
    parser.add_argument("--base", help="a local copy of the adapter's base model (PEFT)")
    args = parser.parse_args()
    texts = json.loads(args.texts)

    import torch
    from transformers import AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = load(args.folder, args.trust_remote_code, args.peft, json.loads(args.labels) if args.labels else None, args.base).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.folder, trust_remote_code=args.trust_remote_code)
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)
    scores = [{row["label"]: row["score"] for row in rows} for rows in classifier(texts, top_k=None)]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    result = {
        "class": type(model).__name__,
        "scores": scores,
        "logits": logits.tolist(),
        "adaptflow_imported": any(name == "adaptflow" or name.startswith("adaptflow.") for name in sys.modules),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
