"""The noise-surviving timer's statistics, on synthetic step times and a fake clock (no real time is asserted), and
the ideal step time's arithmetic."""

import math

import pytest
import torch

from layerfreeze import freeze_to, layer_groups, tiny_model
from layerfreeze.core.costs import ideal_cache_speedup, step_seconds as ideal_step_seconds
from layerfreeze.study.timing import Spread, StepTimer, interleave, profile_groups
from layerfreeze.study.timing import GroupCosts, steady_step_seconds


class FakeMachine:
    """A fake clock and configurations whose steps take a set time, times a load factor that changes per run."""

    def __init__(self, loads=None):
        self.now = 0.0
        self.loads = iter(loads) if loads is not None else None
        self.calls = []

    def clock(self):
        return self.now

    def configuration(self, name, step_seconds, steps=5, first_step=10.0):
        def run():
            self.calls.append(name)
            load = next(self.loads) if self.loads is not None else 1.0
            times = [first_step] + [step_seconds * load] * (steps - 1)
            self.now += sum(times)
            return times
        return run


def test_step_timer_gives_the_gaps_between_marks():
    ticks = iter([5.0, 5.5, 7.0])
    timer = StepTimer("cpu", clock=lambda: next(ticks))
    for _ in range(3):
        timer.mark()
    assert timer.seconds() == [0.5, 1.5]


def test_steady_step_drops_the_warm_up():
    assert steady_step_seconds([100.0, 100.0, 1.0, 3.0, 2.0], warmup=2) == 2.0
    with pytest.raises(ValueError, match="warmup=2"):
        steady_step_seconds([1.0, 2.0], warmup=2)


def test_spread_is_the_median_with_a_confidence_interval_for_it():
    spread = Spread.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (spread.median, spread.low, spread.high, spread.count) == (3.0, 1.0, 5.0, 5)
    assert spread.width == pytest.approx(4 / 3) and spread.coverage == pytest.approx(1 - 2 / 32)
    eight = Spread.of([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0])  # 2nd smallest to 2nd largest: 93% of the time
    assert (eight.low, eight.high) == (2.0, 7.0) and eight.coverage == pytest.approx(1 - 2 * 9 / 256)
    assert Spread.of([2.0]).width == 0 and Spread.of([2.0]).coverage == 1
    assert spread.overlaps(Spread(5.5, 5.0, 6.0, 3)) and not spread.overlaps(Spread(6.0, 5.5, 7.0, 3))
    assert f"{spread:.1f}" == "3.0 [1.0-5.0]"


def test_the_interval_covers_the_median_as_often_as_it_says():
    """Many samples of a skewed noise: the interval encloses the true median at least 90% of the time."""
    generator = torch.Generator().manual_seed(0)
    for count in (5, 8, 12):
        draws = torch.empty(4000, count).exponential_(generator=generator)  # true median: ln 2
        spreads = [Spread.of(row.tolist()) for row in draws]
        hits = sum(s.low <= math.log(2) <= s.high for s in spreads) / len(spreads)
        assert hits >= 0.9 - 0.015 and hits == pytest.approx(spreads[0].coverage, abs=0.015)


def test_configurations_run_interleaved():
    machine = FakeMachine()
    runs = {name: machine.configuration(name, 0.1) for name in ("a", "b", "c")}
    interleave(runs, [("a", "b")], min_rounds=3, clock=machine.clock)
    assert machine.calls == ["a", "b", "c"] * 3


def test_a_burst_of_load_hitting_a_round_leaves_the_paired_ratio_alone():
    # a is 2x slower than b; round 2 runs under 5x load. Timed separately (all a, then all b) the burst would land
    # on one side; within a round it lands on both.
    machine = FakeMachine(loads=[1, 1, 5, 5, 1, 1])
    runs = {"a": machine.configuration("a", 0.2), "b": machine.configuration("b", 0.1)}
    result = interleave(runs, [("a", "b")], clock=machine.clock)
    assert result.ratios["a", "b"].median == pytest.approx(2.0)
    assert result.ratios["a", "b"].width == pytest.approx(0.0)
    assert not result.noisy["a", "b"] and result.rounds == 3
    assert result.step_seconds["a"] == pytest.approx([0.2, 1.0, 0.2]), "the burst shows in the step times"


def test_a_wide_range_adds_rounds_until_the_cap_then_is_marked_noisy():
    loads_a = [1, 3] * 20  # a's load alternates, b's does not: the per-round ratio swings 1x-3x
    machine = FakeMachine(loads=[x for pair in zip(loads_a, [1] * 40) for x in pair])
    runs = {"a": machine.configuration("a", 0.1), "b": machine.configuration("b", 0.1)}
    result = interleave(runs, [("a", "b")], max_rounds=8, max_seconds=1e9, clock=machine.clock)
    assert result.rounds == 8 and result.noisy["a", "b"]


def test_the_time_cap_stops_the_rounds():
    machine = FakeMachine(loads=[x for pair in zip([1, 3] * 20, [1] * 40) for x in pair])
    runs = {"a": machine.configuration("a", 0.1), "b": machine.configuration("b", 0.1)}
    # each round takes 2 runs x (10 s first step + 4 steps): the cap of 50 s is passed in round 3
    result = interleave(runs, [("a", "b")], min_rounds=2, max_rounds=30, max_seconds=50, clock=machine.clock)
    assert result.rounds == 3 and result.noisy["a", "b"]


def test_ratios_must_name_known_configurations():
    with pytest.raises(ValueError, match=r"not in runs: \['z'\]"):
        interleave({"a": lambda: [1.0, 1.0]}, [("a", "z")])


def unit_costs(model, backward=2.0, backward_input=1.0, optimizer=0.0):
    names = [g.name for g in layer_groups(model)]
    forward = {n: 0.0 if n in ("embeddings", "head") else 1.0 for n in names}
    return GroupCosts(forward, {n: backward * f for n, f in forward.items()},
                      {n: backward_input * f for n, f in forward.items()}, optimizer,
                      sum(p.numel() for p in model.parameters()))


@pytest.mark.parametrize("trainable_from, uncached, cached", [
    (-1, 6.0, 0.0),  # head only: six forwards; with the cache nothing but the (free) head
    (-2, 6.0 + 1.0, 1.0 + 1.0),  # the top block: its weight gradients only
    (-3, 6.0 + 1.0 + 2.0, 2.0 + 1.0 + 2.0),  # top 2: the lower one's weight gradients, the upper one's full backward
    (0, 6.0 + 12.0, 6.0 + 12.0),  # everything trains: no prefix to cache
])
def test_ideal_step_adds_what_the_step_must_run(trainable_from, uncached, cached):
    model = tiny_model("bert", num_layers=6)
    freeze_to(model, trainable_from)
    costs = unit_costs(model)
    assert ideal_step_seconds(model, costs) == pytest.approx(uncached)
    assert ideal_step_seconds(model, costs, cache_prefix=True) == pytest.approx(cached)


def test_frozen_blocks_above_a_trainable_one_pass_input_gradients():
    model = tiny_model("bert", num_layers=4)
    freeze_to(model, -1)
    for p in layer_groups(model)[1].parameters.values():
        p.requires_grad_(True)  # bottom block + head: blocks 1-3 pass gradients down without weight gradients
    costs = unit_costs(model)
    assert ideal_step_seconds(model, costs) == pytest.approx(4.0 + 1.0 + 3 * 1.0)


def test_the_optimizer_costs_its_trainable_share():
    model = tiny_model("bert", num_layers=2)
    freeze_to(model, -1)
    share = sum(p.numel() for p in model.parameters() if p.requires_grad) / sum(p.numel() for p in model.parameters())
    assert ideal_step_seconds(model, unit_costs(model, optimizer=10.0)) == pytest.approx(2.0 + 10.0 * share)
    assert ideal_cache_speedup(model, unit_costs(model, optimizer=10.0)) == pytest.approx((2 + 10 * share) /
                                                                                          (10 * share))


def test_profile_groups_measures_every_group_on_a_copy():
    model = tiny_model("bert", num_layers=3)
    freeze_to(model, -1)
    data = (torch.randint(5, 99, (4, 8)), torch.ones(4, 8, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    costs = profile_groups(model, data, steps=2, warmup=1)
    names = [g.name for g in layer_groups(model)]
    for table in (costs.forward, costs.forward_frozen, costs.backward, costs.backward_input):
        assert list(table) == names and all(seconds >= 0 for seconds in table.values())
    assert costs.total_params == sum(p.numel() for p in model.parameters())
    assert not layer_groups(model)[0].trainable, "profiling must leave the caller's model as it was"
    assert list(costs.table().columns) == ["forward", "forward_frozen", "backward", "backward_input"]


def test_a_frozen_prefix_runs_forward_without_a_graph():
    model = tiny_model("bert", num_layers=6)
    freeze_to(model, -2)
    costs = unit_costs(model)
    costs.forward_frozen = {name: seconds / 2 for name, seconds in costs.forward.items()}
    assert ideal_step_seconds(model, costs) == pytest.approx(5 * 0.5 + 1.0 + 1.0)  # block.5 trains, records its graph


# --- throughput's arithmetic ---------------------------------------------------------------------------------------


def _linear_weights(module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_step_flops_counts_six_per_trainable_weight_and_less_for_what_is_frozen():
    from layerfreeze.core.freezing import freeze_to as freeze
    from layerfreeze.study.timing import step_flops
    model = tiny_model("bert", num_layers=4)
    block = _linear_weights(model.bert.encoder.layer[0])
    head = _linear_weights(model.bert.pooler) + _linear_weights(model.classifier)
    batch, seq = 4, 8
    tokens = batch * seq
    assert step_flops(model, batch, seq) == 6 * (4 * block * tokens + head * batch)
    freeze(model, -3)  # the top 2 blocks and the head train
    lowest_and_above = (2 + 2) * block * tokens + 6 * block * tokens + 6 * head * batch  # weight gradients only
    assert step_flops(model, batch, seq) == 2 * 2 * block * tokens + lowest_and_above
    assert step_flops(model, batch, seq, cache_prefix=True) == lowest_and_above
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        step_flops(model, batch, seq)


def test_the_peak_names_its_source_and_bad_sizes_are_refused():
    from layerfreeze.study.timing import DATASHEET_PEAK_TFLOPS, device_peak, matmul_flops_per_second
    flops, source = device_peak("cpu")
    assert flops > 0 and source.startswith("measured: ") and "GFLOP/s" in source
    keys = [key for key, _, _ in DATASHEET_PEAK_TFLOPS]  # a specific name before one it contains
    assert all(keys.index(a) < keys.index(b) for a in keys for b in keys if b in a and a != b)
    with pytest.raises(ValueError, match="size=0"):
        matmul_flops_per_second(size=0)
