"""Pieces of the training worker that need no process launch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptflow.tasks.config import load_config
from adaptflow.tasks.errors import ConfigError
from adaptflow.tasks.training.checks import ACCELERATE_CONFIGS, accelerate_config_path
from adaptflow.tasks.training.classification import PadCollator
from adaptflow.tasks.training.engine import LengthGroupedSampler, lr_scales, make_optimizer, pad_multiple
from adaptflow.tasks.training.launch import (
    describe_event,
    launch_command,
    other_node_commands,
    worker_env,
)


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


def test_length_grouped_batches_stay_on_the_loader_boundaries():
    # 1,013 rows do not fill the last mega-batch: its short tail batch must not shift the
    # batches after it, or every later batch straddles two length groups (and pads more).
    lengths = [(i * 53) % 97 + 1 for i in range(1013)]
    order = list(LengthGroupedSampler(lengths, batch_size=16, seed=5, group=4))
    assert sorted(order) == list(range(1013))
    batches = [order[i : i + 16] for i in range(0, len(order), 16)]
    for batch in batches:  # each is one length-sorted slice of a mega-batch
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert len(batches[-1]) == 1013 % 16
    assert max(lengths) == lengths[batches[0][0]]  # the longest batch comes first


def test_pad_collator_pads_to_a_multiple_of_eight_on_gpus_and_exactly_on_cpus():
    collate = PadCollator(pad_token_id=0, columns=("input_ids", "attention_mask"))
    batch = collate(
        [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1}, {"input_ids": [5], "attention_mask": [1], "labels": 0}]
    )
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"][1].tolist() == [1] + [0] * 7
    assert batch["labels"].tolist() == [1, 0]
    exact = PadCollator(0, ("input_ids", "attention_mask"), multiple=pad_multiple(torch.device("cpu")))
    assert exact([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1}])["input_ids"].shape == (1, 3)
    assert pad_multiple(torch.device("cuda", 0)) == 8


def test_launcher_choice():
    one = launch_command(load_config({}), Path("spec.json"))
    assert one[1:] == ["-m", "adaptflow.tasks.training.worker", "spec.json"]
    two = launch_command(load_config({"launch": {"num_processes": 2}}), Path("spec.json"))
    assert "torch.distributed.run" in two and "--standalone" in two and two[two.index("--nproc-per-node") + 1] == "2"
    acc = launch_command(load_config({"launch": {"accelerate_config": "ddp", "num_processes": 4}}), Path("s.json"))
    assert "accelerate.commands.launch" in acc and acc[acc.index("--config_file") + 1].endswith("infra/accelerate/ddp.yaml")
    assert acc[acc.index("--num_processes") + 1] == "4"


def test_multinode_launcher_gives_every_node_the_same_agent_with_its_rank():
    cfg = load_config(
        {"launch": {"launcher": "multinode", "nnodes": 3, "num_processes": 2, "master_addr": "10.0.0.1", "master_port": 29600}}
    )
    mine = launch_command(cfg, Path("spec.json"))
    assert mine[mine.index("--node-rank") + 1] == "0" and mine[mine.index("--nnodes") + 1] == "3"
    assert mine[mine.index("--master-addr") + 1] == "10.0.0.1" and "--standalone" not in mine
    others = other_node_commands(cfg, Path("spec.json"))
    assert len(others) == 2 and "--node-rank 1" in others[0] and "--node-rank 2" in others[1]
    acc = launch_command(load_config({"launch": {**cfg.launch.model_dump(), "accelerate_config": "multi_node"}}), Path("s.json"))
    assert acc[acc.index("--num_processes") + 1] == "6" and acc[acc.index("--main_process_ip") + 1] == "10.0.0.1"


def test_launch_settings_are_checked():
    with pytest.raises(ConfigError) as info:
        load_config({"launch": {"launcher": "multinode", "nnodes": 1}})
    assert "master_addr" in str(info.value) and "nnodes" in str(info.value)
    with pytest.raises(ConfigError, match="ddp, deepspeed_zero2"):
        accelerate_config_path("no-such-config")


@pytest.mark.parametrize("path", sorted(ACCELERATE_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_accelerate_configs_load_in_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(path)  # rejects unknown keys
    assert config.compute_environment.value == "LOCAL_MACHINE"
    if config.distributed_type.value == "FSDP":
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if config.distributed_type.value == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] in (2, 3)


def test_every_documented_config_is_shipped():
    shipped = {p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert shipped == {"single_gpu", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "multi_node"}


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
    classification = {"type": "eval", "step": 4, "split": "validation", "eval_loss": 0.5, "accuracy": 0.75}
    assert describe_event(classification) == "eval at step 4 on validation: loss 0.5000 accuracy 0.7500"
    language_model = {"type": "eval", "step": 4, "split": "eval", "eval_loss": 2.5}  # no accuracy
    assert describe_event(language_model) == "eval at step 4 on eval: loss 2.5000"


def test_layer_wise_learning_rates_fall_towards_the_embeddings():
    names = [
        "backbone.embeddings.word_embeddings.weight",
        "backbone.encoder.layer.0.attention.self.query.weight",
        "backbone.encoder.layer.1.output.dense.weight",
        "backbone.base_model.model.encoder.layer.1.attention.self.query.lora_A.default.weight",  # a LoRA name
        "backbone.norm.weight",
        "head.linear.weight",
    ]
    assert lr_scales(names) == [1.0] * len(names)
    assert lr_scales(names, layer_decay=0.5, head_multiplier=10.0) == [0.125, 0.25, 0.5, 0.5, 1.0, 10.0]
    gpt2 = ["backbone.wte.weight", "backbone.h.0.attn.c_attn.weight", "backbone.h.2.mlp.c_fc.weight", "backbone.ln_f.weight"]
    assert lr_scales(gpt2, layer_decay=0.5) == [0.0625, 0.125, 0.5, 1.0]  # blocks 0..2: wte sits below block 0


def test_optimizer_groups_carry_each_parameters_rate_and_decay():
    from torch import nn

    module = nn.ModuleDict(
        {"backbone": nn.ModuleDict({"embeddings": nn.Linear(2, 2), "layer": nn.ModuleList([nn.Linear(2, 2)])}), "head": nn.Linear(2, 2)}
    )
    module["backbone"]["embeddings"].weight.requires_grad_(False)
    optimizer = make_optimizer(module, lr=1e-3, weight_decay=0.1, layer_decay=0.5, head_multiplier=4.0)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    named = dict(module.named_parameters())
    assert id(named["backbone.embeddings.weight"]) not in by_param  # frozen parameters are left out
    assert by_param[id(named["backbone.embeddings.bias"])] == (1e-3 * 0.25, 0.0)
    assert by_param[id(named["backbone.layer.0.weight"])] == (1e-3 * 0.5, 0.1)
    assert by_param[id(named["head.weight"])] == (4e-3, 0.1) and by_param[id(named["head.bias"])] == (4e-3, 0.0)
