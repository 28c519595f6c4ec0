import pytest
import torch

from layerfreeze import Adaptive, Expansion, Gradual, Lisa, Lora, Plan, Strategy, layer_groups, tiny_model
from layerfreeze.core.strategy import apply_preset
from layerfreeze.study.runs import fresh_copy, run_strategy
from layerfreeze.core.strategy import PRESETS


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


@pytest.mark.parametrize("strategy, trains_at_start", [
    (Strategy("top 1", "top", k=1), ["block.2", "head"]),
    (Strategy("plan", plan=Plan("middle", ["block.1", "head"])), ["block.1", "head"]),
    (Strategy("ULMFiT", schedule=Gradual(every=2)), ["head"]),
    (Strategy("LISA", schedule=Lisa(gamma=1, every=2)), None),  # one random block, embeddings and head
    (Strategy("adaptive", schedule=Adaptive(interval=2)), ["block.0", "block.1", "block.2", "head"]),
    (Strategy("expansion", adapter=Expansion(every=3)), ["block.3", "head"]),
])
def test_prepare_sets_up_every_kind_of_strategy(strategy, trains_at_start):
    model, schedule = strategy.prepare(tiny_model("bert", num_layers=3), total_steps=12)
    trains = [g.name for g in layer_groups(model) if g.trainable is not False]
    assert (schedule is None) == strategy.fixed
    if trains_at_start is None:
        assert trains[0] == "embeddings" and trains[-1] == "head" and len(trains) == 3
    else:
        assert trains == trains_at_start
    if schedule is not None:
        assert sorted(schedule.trainable_at(0)) == sorted(trains)


def test_prepare_wraps_lora_and_expands_only_once():
    model, _ = Strategy("LoRA", adapter=Lora(rank=2)).prepare(tiny_model("bert", num_layers=2), 4)
    assert hasattr(model, "get_base_model") and any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    strategy, base = Strategy("expansion", adapter=Expansion(every=1)), tiny_model("bert", num_layers=2)
    assert strategy.expand(base) == ["block.1", "block.3"]
    strategy.prepare(base, 4)  # already expanded: the same four blocks, not eight
    assert [g.name for g in layer_groups(base) if g.trainable] == ["block.1", "block.3", "head"]


@pytest.mark.parametrize("options, message", [
    (dict(schedule="gradual"), "schedule must be one of lf.Gradual"),
    (dict(adapter="lora"), "adapter must be one of lf.Lora"),
    (dict(schedule=Gradual(), adapter=Lora()), "sets schedule and adapter"),
    (dict(preset="top", k=1, schedule=Gradual()), "preset and k apply only without a schedule"),
    (dict(preset="middle"), "unknown preset 'middle'"),
])
def test_a_strategy_names_what_is_wrong(options, message):
    with pytest.raises(ValueError, match=message):
        Strategy("bad", **options)


@pytest.mark.parametrize("strategy", [Strategy("ULMFiT", schedule=Gradual()), Strategy("LoRA", adapter=Lora(rank=2))],
                         ids=["schedule", "adapter"])
def test_run_strategy_runs_schedules_and_adapters(strategy):
    from tests.test_training import toy_task
    data = torch.utils.data.TensorDataset(*toy_task(48))
    row = run_strategy(tiny_model("bert", num_layers=2), strategy, data, data, data, epochs=1, batch_size=16,
                       progress=False)
    assert row["name"] == strategy.name and 0 <= row["test_accuracy"] <= 1 and not row["cached"]
    kind = "schedule" if strategy.schedule else "adapter"
    assert row[kind]["kind"] == type(getattr(strategy, kind)).__name__
    assert 0 < row["trainable_params"] <= row["total_params"]
