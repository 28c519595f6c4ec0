import pandas as pd
import pytest
import torch

from layerfreeze import (count_parameters, estimate_memory, freeze, freeze_to, group_table, layer_groups,
                         parameter_table, tiny_model, train_only)
from layerfreeze.core.memory import block_activation_bytes


def test_parameter_table_totals_match_the_model(family_model):
    _, model = family_model
    freeze_to(model, -2)
    table = parameter_table(model)
    trainable, total = count_parameters(model)
    assert table["count"].sum() == total
    assert table.loc[table["trainable"], "count"].sum() == trainable
    assert table["bytes"].sum() == sum(p.numel() * p.element_size() for p in model.parameters())
    assert table["name"].is_unique


def test_group_table(bert):
    freeze_to(bert, -2)
    table = group_table(bert)
    assert table.index.tolist() == ["embeddings", "block.0", "block.1", "block.2", "block.3", "head", "total"]
    trainable, total = count_parameters(bert)
    assert table.loc["total", "params"] == total and table.loc["total", "trainable"] == trainable
    assert table.loc["block.3", "% trainable"] == 100.0 and table.loc["block.2", "% trainable"] == 0.0
    assert table.loc["total", "% trainable"] == pytest.approx(100 * trainable / total, abs=0.05)


def test_tied_tensor_has_one_row_with_its_twin():
    model = tiny_model("gpt2", task="causal-lm")
    table = parameter_table(model)
    row = table[table["name"] == "transformer.wte.weight"].iloc[0]
    assert row["group"] == "embeddings" and row["shared_with"] == "lm_head.weight"
    assert "lm_head.weight" not in set(table["name"])


def test_memory_components(bert):
    full = estimate_memory(bert, batch_size=8, seq_len=32)
    weight_bytes = sum(p.numel() * 4 for p in bert.parameters())
    assert full.weights_trainable == full.gradients == weight_bytes and full.weights_frozen == 0
    assert full.optimizer_state == 2 * weight_bytes
    assert estimate_memory(bert, 8, 32, optimizer="sgd").optimizer_state == 0
    assert estimate_memory(bert, 8, 32, optimizer="sgd-momentum").optimizer_state == weight_bytes
    with pytest.raises(ValueError, match="adamw, adam, sgd-momentum, sgd"):
        estimate_memory(bert, optimizer="lion")


def test_frozen_prefix_keeps_no_activations_but_frozen_blocks_above_do(bert):
    per_block = block_activation_bytes(bert, 8, 32)
    freeze_to(bert, -3)  # block.2, block.3 and head train
    top2 = estimate_memory(bert, 8, 32)
    assert top2.activations_frozen == 0 and top2.activations_trainable >= 2 * per_block
    train_only(bert, "block.0", "head")  # blocks 1-3 are frozen but sit above a trainable block
    low = estimate_memory(bert, 8, 32)
    assert low.activations_frozen >= 3 * per_block
    freeze_to(bert, -1)
    assert estimate_memory(bert, 8, 32).activations < per_block
    assert estimate_memory(bert, 16, 32).activations > estimate_memory(bert, 8, 32).activations


def test_memory_table_in_mib(bert):
    table = estimate_memory(bert, 8, 32).table()
    assert table.index.tolist() == ["weights", "gradients", "optimizer state", "activations", "total"]
    assert table.loc["total", "total"] == pytest.approx(estimate_memory(bert, 8, 32).total / 2 ** 20, abs=0.05)


def _saved_activation_bytes(model, batch_size, seq_len):
    """What autograd really keeps for backward in one forward pass (parameters excluded), in bytes."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    ids = torch.randint(5, 1000, (batch_size, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=torch.zeros(batch_size, dtype=torch.long)).loss
    return sum(storages.values())


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_activation_estimate_is_close_to_what_autograd_saves(attention):
    model = tiny_model("bert", num_layers=4, hidden_size=64)
    model.config._attn_implementation = attention
    for n in (-1, -3, 0):
        freeze_to(model, n)
        estimate = estimate_memory(model, 8, 48).activations
        saved = _saved_activation_bytes(model, 8, 48)
        if n == -1:
            assert saved < block_activation_bytes(model, 8, 48)
        else:
            assert estimate == pytest.approx(saved, rel=0.10), (n, estimate, saved)
