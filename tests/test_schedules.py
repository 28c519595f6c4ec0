import math

import pytest
import torch

from layerfreeze import (assert_frozen_unchanged, chain_thaw, changed_parameters, discriminative_lrs,
                         fingerprint, fit, freeze, freeze_to, gradual_unfreezing, layer_groups, tiny_model)
from layerfreeze.core.optim import make_optimizer
from layerfreeze.core.schedules import Schedule, layerwise_decay, lr_multiplier, spread_lrs
from layerfreeze.core.training import enable_gradient_checkpointing
from layerfreeze.core.optim import follow_schedule
from tests.test_training import toy_task

NAMES = ["embeddings", "block.0", "block.1", "block.2", "block.3", "head"]


def test_discriminative_rates():
    rates = discriminative_lrs(NAMES, 1e-3, factor=2.6)
    assert rates["head"] == 1e-3
    for lower, upper in zip(NAMES, NAMES[1:]):
        assert rates[upper] / rates[lower] == pytest.approx(2.6)
    spread = spread_lrs(NAMES, 1e-5, 1e-3)
    assert spread["embeddings"] == pytest.approx(1e-5) and spread["head"] == pytest.approx(1e-3)
    ratios = [spread[b] / spread[a] for a, b in zip(NAMES, NAMES[1:])]
    assert ratios == pytest.approx([ratios[0]] * 5)  # geometric
    decay = layerwise_decay(NAMES, 1e-3, 0.5)
    assert decay["block.3"] == pytest.approx(5e-4) and decay["embeddings"] == pytest.approx(1e-3 * 0.5 ** 5)
    with pytest.raises(ValueError, match="0 < low <= high"):
        spread_lrs(NAMES, 1e-3, 1e-5)
    with pytest.raises(ValueError, match="decay must be a number above 0 and at most 1"):
        layerwise_decay(NAMES, 1e-3, 1.5)


def test_slanted_triangular_matches_ulmfit():
    """Howard & Ruder 2018, eq. 3: cut = floor(T * cut_frac); lr = lr_max * (1 + p (ratio - 1)) / ratio."""
    total = 1000
    values = [lr_multiplier(t, total, curve="stlr") for t in range(total)]
    peak = max(range(total), key=values.__getitem__)
    assert peak == math.floor(total * 0.1) and values[peak] == pytest.approx(1.0)
    assert values[0] == pytest.approx(1 / 32)
    assert values[550] == pytest.approx((1 + (1 - 450 / 900) * 31) / 32)
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))


def test_one_cycle_and_cosine():
    one = [lr_multiplier(t, 100, curve="one-cycle") for t in range(100)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0) and one.index(max(one)) == 30
    assert one[-1] < 0.01


def test_gradual_unfreezing_schedule_is_plain_data():
    schedule = gradual_unfreezing(NAMES, every=10, total_steps=80, lrs=discriminative_lrs(NAMES, 1e-3))
    assert schedule.trainable_at(0) == ["head"]
    assert schedule.trainable_at(10) == ["block.3", "head"]
    assert schedule.trainable_at(55) == NAMES
    assert schedule.change_steps() == [10, 20, 30, 40, 50]
    table = schedule.table()
    assert table.shape == (80, 6)
    assert (table.loc[:9, "block.3"] == 0).all() and (table.loc[10:, "block.3"] > 0).all()
    assert table.loc[60, "head"] / table.loc[60, "block.3"] == pytest.approx(2.6)
    text = repr(schedule)
    assert "from step    10: train block.3, head" in text


def test_chain_thaw():
    schedule = chain_thaw(NAMES, every=5, total_steps=100, lrs=1e-4)
    assert [tuple(schedule.trainable_at(s)) for s in (0, 5, 10, 25, 30)] == [
        ("head",), ("embeddings",), ("block.0",), ("block.3",), tuple(NAMES)]


def test_bad_schedules_are_clear():
    with pytest.raises(ValueError, match="unknown groups \\['block.9'\\]"):
        Schedule(NAMES, [(0, ("block.9",))], {"block.9": 1.0}, 10)
    with pytest.raises(ValueError, match="first phase must start at step 0"):
        Schedule(NAMES, [(3, ("head",))], {"head": 1.0}, 10)
    with pytest.raises(ValueError, match="no learning rate for trainable group"):
        Schedule(NAMES, [(0, ("head",))], {}, 10)
    with pytest.raises(ValueError, match="unknown schedule 'steps'"):
        Schedule(NAMES, [(0, ("head",))], {"head": 1.0}, 10, curve="steps")


def test_new_groups_join_the_live_optimizer_and_old_state_is_kept():
    model = tiny_model("bert", num_layers=4)
    schedule = gradual_unfreezing(NAMES, every=2, total_steps=10, lrs=discriminative_lrs(NAMES, 1e-2))
    follow_schedule(model, schedule, 0)
    optimizer = make_optimizer(model, schedule.lrs)
    ids, mask, labels = toy_task(8)

    def step():
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    head_weight = model.classifier.weight
    state_before = optimizer.state[head_weight]["exp_avg"].clone()
    follow_schedule(model, schedule, 2, optimizer)
    assert [g["layer_group"] for g in optimizer.param_groups] == ["head", "head", "block.3", "block.3"]
    assert optimizer.param_groups[2]["lr"] == pytest.approx(schedule.lrs["block.3"])
    assert torch.equal(optimizer.state[head_weight]["exp_avg"], state_before)  # state kept, not reset
    step()
    assert optimizer.state[head_weight]["step"].item() == 2
    block_weight = model.bert.encoder.layer[3].output.dense.weight
    assert optimizer.state[block_weight]["step"].item() == 1
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held})  # nobody joined twice


def test_fit_follows_a_gradual_schedule_and_frozen_groups_never_move():
    model = tiny_model("bert", num_layers=4)
    data = toy_task(64)
    schedule = gradual_unfreezing(NAMES, every=4, total_steps=16, lrs=discriminative_lrs(NAMES, 1e-2), start=1)
    before = fingerprint(model)
    history = fit(model, data, data, epochs=2, batch_size=8, schedule=schedule, progress=False)
    assert history.phases == [(0, ["head"]), (4, ["block.3", "head"]), (8, ["block.2", "block.3", "head"]),
                              (12, ["block.1", "block.2", "block.3", "head"])]
    moved = set(changed_parameters(before, fingerprint(model)))
    for group in layer_groups(model):
        names = set(group.parameters)
        if group.name in ("embeddings", "block.0"):
            assert not names & moved, f"{group.name} never thawed but moved"
        else:
            assert names & moved, f"{group.name} thawed but did not move"


def test_frozen_parameters_never_move_with_stale_zero_grads_and_weight_decay():
    model = tiny_model("bert", num_layers=2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # stale zeros, as zero_grad(set_to_none=False) leaves them
    freeze_to(model, -2)
    before = fingerprint(model)
    fit(model, toy_task(32), epochs=2, batch_size=8, lr=1e-2, weight_decay=0.9, progress=False)
    assert assert_frozen_unchanged(model, before) > 0
    # chain-thaw freezes groups again after they trained: they must stop moving then
    model = tiny_model("bert", num_layers=2)
    schedule = chain_thaw(NAMES[:1] + ["block.0", "block.1", "head"], every=2, total_steps=8, lrs=1e-2)
    fit(model, toy_task(16), epochs=1, batch_size=2, schedule=schedule, weight_decay=0.9, progress=False)
    assert model.classifier.weight.grad is None


def test_compiled_model_with_a_changing_schedule_is_refused():
    model = tiny_model("bert", num_layers=2)
    names = [g.name for g in layer_groups(model)]
    compiled = torch.compile(model)
    with pytest.raises(ValueError, match="torch.compile.*139476"):
        fit(compiled, toy_task(8), schedule=gradual_unfreezing(names, 1, 4, 1e-3), progress=False)


def test_gradient_checkpointing_with_frozen_embeddings_still_trains_the_blocks():
    model = tiny_model("bert", num_layers=2)
    freeze(model, "embeddings")
    enable_gradient_checkpointing(model)
    model.train()
    ids, mask, labels = toy_task(4)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert model.bert.embeddings.word_embeddings.weight.grad is None
