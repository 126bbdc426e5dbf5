"""Language-model pieces: SFT loss masking, chat template, packing, perplexity, ROUGE-L, config checks."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from adaptflow.tasks.config import load_config
from adaptflow.tasks.data.lm import IGNORE, Conversation, Example, load_lm_tokenizer, pack, prompt_text, read_sft_rows, sft_example
from adaptflow.tasks.data.readers import Table
from adaptflow.tasks.errors import ConfigError, DataError
from adaptflow.tasks.evaluation.lm import exact_match, mask_tokens, masked_lm_loss, perplexity, rouge_l


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return load_lm_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=30522, n_embd=16, n_layer=1, n_head=2, n_positions=64, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


def test_sft_labels_cover_only_the_response_and_eos(tokenizer):
    ex = sft_example(tokenizer, Conversation(None, "What is the dose?", "two tablets daily"), max_length=64)
    assert ex.prompt_length > 0
    assert ex.labels[: ex.prompt_length] == [IGNORE] * ex.prompt_length
    supervised = ex.input_ids[ex.prompt_length :]
    assert ex.labels[ex.prompt_length :] == supervised
    assert supervised[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(supervised, skip_special_tokens=True) == "two tablets daily"
    assert tokenizer.decode(ex.input_ids[: ex.prompt_length]).startswith("# # # prompt")  # the plain format (no chat template)


def test_sft_truncation_keeps_response_tokens(tokenizer):
    ex = sft_example(tokenizer, Conversation(None, "word " * 200, "the answer"), max_length=32)
    assert len(ex.input_ids) == 32
    assert tokenizer.decode([t for t in ex.labels if t != IGNORE], skip_special_tokens=True) == "the answer"


def test_chat_template_formats_the_prompt(minilm_dir):
    tok = load_lm_tokenizer(minilm_dir)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    conv = Conversation([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "be brief\nhi", "hello")
    assert prompt_text(tok, conv) == "<system>be brief<user>hi<assistant>"
    ex = sft_example(tok, conv, max_length=64)
    assert tok.decode([t for t in ex.labels if t != IGNORE], skip_special_tokens=True) == "hello"


def test_chat_rows_are_read_and_bad_rows_named():
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    table = Table("chat.jsonl", pd.DataFrame({"messages": [good, [{"role": "user", "content": "no answer"}]]}), lines=[1, 2])
    cfg = load_config({"lm": {"messages_column": "messages"}}).lm
    with pytest.raises(DataError) as err:
        read_sft_rows(table, cfg)
    assert "chat.jsonl, row 2, line 2" in str(err.value) and "assistant" in str(err.value)
    rows = read_sft_rows(Table("chat.jsonl", pd.DataFrame({"messages": [good]})), cfg)
    assert rows[0].response == "hello" and rows[0].messages == good[:1]


def test_missing_columns_and_empty_responses_are_reported():
    cfg = load_config({}).lm
    with pytest.raises(DataError, match="no column 'response'.*--response-column"):
        read_sft_rows(Table("sft.jsonl", pd.DataFrame({"prompt": ["a"]})), cfg)
    with pytest.raises(DataError, match="row 2.*empty 'response'"):
        read_sft_rows(Table("sft.jsonl", pd.DataFrame({"prompt": ["a", "b"], "response": ["x", " "]})), cfg)


def test_packing_never_splits_an_example_and_masks_each_boundary():
    examples = [
        Example(list(range(100 * i, 100 * i + n)), [IGNORE] * 2 + list(range(100 * i + 2, 100 * i + n)))
        for i, n in enumerate([5, 7, 3, 9, 2, 6])
    ]
    blocks = pack(examples, block_size=12)
    assert [b["starts"] for b in blocks] == [[0, 5], [0, 3], [0, 2]]  # greedy, in order: [5+7] [3+9] [2+6]
    seen = []
    for block in blocks:
        assert len(block["input_ids"]) <= 12 and len(block["labels"]) == len(block["input_ids"])
        ends = block["starts"][1:] + [len(block["input_ids"])]
        for start, end in zip(block["starts"], ends):
            ids = block["input_ids"][start:end]
            source = next(e for e in examples if e.input_ids == ids)  # the whole example, contiguous
            assert block["labels"][start] == IGNORE  # nothing learnt across the boundary
            assert block["labels"][start + 1 : end] == source.labels[1:]
            seen.append(ids)
    assert seen == [e.input_ids for e in examples]


def test_perplexity_matches_a_hand_computation(tiny_lm, tokenizer):
    texts = ["the patient took two tablets", "a short one"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            logits = tiny_lm(input_ids=torch.tensor([ids])).logits[0]
            for t in range(1, len(ids)):
                nll -= torch.log_softmax(logits[t - 1], dim=-1)[ids[t]].item()
                count += 1
    expected = math.exp(nll / count)
    assert perplexity(tiny_lm, tokenizer, texts, max_length=32, batch_size=2) == pytest.approx(expected, rel=1e-4)


def test_masked_lm_loss_uses_the_same_masks_every_time(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).eval()
    rows = [
        {"input_ids": ids, "labels": ids} for ids in tokenizer(["the clinic opened early", "insulin dose was changed today"])["input_ids"]
    ]
    first = masked_lm_loss(model, tokenizer, rows, probability=0.5, seed=3)
    assert first == masked_lm_loss(model, tokenizer, rows, probability=0.5, seed=3)
    assert math.isfinite(first) and first > 0


def test_mask_tokens_never_masks_special_tokens(tokenizer):
    ids = torch.tensor([tokenizer("one two three four five six seven")["input_ids"]] * 20)
    inputs, labels = mask_tokens(ids, tokenizer, probability=0.9, generator=torch.Generator().manual_seed(0))
    assert (labels[:, 0] == IGNORE).all() and (labels[:, -1] == IGNORE).all()  # [CLS] and [SEP]
    assert (labels != IGNORE).any() and (inputs == tokenizer.mask_token_id).any()


def test_generation_metrics():
    assert exact_match("Two tablets.", "two tablets") == 1.0
    assert exact_match("two", "three") == 0.0
    # LCS of 'the cat sat on the mat' and 'the cat on the mat' is 5: P 5/6, R 1 -> F 10/11
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("nothing here", "the cat") == 0.0


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"strategy": {"name": "domain_adaptation", "then": "lora"}}, "needs strategy.task_data"),
        ({"strategy": {"name": "domain_adaptation", "task_data": "x.csv"}}, "needs strategy.then"),
        ({"task": "causal_lm", "strategy": {"name": "lora", "qlora": True}}, "needs a CUDA GPU"),
        ({"strategy": {"name": "lora", "qlora": True}}, "causal_lm only"),
    ],
)
def test_config_problems_are_named(raw, message, monkeypatch):
    monkeypatch.setattr("adaptflow.tasks.config._cuda_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_causal_lm_strategies_choose_what_trains(tiny_lm):
    import copy

    from adaptflow.tasks.strategies import get_strategy

    head = get_strategy("transfer_learning").configure_decoder(copy.deepcopy(tiny_lm), load_config({"task": "causal_lm"}))
    assert {n for n, p in head.named_parameters() if p.requires_grad} == {"transformer.wte.weight"}  # tied to lm_head
    partial = get_strategy("partial_fine_tuning").configure_decoder(
        copy.deepcopy(tiny_lm), load_config({"task": "causal_lm", "strategy": {"name": "partial_fine_tuning", "last_n_layers": 1}})
    )
    trains = {n.split(".")[1] for n, p in partial.named_parameters() if p.requires_grad}
    assert trains == {"h", "ln_f"}


def test_language_model_runs_launch_the_one_worker(tmp_path):
    from adaptflow.tasks.training.classification import ClassificationTask
    from adaptflow.tasks.training.launch import launch_command
    from adaptflow.tasks.training.lm import LanguageModelTask
    from adaptflow.tasks.training.worker import RunSpec, task_for

    one = launch_command(load_config({"task": "causal_lm"}), tmp_path / "run_spec.json")
    assert one[1:] == ["-m", "adaptflow.tasks.training.worker", str(tmp_path / "run_spec.json")]
    two = launch_command(load_config({"task": "causal_lm", "launch": {"num_processes": 2}}), tmp_path / "run_spec.json")
    assert "torch.distributed.run" in two and two[-3:] == one[1:]

    def spec(raw):
        return RunSpec(load_config(raw), tmp_path, tmp_path, tmp_path)

    assert isinstance(task_for(spec({"task": "causal_lm"})), LanguageModelTask)
    assert isinstance(task_for(spec({"strategy": {"name": "domain_adaptation"}})), LanguageModelTask)
    assert isinstance(task_for(spec({})), ClassificationTask)


def test_lm_collator_pads_exactly_on_cpus_and_to_a_multiple_of_eight_on_gpus(tokenizer):
    from adaptflow.tasks.training.engine import pad_multiple
    from adaptflow.tasks.training.lm import LmCollator

    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [5], "labels": [5]}]
    exact = LmCollator(tokenizer, None, seed=0, multiple=pad_multiple(torch.device("cpu")))(rows)
    assert exact["input_ids"].shape == (2, 3)
    assert exact["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert exact["labels"].tolist() == [[IGNORE, 6, 7], [5, IGNORE, IGNORE]]
    gpu = LmCollator(tokenizer, None, seed=0, multiple=pad_multiple(torch.device("cuda", 0)))(rows)
    assert gpu["input_ids"].shape == (2, 8) and gpu["input_ids"][0, 3:].tolist() == [tokenizer.pad_token_id or 0] * 5


def test_lm_collator_masking_resumes_where_it_stopped(tokenizer):
    from adaptflow.tasks.training.lm import LmCollator

    rows = [
        {"input_ids": ids, "labels": ids} for ids in tokenizer(["the clinic opened early today", "insulin dose was changed"])["input_ids"]
    ]
    first = LmCollator(tokenizer, 0.5, seed=1, multiple=1)
    first(rows)
    saved = first.state_dict()
    expected = first(rows)
    resumed = LmCollator(tokenizer, 0.5, seed=1, multiple=1)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed(rows)["input_ids"], expected["input_ids"])
    resumed.restart()
    assert torch.equal(resumed(rows)["input_ids"], LmCollator(tokenizer, 0.5, seed=1, multiple=1)(rows)["input_ids"])
