"""Bad input at the library's boundary: fit, the schedules, encode, load_task and load_model raise a ValueError (or
FileNotFoundError) that names the argument, the value and what is valid, before anything loads or trains. Every
case the reliability review found (issue 13) is here; Hypothesis covers the numeric arguments: every input either
runs as documented or raises such an error."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerfreeze import (chain_thaw, discriminative_lrs, encode, gradual_unfreezing, layer_groups, load_model,
                         load_task, tiny_model)
from layerfreeze.core.schedules import lr_multiplier, spread_lrs
from layerfreeze.base.tasks import generate_task
from layerfreeze.core.training import fit
from tests.test_training import toy_task

NAMES = ["embeddings", "block.0", "block.1", "head"]
NUMBERS = st.one_of(st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                    st.sampled_from(["1", True]))


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny:bert")[1]


def untouched(model):
    return {name: value.clone() for name, value in model.state_dict().items()}


def same(before, model):
    return all(torch.equal(before[name], value) for name, value in model.state_dict().items())


# --- fit -------------------------------------------------------------------------------------------------------

FIT_CASES = [
    (dict(max_grad_norm=-1), "max_grad_norm must be a finite number above 0, got -1"),
    (dict(max_grad_norm=0), "max_grad_norm must be a finite number above 0"),
    (dict(lr={"head": 1e-3, "default": -1e-4}), "lr\\['default'\\] must be a finite number above 0, got -0.0001"),
    (dict(lr={"head": 1e-3, "block.0": float("nan"), "default": 1e-4}), "lr\\['block.0'\\] .* got nan"),
    (dict(lr=float("inf")), "lr must be a finite number above 0, got inf"),
    (dict(lr={}), "lr is an empty dict"),
    (dict(weight_decay=-1), "weight_decay must be a finite number of at least 0, got -1"),
    (dict(epochs=-1), "epochs must be a whole number of at least 1, got -1"),
    (dict(epochs=0), "epochs must be a whole number of at least 1, got 0"),
    (dict(epochs=2.5), "epochs must be a whole number"),
    (dict(batch_size=-4), "batch_size must be a whole number of at least 1, got -4"),
    (dict(batch_size=0), "batch_size must be a whole number of at least 1, got 0"),
    (dict(eval_batch_size=0), "eval_batch_size must be a whole number"),
    (dict(warmup=1.5), "warmup must be a number at least 0 and below 1, got 1.5"),
    (dict(warmup=-2), "warmup must be a whole number of at least 0, got -2"),
    (dict(seed=-1), "seed must be a whole number from 0 to"),
    (dict(schedule="cosine"), "schedule takes a Schedule .*a learning-rate curve goes to curve=, one of linear"),
    (dict(curve="steps"), "unknown curve 'steps'; valid: linear, cosine"),
    (dict(cache_prefix=-1), "cache_prefix must be a whole number of at least 0"),
]


@pytest.mark.parametrize("arguments, message", FIT_CASES, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_fit_refuses_bad_arguments_before_training(arguments, message):
    model = tiny_model("bert", num_layers=2)
    before = untouched(model)
    with pytest.raises(ValueError, match=message):
        fit(model, toy_task(8), toy_task(8), progress=False, **arguments)
    assert same(before, model)


def test_fit_refuses_a_schedule_shorter_than_the_run():
    model = tiny_model("bert", num_layers=2)
    names = [g.name for g in layer_groups(model)]
    short = gradual_unfreezing(names, every=1, total_steps=3, lrs=1e-3)
    with pytest.raises(ValueError, match="total_steps=3, but this run takes 4 steps .*total_steps=4"):
        fit(model, toy_task(16), epochs=2, batch_size=8, schedule=short, progress=False)


def test_fit_refuses_bad_data():
    model = tiny_model("bert", num_layers=2)
    ids, mask, labels = toy_task(8)
    empty = (ids[:0], mask[:0], labels[:0])
    cases = [
        (dict(train_data=empty), "train_data is empty"),
        (dict(eval_data=empty), "eval_data is empty"),
        (dict(train_data=(ids, mask)), "train_data must be \\(input_ids, attention_mask, labels\\)"),
        (dict(train_data="not data"), "train_data must be .*got str"),
        (dict(train_data=(ids + 40_000, mask, labels)), "token ids from .* vocabulary has ids 0 to 30521"),
        (dict(train_data=(ids.repeat(1, 20), mask.repeat(1, 20), labels)),
         "sequences of 160 tokens, but the model takes at most 128: encode with max_length=128"),
        (dict(eval_data=(ids, mask, labels + 3)), "eval_data has labels from 3 to 4, but the model has 2 classes"),
    ]
    for change, message in cases:
        arguments = {"train_data": (ids, mask, labels), "eval_data": None, **change}
        with pytest.raises(ValueError, match=message):
            fit(model, arguments["train_data"], arguments["eval_data"], progress=False)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        fit("not a model", (ids, mask, labels), progress=False)


def test_roberta_positions_leave_room_for_padding():
    model = tiny_model("roberta", num_layers=1)  # positions up to the padding id are reserved
    limit = model.config.max_position_embeddings - model.config.pad_token_id - 1
    ids, mask, labels = toy_task(4, seq=limit + 1)
    with pytest.raises(ValueError, match=f"at most {limit}"):
        fit(model, (ids, mask, labels), progress=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(epochs=NUMBERS, batch_size=NUMBERS, lr=NUMBERS, weight_decay=NUMBERS, warmup=NUMBERS,
       max_grad_norm=NUMBERS)
def test_fit_runs_as_documented_or_names_the_bad_argument(epochs, batch_size, lr, weight_decay, warmup,
                                                           max_grad_norm):
    model = tiny_model("bert", num_layers=1, hidden_size=8)
    data = toy_task(6, seq=4)
    arguments = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                     max_grad_norm=max_grad_norm)
    try:
        history = fit(model, data, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup=warmup, max_grad_norm=max_grad_norm, progress=False)
    except ValueError as error:
        assert str(error).startswith(tuple(arguments)), error
        return
    assert history.steps == epochs * math.ceil(6 / batch_size)
    assert all(math.isfinite(e["train_loss"]) for e in history.epochs)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- schedules -------------------------------------------------------------------------------------------------

def test_schedules_refuse_bad_steps_and_rates():
    cases = [
        (lambda: gradual_unfreezing(NAMES, every=1, total_steps=0, lrs=1e-3), "total_steps must be .* got 0"),
        (lambda: gradual_unfreezing(NAMES, every=0, total_steps=10, lrs=1e-3), "every must be .* got 0"),
        (lambda: gradual_unfreezing(NAMES, every=1, total_steps=10, lrs=1e-3, start=5), "start must be .*1 to 4"),
        (lambda: chain_thaw(NAMES, every=0, total_steps=10, lrs=1e-3), "every must be a whole number of at least 1"),
        (lambda: chain_thaw(NAMES, every=2, total_steps=10, lrs={"head": -1.0}), "lrs\\['head'\\] must be"),
        (lambda: gradual_unfreezing(NAMES, 1, 10, {"head": 1e-3, "default": float("nan")}), "lrs\\['default'\\]"),
        (lambda: gradual_unfreezing("block.0", 1, 10, 1e-3), "groups must be distinct layer group names"),
        (lambda: lr_multiplier(-1, 10), "step must be a whole number of at least 0, got -1"),
        (lambda: lr_multiplier(0, 10, -1), "warmup_steps must be"),
        (lambda: lr_multiplier(0, 10, curve="stlr", cut_frac=1.5), "cut_frac must be a number above 0 and below 1"),
        (lambda: discriminative_lrs(NAMES, float("inf")), "top_lr must be a finite number above 0, got inf"),
        (lambda: spread_lrs(NAMES, float("nan"), 1e-3), "low must be a finite number above 0, got nan"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@settings(max_examples=200, deadline=None)
@given(step=NUMBERS, total_steps=NUMBERS, warmup_steps=NUMBERS, cut_frac=NUMBERS, ratio=NUMBERS,
       curve=st.sampled_from(["linear", "cosine", "constant", "stlr", "one-cycle"]))
def test_lr_multiplier_is_a_factor_in_0_1_or_an_error(step, total_steps, warmup_steps, cut_frac, ratio, curve):
    try:
        factor = lr_multiplier(step, total_steps, warmup_steps, curve, cut_frac=cut_frac, ratio=ratio)
    except ValueError as error:
        assert str(error).startswith(("step", "total_steps", "warmup_steps", "cut_frac", "ratio")), error
        return
    assert 0 <= factor <= 1


@settings(max_examples=200, deadline=None)
@given(every=NUMBERS, total_steps=NUMBERS, lr=NUMBERS, factor=NUMBERS,
       kind=st.sampled_from([gradual_unfreezing, chain_thaw]))
def test_unfreezing_schedules_are_valid_or_an_error(every, total_steps, lr, factor, kind):
    try:
        schedule = kind(NAMES, every, total_steps, discriminative_lrs(NAMES, lr, factor))
    except ValueError as error:
        assert str(error).startswith(("every", "total_steps", "top_lr", "factor")), error
        return
    assert schedule.phases[0][0] == 0 and all(start < total_steps for start, _ in schedule.phases)
    assert len(schedule.phases) > 1 or total_steps <= every  # never silently one phase of everything
    for step in range(0, total_steps, max(1, total_steps // 7)):
        assert all(math.isfinite(schedule.lr_at(step, g)) and schedule.lr_at(step, g) >= 0 for g in NAMES)


# --- data ------------------------------------------------------------------------------------------------------

def test_load_task_refuses_bad_arguments_before_loading():
    cases = [
        (dict(limit={"train": -5}), "limit\\['train'\\] must be a whole number of at least 1, got -5"),
        (dict(limit={"train": 0}), "limit\\['train'\\] must be .* got 0"),
        (dict(limit={"train": 2.5}), "limit\\['train'\\] must be a whole number"),
        (dict(limit={"tset": 5}), "limit names split 'tset'; valid splits: train, validation, test"),
        (dict(limit=100), "limit must be a dict of split name to example count"),
        (dict(seed=-1), "seed must be a whole number from 0"),
        (dict(difficulty="extreme"), "difficulty must be one of easy, standard, hard, and applies to the generated"),
        (dict(name=None), "unknown task None; valid: a, b, c, sst2, ag_news, imdb"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            load_task(**{"name": "a", **arguments})


@settings(max_examples=12, deadline=None)
@given(size=st.one_of(st.integers(-3, 5000), st.floats(allow_nan=True)))
def test_load_task_limit_keeps_that_many_or_names_the_error(size):
    try:
        splits = load_task("b", limit={"validation": size})
    except ValueError as error:
        assert str(error).startswith("limit['validation']"), error
        return
    assert splits["validation"].num_rows == min(size, 500)


def test_encode_refuses_bad_input(tokenizer):
    split = load_task("a", limit={"train": 4})["train"]
    cases = [
        (split.select([]), "split is empty"),
        (["a text", "another"], "split must have 'text' and 'label' columns .* got list"),
        (load_task("a"), "got DatasetDict"),
        ([{"text": "fine", "label": -1}], "a label must be a whole number of at least 0, got -1"),
        ([{"text": 3, "label": 0}], "texts must be strings, got 3"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            encode(bad, tokenizer)
    for max_length in (0, 1, -3, 2.0, 10_000):
        with pytest.raises(ValueError, match=r"max_length must be a whole number from 3 to \d+"):
            encode(split, tokenizer, max_length)
    with pytest.raises(ValueError, match="tokenizer must be a tokenizer"):
        encode(split, "bert-base-uncased")


def test_encode_takes_the_rows_generate_task_returns(tokenizer):
    ids, mask, labels = encode(generate_task("b", 5), tokenizer, max_length=12).tensors
    assert ids.shape == mask.shape and ids.shape[0] == 5 and ids.shape[1] <= 12 and labels.max() < 5


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_length=NUMBERS | st.integers(-5, 700))
def test_encode_max_length_bounds_or_names_the_error(tokenizer, max_length):
    split = [{"text": "the soup was not bad at all, but the service was slow.", "label": 1}]
    try:
        ids = encode(split, tokenizer, max_length).tensors[0]
    except ValueError as error:
        assert str(error).startswith("max_length must be"), error
        return
    assert ids.shape[1] <= max_length


# --- load_model --------------------------------------------------------------------------------------------------

def test_load_model_refuses_bad_arguments_before_loading(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: pytest.fail("a tokenizer loaded before the arguments were checked"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "config.json").write_text('{"model_type": "roberta"}')
    cases = [
        (dict(name=None), ValueError, "name must be 'minilm', 'kit-decoder', 'tiny:FAMILY', a Hub id .* got None"),
        (dict(name=""), ValueError, "name must be"),
        (dict(num_labels=0), ValueError, "num_labels must be a whole number of at least 2, got 0"),
        (dict(num_labels=-3), ValueError, "num_labels must be .* got -3"),
        (dict(task="causal-lm"), ValueError, "'minilm' is an encoder \\(bert\\): task='causal-lm' needs a decoder"),
        (dict(name="tiny:bert", task="causal-lm"), ValueError, "is an encoder"),
        (dict(name=str(tmp_path / "encoder"), task="causal-lm"), ValueError, "is an encoder \\(roberta\\)"),
        (dict(name="tiny:gpt5"), ValueError, "unknown tiny family 'gpt5' .*valid: tiny:bert"),
        (dict(name="/missing/dir"), FileNotFoundError, "model directory '/missing/dir' does not exist"),
        (dict(name=str(tmp_path / "empty")), FileNotFoundError, "holds no config.json"),
        (dict(task="translation"), ValueError, "unknown task 'translation'; valid: classification, causal-lm"),
    ]
    for arguments, error, message in cases:
        with pytest.raises(error, match=message):
            load_model(**{"name": "minilm", **arguments})


# --- freezing ----------------------------------------------------------------------------------------------------

def test_freezing_refuses_what_is_not_a_model_and_a_missing_fingerprint():
    from layerfreeze import assert_frozen_unchanged, freeze, freeze_to

    with pytest.raises(ValueError, match="model must be a torch.nn.Module .* got str"):
        freeze("not a model", 1)
    model = tiny_model("bert", num_layers=2)
    freeze_to(model, -1)
    with pytest.raises(ValueError, match="before holds no fingerprint for 37 frozen parameters"):
        assert_frozen_unchanged(model, {})
