import pytest
import torch

from layerfreeze import Strategy, apply_preset, fresh_copy, layer_groups, run_strategy, tiny_model
from layerfreeze.study.strategies import PRESETS


def states(model):
    return {g.name: g.trainable for g in layer_groups(model)}


@pytest.mark.parametrize("preset, k, trainable", [
    ("head", None, ["head"]),
    ("top", 2, ["block.2", "block.3", "head"]),
    ("bottom", 1, ["block.0", "head"]),
    ("all", None, ["embeddings", "block.0", "block.1", "block.2", "block.3", "head"]),
])
def test_presets(preset, k, trainable):
    model = tiny_model("bert", num_layers=4)
    apply_preset(model, preset, k)
    assert [name for name, state in states(model).items() if state] == trainable


def test_bitfit_preset_trains_biases():
    model = tiny_model("bert", num_layers=2)
    apply_preset(model, "bitfit")
    assert all(p.requires_grad == (n.endswith("bias") or n.startswith(("classifier", "bert.pooler")))
               for n, p in model.named_parameters())


@pytest.mark.parametrize("preset, k, message", [
    ("middle", None, "valid presets: head, top, bottom, all, bitfit"),
    ("top", None, "needs k, the number of blocks, from 1 to 4"),
    ("bottom", 5, "from 1 to 4"),
    ("head", 2, "takes no k"),
])
def test_bad_presets(preset, k, message):
    with pytest.raises(ValueError, match=message):
        apply_preset(tiny_model("bert", num_layers=4), preset, k)


def test_fresh_copy_leaves_the_base_alone():
    base = tiny_model("bert")
    copy = fresh_copy(base)
    assert copy is not base and torch.equal(copy.classifier.weight, base.classifier.weight)
    scratch = fresh_copy(base, from_scratch=True, seed=1)
    assert not torch.equal(scratch.bert.embeddings.word_embeddings.weight, base.bert.embeddings.word_embeddings.weight)


def test_run_strategy_row():
    from tests.test_training import toy_task
    base = tiny_model("bert", num_layers=3)
    data = torch.utils.data.TensorDataset(*toy_task(64))
    row = run_strategy(base, Strategy("top-1", "top", k=1, lr=1e-3), data, data, data, epochs=2, batch_size=16,
                       time_uncached_steps=2, progress=False)
    assert row["name"] == "top-1" and 0 <= row["test_accuracy"] <= 1
    assert row["cached_groups"] == ["embeddings", "block.0", "block.1"]
    # timing depends on the machine's load: only what cannot is asserted (a ratio of times, inside its range)
    assert 0 < row["cache_speedup_low"] <= row["cache_speedup"] <= row["cache_speedup_high"]
    assert row["timing_rounds"] >= 3 and isinstance(row["cache_speedup_noisy"], bool)
    assert row["epoch_seconds_uncached"] == pytest.approx(row["step_seconds_uncached"] * 4)
    assert row["trainable_params"] < row["total_params"] and row["estimated_memory_mib"] > 0
    assert all(p.requires_grad for p in base.parameters()), "run_strategy must not touch the base model"
