"""Pieces of the training worker that need no process launch."""

from __future__ import annotations

from pathlib import Path

import torch

from tasks.config import load_config
from tasks.train import describe_event, launch_command, worker_env
from tasks.training.worker import LengthGroupedSampler, PadCollator


def test_length_grouped_sampler_is_a_seeded_permutation_with_similar_neighbours():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    sampler = LengthGroupedSampler(lengths, batch_size=10, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    assert order == list(LengthGroupedSampler(lengths, 10, 3))
    sampler.set_epoch(1)
    assert list(sampler) != order
    # padding waste inside batches is far below a random order's
    def waste(idx):
        batches = [idx[i : i + 10] for i in range(0, len(idx), 10)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)
    random_order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert waste(order) < 0.2 * waste(random_order)


def test_pad_collator_pads_to_a_multiple_of_eight():
    collate = PadCollator(pad_token_id=0, columns=("input_ids", "attention_mask"))
    batch = collate([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1}, {"input_ids": [5], "attention_mask": [1], "labels": 0}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"][1].tolist() == [1] + [0] * 7
    assert batch["labels"].tolist() == [1, 0]


def test_launcher_choice():
    one = launch_command(load_config({}), Path("spec.json"))
    assert one[1:] == ["-m", "tasks.training.worker", "spec.json"]
    two = launch_command(load_config({"launch": {"num_processes": 2}}), Path("spec.json"))
    assert "torch.distributed.run" in two and "--nproc_per_node" in two and two[two.index("--nproc_per_node") + 1] == "2"
    acc = launch_command(load_config({"launch": {"accelerate_config": "infra/accelerate/ddp.yaml"}}), Path("s.json"))
    assert "accelerate.commands.launch" in acc and "infra/accelerate/ddp.yaml" in acc


def test_worker_gets_no_s3_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = worker_env(load_config({"launch": {"num_processes": 2}}))
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PYTHONUNBUFFERED"] == "1" and int(env["OMP_NUM_THREADS"]) >= 1


def test_events_read_well():
    line = describe_event({"type": "progress", "step": 5, "total_steps": 10, "epoch": 0.5, "train_loss": 0.69, "learning_rate": 1e-4})
    assert line == "step 5/10 epoch 0.50 loss 0.6900 lr 1.00e-04"
    assert describe_event({"type": "log", "message": "x"}) is None
