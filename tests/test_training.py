import math

import pytest
import torch

from layerfreeze import (assert_frozen_unchanged, fingerprint, freeze, freeze_to, tiny_model, train_only)
from layerfreeze.core.cache import cache_device
from layerfreeze.base.runtime import resolve_precision
from layerfreeze.core.schedules import lr_multiplier
from layerfreeze.core.evaluation import evaluate
from layerfreeze.core.training import History, fit, make_optimizer


def toy_task(n=64, seq=8, seed=0):
    """Label = whether token 7 occurs in the text: learnable by a tiny model in a few steps."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 60, (n, seq), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[labels == 1, 3] = 7
    return ids, torch.ones_like(ids), labels


def test_fit_learns_and_reports():
    model = tiny_model("bert", num_layers=2)
    data = toy_task(96)
    before = evaluate(model, data)
    history = fit(model, data, data, epochs=6, lr=3e-3, batch_size=16, progress=False)
    assert isinstance(history, History) and len(history.epochs) == 6
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.final_accuracy > max(0.8, before["accuracy"])
    assert history.steps == 6 * math.ceil(96 / 16) and history.examples == 6 * 96
    assert history.step_seconds > 0 and history.examples_per_second > 0
    assert history.peak_memory_bytes is not None and history.memory_kind == "cpu rss above start"
    assert history.frame().index.tolist() == [1, 2, 3, 4, 5, 6]
    summary = history.summary()
    assert summary["final_accuracy"] == history.final_accuracy and len(summary["epoch_seconds"]) == 6


def test_optimizer_holds_only_trainable_parameters_and_grads_end_as_none():
    model = tiny_model("bert", num_layers=2)
    freeze_to(model, -2)
    optimizer = make_optimizer(model, 1e-3)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert [(g["layer_group"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("block.1", 0.01), ("block.1", 0.0), ("head", 0.01), ("head", 0.0)]
    assert all(p.ndim < 2 for g in optimizer.param_groups[1::2] for p in g["params"])
    fit(model, toy_task(32), epochs=1, batch_size=16, progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_stay_bit_identical_through_fit():
    model = tiny_model("bert", num_layers=3)
    freeze_to(model, -2)
    before = fingerprint(model)
    fit(model, toy_task(32), epochs=2, batch_size=8, lr=1e-2, weight_decay=0.5, progress=False)
    assert assert_frozen_unchanged(model, before) > 0


def test_nothing_trainable_is_a_clear_error():
    model = tiny_model("bert")
    freeze(model, allow_nothing_trainable=True)
    with pytest.raises(ValueError, match="no trainable parameter"):
        fit(model, toy_task(8), progress=False)


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "llama"])
def test_cache_matches_the_uncached_run(family):
    """Same seed, same data: with the frozen prefix cached, losses and accuracies agree, weights bit for bit."""
    data, held_out = toy_task(48, seed=1), toy_task(32, seed=2)
    runs = {}
    for cache in (False, True):
        model = tiny_model(family, num_layers=4, seed=3)
        freeze_to(model, -3, eval_frozen=True)
        history = fit(model, data, held_out, epochs=2, batch_size=16, lr=1e-3, seed=5, cache_prefix=cache,
                      progress=False)
        runs[cache] = (history, {n: p.detach().clone() for n, p in model.named_parameters()})
    (plain, plain_weights), (cached, cached_weights) = runs[False], runs[True]
    assert cached.cached_groups == ["embeddings", "block.0", "block.1"] and plain.cached_groups == []
    for a, b in zip(plain.epochs, cached.epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], abs=1e-5)
        assert a["eval_accuracy"] == b["eval_accuracy"]
    for name, weight in plain_weights.items():
        assert torch.equal(cached_weights[name], weight), name  # bit-identical


def padded_task(n=48, seq=12, seed=0):
    """toy_task with rows of 4 to 8 real tokens, right-padded to ``seq``: the last columns are padding in every row."""
    ids, _, labels = toy_task(n, seq, seed)
    lengths = torch.randint(4, 9, (n,), generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(seq) < lengths[:, None]).long()
    return ids * mask, mask, labels


def test_each_batch_drops_the_padding_after_its_widest_row_and_the_cache_agrees():
    data, held_out = padded_task(seed=1), padded_task(32, seed=2)
    widths, runs = [], {}
    for cache in (False, True):
        model = tiny_model("bert", num_layers=3, seed=3)
        freeze_to(model, -2, eval_frozen=True)
        hook = model.register_forward_pre_hook(  # the training steps' forwards (the cache is filled without grad)
            lambda m, a, kw: widths.append(kw["attention_mask"].shape[1]) if torch.is_grad_enabled() else None,
            with_kwargs=True)
        history = fit(model, data, held_out, epochs=2, batch_size=16, lr=1e-3, seed=5, cache_prefix=cache,
                      progress=False)
        hook.remove()
        runs[cache] = history
    assert len(widths) == 2 * 2 * 3 and max(widths) <= 8  # 12 columns, of which 4 are padding in every row
    for a, b in zip(runs[False].epochs, runs[True].epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["eval_accuracy"] == b["eval_accuracy"]


def test_trailing_padding_does_not_change_the_evaluation():
    model = tiny_model("bert", num_layers=2, seed=3)
    ids, mask, labels = padded_task(32, seq=8)
    padding = torch.zeros(32, 20, dtype=ids.dtype)
    wider = (torch.cat([ids, padding], 1), torch.cat([mask, padding], 1), labels)
    narrow, wide = evaluate(model, (ids, mask, labels)), evaluate(model, wider)
    assert narrow["loss"] == pytest.approx(wide["loss"], abs=1e-6) and narrow["accuracy"] == wide["accuracy"]


def test_model_is_whole_again_after_a_cached_fit():
    model = tiny_model("bert", num_layers=3)
    modules_before = [type(m) for m in model.modules()]
    freeze_to(model, -2, eval_frozen=True)
    fit(model, toy_task(16), epochs=1, batch_size=8, cache_prefix=True, progress=False)
    assert [type(m) for m in model.modules()] == modules_before


def test_cache_refuses_active_dropout_in_the_prefix():
    model = tiny_model("bert", num_layers=3)
    freeze_to(model, -2)  # frozen, but still in train mode when fit calls model.train()
    with pytest.raises(ValueError, match="dropout .* is active.*eval_frozen=True"):
        fit(model, toy_task(16), cache_prefix=True, progress=False)


def test_cache_refuses_a_trainable_parameter_in_the_prefix():
    model = tiny_model("bert", num_layers=3)
    train_only(model, "block.1", "head", eval_frozen=True)
    with pytest.raises(ValueError, match="cannot cache block.1: it holds trainable parameters"):
        fit(model, toy_task(16), cache_prefix=3, progress=False)
    with pytest.raises(ValueError, match="group count from 1 to 4"):
        fit(model, toy_task(16), cache_prefix=9, progress=False)


def test_cache_needs_a_frozen_prefix():
    with pytest.raises(ValueError, match="embeddings are trainable"):
        fit(tiny_model("bert"), toy_task(16), cache_prefix=True, progress=False)


def test_cache_spills_to_cpu_when_the_gpu_is_short(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert cache_device(torch.device("cuda"), 400) == torch.device("cuda")
    assert cache_device(torch.device("cuda"), 600) == torch.device("cpu")
    assert cache_device(torch.device("cpu"), 10) == torch.device("cpu")


def test_lr_schedules():
    linear = [lr_multiplier(s, 100, 10, "linear") for s in range(100)]
    cosine = [lr_multiplier(s, 100, 10, "cosine") for s in range(100)]
    assert linear[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert linear[10] == 1.0 and linear[55] == pytest.approx(0.5) and linear[-1] < 0.02
    assert cosine[10] == 1.0 and cosine[55] == pytest.approx(0.5) and cosine[-1] < 0.001
    assert all(a >= b for a, b in zip(linear[10:], linear[11:]))
    assert lr_multiplier(50, 100, 0, "constant") == 1.0
    with pytest.raises(ValueError, match="linear, cosine, constant"):
        lr_multiplier(0, 10, 0, "step")


def test_precision(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="for CUDA"):
        resolve_precision("bf16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        resolve_precision("int8", torch.device("cpu"))


def test_discriminative_learning_rates():
    model = tiny_model("bert", num_layers=2)
    freeze_to(model, -3)
    optimizer = make_optimizer(model, {"head": 1e-2, "block.1": 1e-3, "default": 1e-4})
    rates = {g["layer_group"]: g["lr"] for g in optimizer.param_groups}
    assert rates == {"block.0": 1e-4, "block.1": 1e-3, "head": 1e-2}
    with pytest.raises(ValueError, match="unknown groups \\['block.7'\\]; valid: embeddings, block.0, block.1, head"):
        make_optimizer(model, {"block.7": 1e-3})
    with pytest.raises(ValueError, match="no learning rate for trainable group 'block.0'"):
        make_optimizer(model, {"head": 1e-3, "block.1": 1e-3})


def test_a_model_sharing_the_cached_blocks_still_runs_them():
    """The cache's stand-ins act in fit's own forward passes only: a twin that shares the frozen body (task A's
    model in the forgetting protocol) is evaluated through the real blocks, so its loss cannot move."""
    import copy
    model = tiny_model("bert", num_layers=3)
    twin = copy.deepcopy(model)
    twin.bert.embeddings, twin.bert.encoder = model.bert.embeddings, model.bert.encoder
    freeze_to(model, -1, eval_frozen=True)
    data, seen = toy_task(48), []
    before = evaluate(twin, data)["loss"]
    fit(model, data, epochs=2, batch_size=16, lr=1e-3, cache_prefix=True, progress=False,
        on_epoch_end=lambda epoch: seen.append(evaluate(twin, data)["loss"]))
    assert seen == [before, before]


def test_bucketing_by_length_trains_every_example_and_bad_values_are_refused():
    model = tiny_model("bert", num_layers=2)
    width = torch.tensor([2, 8, 3, 7, 2, 8, 3, 7])
    ids = torch.randint(5, 99, (8, 8), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(8) < width[:, None]).long()
    seen = []
    model.register_forward_pre_hook(  # training steps only
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]) if module.training else None,
        with_kwargs=True)
    history = fit(model, (ids, mask, ids[:, 0] % 2), epochs=1, batch_size=2, lr=1e-3, progress=False,
                  bucket_by_length=True)
    assert history.steps == 4 and sorted(seen) == [2, 3, 7, 8]  # each batch pairs two rows of one length
    with pytest.raises(ValueError, match="bucket_by_length='yes'; valid: True or False"):
        fit(model, (ids, mask, ids[:, 0] % 2), bucket_by_length="yes")


def test_evaluate_on_zero_rows_is_a_clear_error():
    empty = (torch.zeros(0, 6, dtype=torch.long), torch.ones(0, 6, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="data has 0 rows: evaluate needs at least one labelled example"):
        evaluate(tiny_model("bert", num_layers=1), empty)


# --- early stopping -------------------------------------------------------------------------------------------------

def _scripted(model, curve, snapshots):
    """An on_epoch_end that overrides the validation accuracy with ``curve`` and keeps each epoch's weights."""
    def on_epoch_end(epoch):
        snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"eval_accuracy": curve[epoch - 1]}
    return on_epoch_end


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    model, data, snapshots = tiny_model("bert", num_layers=2), toy_task(32), {}
    curve = [0.5, 0.7, 0.6, 0.65, 0.95, 0.99]
    history = fit(model, data, data, epochs=6, lr=3e-3, batch_size=16, progress=False, early_stopping=2,
                  on_epoch_end=_scripted(model, curve, snapshots))
    assert len(history.epochs) == 4 and history.stopped_epoch == 4 and history.best_epoch == 2
    assert "early stopping" in history.stop_reason and "restored from epoch 2" in history.stop_reason
    assert history.steps == 4 * 2
    state = model.state_dict()
    assert all(torch.equal(state[k], snapshots[2][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[4][k]) for k in state)


def test_early_stopping_runs_to_the_maximum_while_improving():
    model, data, snapshots = tiny_model("bert", num_layers=2), toy_task(32), {}
    history = fit(model, data, data, epochs=3, lr=3e-3, batch_size=16, progress=False, early_stopping=1,
                  on_epoch_end=_scripted(model, [0.5, 0.6, 0.7], snapshots))
    assert history.stopped_epoch == 3 and history.best_epoch == 3
    assert "maximum of 3 epochs" in history.stop_reason and "restored" not in history.stop_reason
    assert history.summary()["stop_reason"] == history.stop_reason


def test_without_early_stopping_every_epoch_trains():
    model, data = tiny_model("bert", num_layers=2), toy_task(32)
    history = fit(model, data, data, epochs=3, lr=3e-3, batch_size=16, progress=False,
                  on_epoch_end=lambda epoch: {"eval_accuracy": 1.0 - epoch / 10})
    assert history.stopped_epoch == 3 and history.best_epoch is None and "no early stopping" in history.stop_reason


@pytest.mark.parametrize("value, message", [(0, "early_stopping"), (True, "early_stopping"), (2.5, "early_stopping")])
def test_early_stopping_rejects_bad_patience(value, message):
    with pytest.raises(ValueError, match=message):
        fit(tiny_model("bert", num_layers=2), toy_task(16), toy_task(16), epochs=2, early_stopping=value,
            progress=False)


def test_early_stopping_needs_validation_data():
    with pytest.raises(ValueError, match="eval_data"):
        fit(tiny_model("bert", num_layers=2), toy_task(16), epochs=2, early_stopping=1, progress=False)
