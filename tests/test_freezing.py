import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerfreeze import (assert_frozen_unchanged, bitfit, changed_parameters, count_parameters, fingerprint, freeze,
                         freeze_to, layer_groups, tiny_model, train_only, unfreeze)
from layerfreeze.core.freezing import frozen, release_eval_mode, trainable_state
from layerfreeze.core.freezing import frozen_in_eval, select_parameters


def trainable_groups(model):
    return [g.name for g in layer_groups(model) if g.trainable]


def frozen_groups(model):
    return [g.name for g in layer_groups(model) if g.trainable is False]


def test_freeze_by_index_name_slice(bert):
    freeze(bert, 0, "block.0", slice(2, 4))
    assert frozen_groups(bert) == ["embeddings", "block.0", "block.1", "block.2"]
    unfreeze(bert, -3)
    assert frozen_groups(bert) == ["embeddings", "block.0", "block.1"]


def test_freeze_by_glob_and_regex(bert):
    report = freeze(bert, "*attention.self.query.*", re.compile(r"intermediate\.dense\.bias$"))
    assert len(report.froze) == 4 * 2 + 4
    assert all("query" in n or "intermediate.dense.bias" in n for n in report.froze)


def test_freeze_to_has_fastais_meaning(bert):
    freeze_to(bert, -1)
    assert trainable_groups(bert) == ["head"]
    freeze_to(bert, -3)
    assert trainable_groups(bert) == ["block.2", "block.3", "head"]
    freeze_to(bert, 2)
    assert frozen_groups(bert) == ["embeddings", "block.0"]
    freeze_to(bert, 0)
    assert frozen_groups(bert) == []


def test_report_says_what_changed(bert):
    report = freeze_to(bert, -1)
    text = repr(report)
    assert text.startswith("freeze_to(-1): ")
    assert "embeddings, block.0, block.1, block.2, block.3" in text
    trainable, total = count_parameters(bert)
    assert f"Trainable: {trainable:,} of {total:,}" in text
    assert report.group_states["head"] == "trainable" and report.group_states["block.3"] == "frozen"
    again = freeze_to(bert, -1)
    assert again.changed == [] and "nothing changed" in repr(again)


@pytest.mark.parametrize("bad, message", [
    (("block.9",), r"unknown layer group 'block.9'.*6 groups: embeddings, block.0, block.1, block.2, block.3, head"),
    ((6,), r"group index 6 is out of range.*indices -6..5"),
    ((-7,), r"group index -7 is out of range"),
    ((slice(7, 9),), r"slice 7:9:None selects no group"),
    (("*nothing*",), r"glob '\*nothing\*' matches no parameter name"),
    ((re.compile("xyz"),), r"regex 'xyz' matches no parameter name"),
    ((1.5,), r"cannot select with float"),
    ((True,), r"cannot select with True"),
])
def test_bad_selection_names_what_is_valid(bert, bad, message):
    with pytest.raises(ValueError, match=message):
        freeze(bert, *bad)


def test_nothing_left_to_train_is_refused_and_changes_nothing(bert):
    before = [p.requires_grad for p in bert.parameters()]
    with pytest.raises(ValueError, match="nothing to train"):
        freeze(bert)
    assert [p.requires_grad for p in bert.parameters()] == before
    report = freeze(bert, allow_nothing_trainable=True)
    assert report.trainable_params == 0


@pytest.mark.parametrize("n", [6, -7, 1.0, True])
def test_freeze_to_range(bert, n):
    with pytest.raises(ValueError, match=r"-6 <= n < 6"):
        freeze_to(bert, n)


def test_keep_norm_trainable(bert):
    freeze(bert, slice(0, -1), keep_norm_trainable=True)
    still = [n for n, p in bert.named_parameters() if p.requires_grad and not n.startswith(("classifier", "bert.pooler"))]
    assert still and all("LayerNorm" in n for n in still)


def test_bitfit_trains_biases_and_head(bert):
    report = bitfit(bert)
    for name, p in bert.named_parameters():
        assert p.requires_grad == (name.endswith("bias") or name.startswith(("classifier", "bert.pooler"))), name
    assert report.percent_trainable < 15
    bitfit(bert, train_head=False)
    assert not bert.classifier.weight.requires_grad and bert.classifier.bias.requires_grad


def test_frozen_context_manager_restores(bert):
    freeze(bert, "block.1")
    before = {n: p.requires_grad for n, p in bert.named_parameters()}
    with frozen(bert, slice(0, -1)) as report:
        assert trainable_groups(bert) == ["head"] and report.froze
    assert {n: p.requires_grad for n, p in bert.named_parameters()} == before
    with pytest.raises(RuntimeError):
        with frozen(bert, "embeddings"):
            raise RuntimeError("boom")
    assert {n: p.requires_grad for n, p in bert.named_parameters()} == before


@pytest.mark.parametrize("call", [lambda m: train_only(m, "head"), lambda m: freeze_to(m, -1),
                                  lambda m: freeze_to(m, -2), lambda m: bitfit(m), lambda m: freeze(m, "embeddings"),
                                  lambda m: freeze(m, "head")])
def test_no_selection_trains_or_freezes_one_side_of_a_tie_silently(call):
    model = tiny_model("gpt2", task="causal-lm")
    before = trainable_state(model)
    with pytest.raises(ValueError, match=r"transformer.wte.weight \(embeddings\).*untie=True.*tie_word_embeddings"):
        call(model)
    assert trainable_state(model) == before  # nothing changed


def test_untie_gives_the_head_its_own_copy_and_keeps_the_outputs():
    model = tiny_model("gpt2", task="causal-lm")
    ids = torch.randint(5, 99, (2, 6))
    expected = model(input_ids=ids).logits
    report = freeze_to(model, -1, untie=True)
    assert report.ties == ["transformer.wte.weight (embeddings) = lm_head.weight (head): untied, lm_head.weight "
                           "got a copy of its own"]
    assert model.lm_head.weight is not model.transformer.wte.weight and model.lm_head.weight.requires_grad
    assert not model.transformer.wte.weight.requires_grad and not model.config.tie_word_embeddings
    assert torch.equal(model(input_ids=ids).logits, expected)
    assert layer_groups(model)[0].trainable is False


def test_a_selection_that_takes_both_sides_of_a_tie_lists_it():
    model = tiny_model("gpt2", task="causal-lm")
    report = freeze(model, "embeddings", "head")
    assert not model.lm_head.weight.requires_grad
    assert report.ties == ["transformer.wte.weight (embeddings) = lm_head.weight (head): one tensor, it is frozen "
                           "under every name"]
    assert "tie: transformer.wte.weight" in repr(report)
    assert freeze_to(model, 0).ties[0].endswith("it trains under every name")


def test_eval_frozen_keeps_dropout_off_after_train():
    model = tiny_model("bert", num_layers=4)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    freeze_to(model, -2, eval_frozen=True)
    assert frozen_in_eval(model) == ["embeddings", "block.0", "block.1", "block.2"]
    model.train()
    ids = torch.randint(5, 100, (2, 10))
    assert torch.equal(model.bert.embeddings(input_ids=ids), model.bert.embeddings(input_ids=ids))
    assert not model.bert.embeddings.training and model.bert.encoder.layer[3].training
    unfreeze(model, "block.2")
    assert "block.2" not in frozen_in_eval(model) and model.bert.encoder.layer[2].training
    release_eval_mode(model)
    model.train()
    assert not torch.equal(model.bert.embeddings(input_ids=ids), model.bert.embeddings(input_ids=ids))


def _train_steps(model, steps=3, weight_decay=0.1):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=weight_decay)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(5, 1000, (4, 12))
        loss = model(input_ids=ids, labels=torch.randint(0, 2, (4,))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_fingerprint_frozen_stay_bit_identical_trainable_move(bert):
    freeze_to(bert, -2)
    before = fingerprint(bert)
    _train_steps(bert)
    assert assert_frozen_unchanged(bert, before) > 0
    moved = changed_parameters(before, fingerprint(bert))
    assert moved and all(n.startswith(("bert.encoder.layer.3", "bert.pooler", "classifier")) for n in moved)


def test_assert_frozen_unchanged_catches_a_moved_parameter(bert):
    freeze_to(bert, -1)
    before = fingerprint(bert)
    with torch.no_grad():
        bert.bert.encoder.layer[0].output.dense.weight[0, 0] += 1e-6
    with pytest.raises(AssertionError, match="bert.encoder.layer.0.output.dense.weight"):
        assert_frozen_unchanged(bert, before)


def test_fingerprint_handles_bfloat16():
    model = tiny_model("llama").to(torch.bfloat16)
    assert fingerprint(model) == fingerprint(model)


# --- properties -----------------------------------------------------------------------------------------------

MODEL = tiny_model("bert", num_layers=3)  # 5 groups
N_GROUPS = 5
selector = st.one_of(
    st.integers(-8, 8),
    st.builds(slice, st.one_of(st.none(), st.integers(-7, 7)), st.one_of(st.none(), st.integers(-7, 7))),
    st.sampled_from(["embeddings", "block.0", "block.2", "head", "block.3", "Head", "*.bias", "*nomatch*"]),
)


def _expected_groups(item):
    """The group indices an item selects, or None if it is invalid (globs are checked separately)."""
    if isinstance(item, int):
        return [item % N_GROUPS] if -N_GROUPS <= item < N_GROUPS else None
    if isinstance(item, slice):
        picked = list(range(N_GROUPS))[item]
        return picked or None
    names = ["embeddings", "block.0", "block.1", "block.2", "head"]
    return [names.index(item)] if item in names else None


@settings(max_examples=60, deadline=None)
@given(st.lists(selector, min_size=1, max_size=3))
def test_selection_matches_the_groups_or_raises(items):
    groups = layer_groups(MODEL)
    globs = [i for i in items if isinstance(i, str) and "*" in i]
    expected = [_expected_groups(i) for i in items if i not in globs]
    if any(e is None for e in expected) or "*nomatch*" in globs:
        with pytest.raises(ValueError):
            select_parameters(MODEL, *items, groups=groups)
        return
    chosen = select_parameters(MODEL, *items, groups=groups)
    want = {n for e in expected for g in e for n in groups[g].parameters}
    if "*.bias" in globs:
        want |= {n for n, _ in MODEL.named_parameters() if n.endswith(".bias")}
    assert set(chosen) == want


@settings(max_examples=40, deadline=None)
@given(st.integers(-N_GROUPS, N_GROUPS - 1))
def test_freeze_to_then_groups_split_at_n(n):
    model = tiny_model("bert", num_layers=3)
    freeze_to(model, n)
    states = [g.trainable for g in layer_groups(model)]
    cut = n % N_GROUPS
    assert states == [False] * cut + [True] * (N_GROUPS - cut)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["embeddings", "block.0", "block.1", "block.2"]), min_size=1, max_size=4, unique=True))
def test_frozen_restores_any_prior_state(names):
    model = tiny_model("bert", num_layers=3)
    freeze(model, *names)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with frozen(model, slice(0, -1)):
        pass
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
