"""Every signal and plan on a planted answer: a low-rank signal in noise of known sigma for Spectrum's SNR, labels
planted in one layer for the probe, a gradient that decays at a known rate for adaptive freezing, and
LLaMA-Factory's documented spellings for its freeze plan.

New names are read from their modules inside each test, so that on code without them only the tests that need
them fail."""

import math

import pandas as pd
import pytest
import torch

from layerfreeze.core import freezing, plans, signals, training
from layerfreeze.core.layers import layer_groups
from layerfreeze.base.models import tiny_model
from layerfreeze.course import cli, train_command

from .test_training import toy_task

SIGMA = 0.02


def noise(rows, columns, seed):
    return SIGMA * torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))


def planted(rows, columns, rank=8, strength=3.0, seed=0):
    """Noise plus a rank-``rank`` signal whose singular values are ``strength`` x the Marchenko-Pastur edge."""
    g = torch.Generator().manual_seed(seed + 1000)
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=g))
    v, _ = torch.linalg.qr(torch.randn(columns, rank, generator=g))
    edge = SIGMA * (math.sqrt(rows) + math.sqrt(columns))
    return noise(rows, columns, seed) + strength * edge * u @ v.T


# --- Spectrum's SNR --------------------------------------------------------------------------------------------------

def test_mp_snr_counts_exactly_the_planted_signal():
    result = signals.matrix_snr_mp(planted(256, 256))
    assert result["mp_signal_values"] == 8
    assert result["mp_sigma"] == pytest.approx(SIGMA, rel=0.05)
    for seed in range(5):
        assert signals.matrix_snr_mp(noise(256, 256, seed))["mp_signal_values"] == 0


def test_mp_snr_ranks_the_planted_matrix_above_noise_at_every_shape():
    for rows, columns in [(256, 256), (256, 1024), (1024, 256), (64, 32)]:
        rank = min(rows, columns) // 16
        signal = signals.matrix_snr_mp(planted(rows, columns, rank=rank))
        pure = signals.matrix_snr_mp(noise(rows, columns, 7))
        assert signal["mp_snr"] > pure["mp_snr"] == 0.0, (rows, columns)
        assert signal["mp_signal_values"] == rank and math.isfinite(signal["mp_snr"])


def test_mp_snr_does_not_depend_on_the_matrix_scale():
    matrix = planted(256, 256)
    assert signals.matrix_snr_mp(10 * matrix)["mp_snr"] == pytest.approx(signals.matrix_snr_mp(matrix)["mp_snr"],
                                                                         rel=1e-4)


def test_the_reference_score_is_kept_as_it_is_and_fails_the_planted_test():
    """Spectrum's own score, kept for comparison: it ranks the planted matrix below noise and divides by scale."""
    signal, pure = signals.matrix_snr(planted(256, 256)), signals.matrix_snr(noise(256, 256, 0))
    assert signal["snr_ratio"] < pure["snr_ratio"]
    assert pure["signal_values"] > 30  # of 256 pure-noise values
    scaled = signals.matrix_snr(10 * planted(256, 256))["snr_ratio"]
    assert scaled == pytest.approx(signal["snr_ratio"] / 10, rel=1e-3)


def test_the_reference_score_is_finite_on_rectangular_matrices():
    # every value of a wide noise matrix sits above the interquartile bound; the reference then counts noise as 1.0
    result = signals.matrix_snr(noise(256, 1024, 0))
    assert result["signal_values"] == 256 and math.isfinite(result["snr"]) and math.isfinite(result["snr_ratio"])
    frame = signals.spectrum_snr(tiny_model("gpt2", num_layers=6))
    assert all(map(math.isfinite, frame["snr_ratio"])) and all(map(math.isfinite, frame["mp_snr"]))


def test_random_weights_sit_under_the_noise_edge():
    model = tiny_model("llama", num_layers=4)
    frame = signals.spectrum_snr(model)
    total = sum(min(model.get_parameter(n).shape) for n in frame["parameter"])  # singular values in all
    assert frame["mp_signal_values"].sum() <= 0.01 * total
    assert frame["signal_values"].sum() >= 0.2 * total  # the reference counts a fifth or more as signal


def _plant_in(model, parameter):
    weight = model.get_parameter(parameter)
    with torch.no_grad():
        weight.copy_(planted(*weight.shape, rank=4, seed=3).to(weight.dtype))


def test_the_snr_plan_finds_the_block_with_a_planted_signal():
    model = tiny_model("gpt2", num_layers=6)
    for name, param in model.named_parameters():
        if param.ndim == 2:
            with torch.no_grad():
                param.copy_(noise(*param.shape, seed=hash(name) % 1000))
    _plant_in(model, "transformer.h.4.mlp.c_fc.weight")
    _plant_in(model, "transformer.h.2.attn.c_attn.weight")
    frame = signals.spectrum_snr(model)
    plan = signals.plan_from_snr(frame, fraction=1 / 6)
    report = plans.apply_plan(model, plan)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "transformer.h.4.mlp.c_fc.weight" in trained and "transformer.h.2.attn.c_attn.weight" in trained
    assert not any(f"h.{i}.mlp.c_fc" in n for n in trained for i in (0, 1, 2, 3, 5))
    assert report.group_states["embeddings"] == "trainable"  # Spectrum always trains the embeddings


def test_the_snr_plan_rounds_down_like_the_reference():
    frame = pd.DataFrame({"parameter": [f"b.{i}.{k}.weight" for i in range(6) for k in "qv"],
                          "group": [f"block.{i}" for i in range(6) for _ in "qv"], "kind": list("qv") * 6,
                          "mp_snr": [float(i) for i in range(12)], "snr_ratio": [float(-i) for i in range(12)]})
    plan = signals.plan_from_snr(frame, fraction=0.25)  # int(0.25 * 6) = 1 of each kind, where ceil gave 2
    assert [s.pattern for s in plan.selection if hasattr(s, "pattern")] == [r"^b\.5\.q\.(weight|bias)$",
                                                                            r"^b\.5\.v\.(weight|bias)$"]
    assert plan.selection[-2:] == ["embeddings", "head"]
    reference = signals.plan_from_snr(frame, fraction=0.25, score="snr_ratio", train_embeddings=False)
    assert reference.selection[0].pattern == r"^b\.0\.q\.(weight|bias)$" and reference.selection[-1] == "head"
    with pytest.raises(ValueError, match="score"):
        signals.plan_from_snr(frame, score="snr")


# --- the probe and the other signals ---------------------------------------------------------------------------------

def test_the_probe_finds_labels_planted_in_one_layer(monkeypatch):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (128,), generator=g)
    layers = [torch.randn(128, 16, generator=g) for _ in range(5)]  # embeddings' output and four blocks
    for layer in layers[2:]:
        layer[:, 3] += 4 * (2 * labels - 1)  # planted from block.1's output up
    split = {"train": [x[:64] for x in layers], "eval": [x[64:] for x in layers]}
    calls = iter(["train", "eval"])
    monkeypatch.setattr(signals, "hidden_states", lambda *args, **kwargs: split[next(calls)])
    data = lambda part: (torch.zeros(64, 4, dtype=torch.long), torch.ones(64, 4), labels[part])
    frame = signals.probe_by_layer(tiny_model("bert", num_layers=4), data(slice(0, 64)), data(slice(64, None)))
    assert frame["probe_accuracy"].iloc[:2].max() < 0.75 and frame["probe_accuracy"].iloc[2:].min() > 0.95
    # the labels are in block.1's output (layer 2): block.1 stays frozen, the blocks above it and the head train
    assert signals.plan_from_probe(frame).selection == ["block.2", "block.3", "head"]


def test_a_decoders_top_probe_layer_is_labelled_with_its_final_norm():
    model = tiny_model("gpt2", num_layers=3)
    frame = signals.probe_by_layer(model, toy_task(32, seed=1), toy_task(32, seed=2))
    assert frame["output of"].to_list() == ["embeddings", "block.0", "block.1", "block.2 + transformer.ln_f"]
    seen = {}
    model.eval()  # no dropout: both sides run the same computation
    model.transformer.h[2].register_forward_hook(  # a block returns a tuple in older transformers, a tensor in newer
        lambda m, a, out: seen.update(block=out[0] if isinstance(out, tuple) else out))
    ids, mask, _ = toy_task(4)
    with torch.no_grad():
        top = model.transformer(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        assert torch.allclose(top, model.transformer.ln_f(seen["block"]))  # what the label says
    assert signals.probe_by_layer(tiny_model("bert", num_layers=2), toy_task(32), toy_task(32, seed=2))[
        "output of"].iloc[-1] == "block.1"


def modes(model):
    return {name: module.training for name, module in model.named_modules()}


@pytest.mark.parametrize("signal", ["gradient_norms", "probe_by_layer"])
def test_signals_keep_the_eval_pinning_they_found(signal):
    model = tiny_model("bert", num_layers=2)
    freezing.train_only(model, "head", eval_frozen=True)
    model.train()
    model(**dict(zip(("input_ids", "attention_mask"), toy_task(4)[:2])))  # the hooks pin the frozen groups
    pinned, before = freezing.frozen_in_eval(model), modes(model)
    assert "embeddings" in pinned and not before["bert.embeddings.dropout"]
    if signal == "gradient_norms":
        signals.gradient_norms(model, toy_task(32), batches=1)
    else:
        signals.probe_by_layer(model, toy_task(32), toy_task(32, seed=2))
    assert freezing.frozen_in_eval(model) == pinned
    assert modes(model) == before  # the embeddings' dropout stays off, the head's stays on


# --- adaptive freezing -----------------------------------------------------------------------------------------------

def run_planted_gradient(rule, factors, interval=5, threshold=0.3):
    """Train a tiny BERT on a loss whose gradient is ``factors[k]`` times a fixed one in interval ``k`` (Adam)."""
    model = tiny_model("bert", num_layers=3)
    groups = layer_groups(model)
    names = [g.name for g in groups]
    plan = plans.adaptive_freezing(names, interval * len(factors), 1e-3, interval=interval, window=1,
                                   threshold=threshold, rule=rule, trainable=names[1:], curve="constant")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, interval * len(factors) + 1):
        factor = factors[(step - 1) // interval]
        loss = sum((factor * p).sum() for g in groups[1:-1] for p in g.parameters.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        plan.observe(step, model, groups)
    return plan


def test_the_gradient_rule_does_not_freeze_a_gradient_that_halves_every_interval():
    halving = [0.5 ** k for k in range(8)]
    plan = run_planted_gradient("gradient", halving)
    ratios = [b / a for a, b in zip(plan.norms["block.0"], plan.norms["block.0"][1:])]
    assert ratios and all(r == pytest.approx(0.5, rel=1e-3) for r in ratios)  # a 50% change each interval
    assert plan.frozen_at == []
    plan.release_hooks()


def test_the_gradient_rule_freezes_once_the_gradient_stops_changing():
    plan = run_planted_gradient("gradient", [1.0, 0.5, 0.25, 0.25, 0.25, 0.25])
    assert plan.frozen_at and plan.frozen_at[0] == (20, "block.0")  # the first interval equal to the one before


def test_the_update_rule_reads_the_halving_gradient_as_a_small_change():
    """What the update-norm rule measures under Adam: the halving reads as a smaller change, and freezes at 0.3."""
    plan = run_planted_gradient("update", [0.5 ** k for k in range(8)])
    changes = [1 - b / a for a, b in zip(plan.norms["block.0"], plan.norms["block.0"][1:])]
    assert max(changes[:2]) < 0.35 and plan.frozen_at


def test_the_gradient_rule_inside_fit_measures_from_the_second_interval_and_freezes_bottom_up():
    model = tiny_model("bert", num_layers=4)
    names = [g.name for g in layer_groups(model)]
    freezing.train_only(model, *names[1:], eval_frozen=True)
    plan = plans.adaptive_freezing(names, 24, 1e-3, interval=2, window=1, threshold=100.0, rule="gradient",
                                   trainable=names[1:])
    history = training.fit(model, toy_task(64), toy_task(32), epochs=6, batch_size=16, schedule=plan,
                           cache_prefix=True, progress=False)
    assert [g for _, g in plan.frozen_at] == ["block.0", "block.1", "block.2"]
    assert plan.frozen_at[0][0] == 6  # measured at steps 4 and 6: the first interval began before the hooks
    assert all(norm > 0 for norm in plan.norms["block.0"])
    assert history.cached_groups == ["embeddings", "block.0", "block.1", "block.2"]
    plan.release_hooks()
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


def test_adaptive_freezing_names_a_bad_rule():
    with pytest.raises(ValueError, match="rule"):
        plans.adaptive_freezing(["embeddings", "block.0", "head"], 10, 1e-3, rule="autofreeze")


# --- LLaMA-Factory's freeze plan -------------------------------------------------------------------------------------

def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("modules, expected", [
    ("self_attn", {"self_attn"}),
    ("mlp,self_attn", {"mlp", "self_attn"}),
    ("mlp,attention", {"mlp", "self_attn"}),  # attention: this library's alias, in every family
    ("all", {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}),
])
def test_llama_factory_spellings_of_trainable_modules(modules, expected):
    model = tiny_model("llama", num_layers=4)
    plans.apply_plan(model, plans.factory_plan(model, 2, modules))
    inside = {n for n in trainable(model) if ".layers." in n}
    assert {n.split(".")[3] for n in inside} == expected
    assert {n.split(".")[2] for n in inside} == {"2", "3"}


def test_llama_factory_extra_modules_and_the_final_norm_only_when_asked():
    model = tiny_model("llama", num_layers=4)
    plans.apply_plan(model, plans.factory_plan(model, 2))
    assert {n for n in trainable(model) if ".layers." not in n} == {"score.weight"}  # no model.norm
    plans.apply_plan(model, plans.factory_plan(model, 2, "all", "embed_tokens,norm"))
    assert {n for n in trainable(model) if ".layers." not in n} == {"model.embed_tokens.weight",
                                                                     "model.norm.weight", "score.weight"}
    assert not any("input_layernorm" in n for n in trainable(model) if ".layers.0." in n)
    with pytest.raises(ValueError, match="extra_modules.*embed_tokens"):
        plans.factory_plan(model, 2, "all", "embed_token")
    with pytest.raises(ValueError, match="trainable_modules.*self_attn"):
        plans.factory_plan(model, 2, "mlp,self_atn")


def test_a_tied_causal_lm_keeps_its_head_frozen_under_the_factory_plan_and_needs_untie_to_train_it():
    model = tiny_model("gpt2", task="causal-lm", num_layers=4)
    plans.apply_plan(model, plans.factory_plan(model, 2))  # the pretrained LM head is no new head: it stays frozen
    assert not {"lm_head.weight", "transformer.wte.weight"} & set(trainable(model))
    plan = plans.factory_plan(model, 2, extra_modules="lm_head")
    with pytest.raises(ValueError, match="untie=True"):
        plans.apply_plan(model, plan)
    ids, mask, _ = toy_task(4)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    report = plans.apply_plan(model, plan, untie=True)
    assert report.ties and "lm_head.weight" in trainable(model)
    assert "transformer.wte.weight" not in trainable(model) and "transformer.ln_f.weight" not in trainable(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)


def test_the_cli_takes_untie_and_llama_factory_spellings():
    args = cli.build_parser().parse_args(["train", "--model", "tiny:llama", "--trainable-layers", "2",
                                          "--trainable-modules", "mlp,self_attn", "--extra-modules",
                                          "embed_tokens,norm", "--untie"])
    assert args.untie and args.trainable_modules == "mlp,self_attn"
    lone = cli.build_parser().parse_args(["train", "--model", "tiny:llama", "--untie"])
    assert "--untie" in train_command.conflicting_flags(lone)
