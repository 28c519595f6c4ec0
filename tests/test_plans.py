"""Plans: LLaMA-Factory's freeze plan, LISA, adaptive freezing and block expansion, alone and inside fit."""

import json

import pytest
import torch

from layerfreeze import apply_plan, evaluate, factory_plan, fingerprint, fit, layer_groups, tiny_model, train_only
from layerfreeze.core.plans import adaptive_freezing, expand_blocks, lisa
from layerfreeze.__main__ import main
from layerfreeze.core.plans import plateaued

from .test_training import toy_task

NAMES = ["embeddings", "block.0", "block.1", "block.2", "block.3", "head"]


# --- LLaMA-Factory ---------------------------------------------------------------------------------------------------

def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_factory_plan_sign_semantics_and_modules(bert):
    apply_plan(bert, factory_plan(bert, 2))
    trained = trainable_names(bert)
    assert any(".layer.3." in n for n in trained) and any(".layer.2." in n for n in trained)
    assert not any(".layer.1." in n or ".layer.0." in n or "embeddings" in n for n in trained)
    assert any("classifier" in n for n in trained)

    apply_plan(bert, factory_plan(bert, -1, "attention", ["embeddings"]))
    trained = trainable_names(bert)
    blocks = {n for n in trained if ".layer." in n}
    assert blocks and all(".layer.0.attention." in n for n in blocks)
    assert any("word_embeddings" in n for n in trained)

    apply_plan(bert, factory_plan(bert, 1, "mlp"))
    blocks = {n for n in trainable_names(bert) if ".layer." in n}
    assert blocks and all(".layer.3.intermediate." in n or ".layer.3.output." in n for n in blocks)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_factory_plan_on_decoders(family):
    model = tiny_model(family, num_layers=3)
    for kind in ("attention", "mlp"):
        apply_plan(model, factory_plan(model, 1, kind))
        assert any(".2." in n for n in trainable_names(model))


def test_factory_plan_errors_name_the_argument(bert):
    with pytest.raises(ValueError, match="trainable_layers"):
        factory_plan(bert, 0)
    with pytest.raises(ValueError, match="trainable_layers"):
        factory_plan(bert, 5)
    with pytest.raises(ValueError, match="trainable_modules"):
        factory_plan(bert, 1, "nothing_like_this.*")
    with pytest.raises(ValueError, match="extra_modules"):
        factory_plan(bert, 1, extra_modules=["decoder"])


@pytest.mark.parametrize("argv, message", [
    (["--trainable-layers", "2", "--schedule", "gradual"], "is a fixed plan; --schedule gradual decides what trains"),
    (["--trainable-modules", "mlp"], "need --trainable-layers N"),
    (["--trainable-layers", "0"], "a whole number other than 0"),
])
def test_cli_refuses_contradictory_flags_before_loading(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "tiny:bert", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


# --- LISA ------------------------------------------------------------------------------------------------------------

def test_lisa_samples_gamma_blocks_with_embeddings_and_head_always_on():
    schedule = lisa(NAMES, gamma=2, every=5, total_steps=50, lrs=1e-3, seed=3)
    assert [s for s, _ in schedule.phases] == list(range(0, 50, 5))
    for _, groups in schedule.phases:
        assert "embeddings" in groups and "head" in groups
        assert len([g for g in groups if g.startswith("block.")]) == 2
    draws = {tuple(g) for _, g in schedule.phases}
    assert len(draws) > 1  # it does resample
    assert schedule.phases == lisa(NAMES, gamma=2, every=5, total_steps=50, lrs=1e-3, seed=3).phases
    assert schedule.phases != lisa(NAMES, gamma=2, every=5, total_steps=50, lrs=1e-3, seed=4).phases
    with pytest.raises(ValueError, match="gamma"):
        lisa(NAMES, gamma=5, every=5, total_steps=50, lrs=1e-3)


def test_lisa_in_fit_releases_the_state_of_deactivated_blocks(bert):
    data = toy_task(64)
    schedule = lisa(NAMES, gamma=1, every=2, total_steps=8, lrs=1e-3, seed=0)
    seen = []

    def check(step, loss):
        active = set(schedule.trainable_at(step - 1))
        held = {g["layer_group"] for g in optimizer_of[0].param_groups}
        with_state = {name for name, p in named.items() if p in optimizer_of[0].state}
        seen.append((held <= active, all(owner[n] in active for n in with_state)))

    named = dict(bert.named_parameters())
    owner = {n: g.name for g in layer_groups(bert) for n in g.parameters}
    optimizer_of = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):  # keep a handle on fit's optimizer
        if not optimizer_of:
            optimizer_of.append(self)
        return original_step(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        history = fit(bert, data, epochs=2, batch_size=16, schedule=schedule, progress=False, on_step_end=check)
    finally:
        torch.optim.AdamW.step = original_step
    assert history.steps == 8 and len(history.phases) == 4
    assert seen and all(held and state for held, state in seen)


# --- adaptive freezing -----------------------------------------------------------------------------------------------

def test_plateau_rule_on_a_synthetic_update_curve():
    # an update norm that falls, then flattens: the rule fires only once the last `window` values are flat
    curve = [8.0, 4.0, 2.0, 1.2, 1.0, 0.98, 0.97, 0.97]
    fired = [i for i in range(len(curve)) if plateaued(curve[:i + 1], window=2, threshold=0.05)]
    assert fired[0] == 6 and all(i in fired for i in range(6, len(curve)))
    assert not plateaued([1.0, 2.0, 4.0, 8.0], window=1, threshold=0.5)  # still changing


def test_adaptive_freezing_freezes_bottom_up_and_the_cache_takes_over(bert):
    data = toy_task(64)
    names = [g.name for g in layer_groups(bert)]
    train_only(bert, *names[1:], eval_frozen=True)
    plan = adaptive_freezing(names, 24, 1e-3, interval=2, window=1, threshold=100.0, trainable=names[1:])
    block0 = list(layer_groups(bert)[1].parameters.values())
    snapshots = {}

    def remember(step, loss):  # the model's modules are swapped for stand-ins while cached: hold the tensors
        snapshots[step] = [p.detach().clone() for p in block0]

    history = fit(bert, data, data, epochs=6, batch_size=16, schedule=plan, cache_prefix=True, progress=False,
                  on_step_end=remember)
    frozen = [g for _, g in plan.frozen_at]
    assert frozen == ["block.0", "block.1", "block.2"]  # bottom-up, the top block kept
    assert [s for s, _ in plan.frozen_at] == sorted(s for s, _ in plan.frozen_at)
    assert history.cached_groups == ["embeddings", "block.0", "block.1", "block.2"]
    step, _ = plan.frozen_at[0]
    assert all(torch.equal(a, b) for a, b in zip(snapshots[step], snapshots[24]))  # untouched once frozen
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[step]))  # it trained before
    assert history.final_accuracy is not None


def test_adaptive_freezing_keeps_training_while_updates_change(bert):
    names = [g.name for g in layer_groups(bert)]
    plan = adaptive_freezing(names, 12, 1e-3, interval=2, window=2, threshold=1e-9)
    fit(bert, toy_task(64), epochs=3, batch_size=16, schedule=plan, progress=False)
    assert plan.frozen_at == [] and plan.norms["block.0"]


# --- block expansion -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_block_expansion_leaves_the_output_unchanged_at_init(family):
    model = tiny_model(family, num_layers=4)
    ids, mask, _ = toy_task(8)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        new = expand_blocks(model, every=2)
        after = model(input_ids=ids, attention_mask=mask).logits
    assert new == ["block.2", "block.5"] and len(layer_groups(model)) == 8
    torch.testing.assert_close(after, before)


def test_block_expansion_trains_only_the_new_blocks(bert):
    new = expand_blocks(bert, every=2)
    train_only(bert, *new, "head")
    before = fingerprint(bert)
    data = toy_task(64)
    fit(bert, data, epochs=2, batch_size=16, lr=1e-2, progress=False)
    after = fingerprint(bert)
    moved = {n for n in after if after[n] != before[n]}
    assert any(".layer.2." in n for n in moved) and any("expansion_gate" in n for n in moved)
    assert not any(".layer.0." in n or ".layer.1." in n or ".layer.3." in n for n in moved)
    assert evaluate(bert, data)["accuracy"] >= 0.0


def test_cli_trains_a_llama_factory_plan(tmp_path):
    output = tmp_path / "metrics.json"
    main(["train", "--model", "tiny:bert", "--task", "a", "--trainable-layers", "-1", "--trainable-modules",
          "attention", "--epochs", "1", "--train-limit", "32", "--eval-limit", "16", "--output", str(output)])
    metrics = json.loads(output.read_text())
    block = 4 * 32 * 32 + 4 * 32 + 2 * 32  # q, k, v, o with biases, and attention's LayerNorm, in tiny:bert
    head = 32 * 32 + 32 + 2 * 32 + 2  # pooler and classifier
    assert metrics["trainable_params"] == block + head
