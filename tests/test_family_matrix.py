"""Every family a learner may bring, as a tiny random model built in code: groups, freezing, tables, memory
estimate, the invariant (checked with autograd), and a few steps of fit, evaluated after (perplexity for a causal LM),
with and without the feature cache."""

import warnings

import pytest
import torch

import layerfreeze as lf
import layerfreeze.core.cache
from layerfreeze.core.inspection import run_order_table
from layerfreeze.core.layers import tied_weights
from layerfreeze.base.models import DECODER_FAMILIES, ENCODER_DECODER_FAMILIES, TINY_FAMILIES, tiny_tokenizer

VOCAB = len(tiny_tokenizer())
CASES = [(f, "classification") for f in TINY_FAMILIES] + [(f, "causal-lm") for f in DECODER_FAMILIES]
# Where the cache refuses, and why: T5's blocks hand the position bias on to the next block; with two layers,
# ALBERT's first trainable group is its one shared block, which runs twice; BART's encoder applies dropout itself.
CACHE_REFUSES = {"t5": "hand on more than hidden states", "albert": "share weights", "bart": "changes from run to run"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine waking them costs more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(family, task, num_layers=2):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ALBERT's shared-block warning has its own test
            return lf.tiny_model(family, task=task, vocab_size=VOCAB, num_layers=num_layers, seed=0)
    except ValueError as error:
        if "has no" in str(error):  # e.g. Gemma 3 text classification needs transformers >= 4.57
            pytest.skip(str(error))
        raise


def batch(n=8, length=10, seed=0, task="classification"):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=generator)
    ids[:, -1] = 3  # [SEP], every tiny model's end-of-sequence token: BART and T5 classify from it
    labels = ids.clone() if task == "causal-lm" else torch.randint(0, 2, (n,), generator=generator)
    return ids, torch.ones_like(ids), labels


def first_trainable(groups):
    return next(i for i, g in enumerate(groups) if any(p.requires_grad for p in g.parameters.values()))


def assert_invariant(model, groups, ids, mask):
    """No trainable parameter outside the first trainable group influences any input of that group, and none at
    all influences the input of its first module to run (autograd decides)."""
    first = groups[first_trainable(groups)]
    captured = {name: [] for name in first.modules}

    def hook_for(name):
        def hook(_, args, kwargs):
            if not captured[name]:  # the first run: a shared block's later runs take its own output
                captured[name] += [t for t in torch.utils._pytree.tree_leaves((args, kwargs))
                                   if isinstance(t, torch.Tensor) and t.requires_grad] or [None]
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in first.modules.items()]
    try:
        model.eval()
        model(input_ids=ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    inside = {id(p) for p in first.parameters.values()}
    outside = [(n, p) for g in groups for n, p in g.parameters.items() if p.requires_grad and id(p) not in inside]
    entry = next(iter(first.modules))
    everything = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for inputs, params, what in ((sum(captured.values(), []), outside, "inputs"),
                                 (captured[entry], everything, f"entry {entry}")):
        inputs = [t for t in inputs if t is not None]
        if not inputs or not params:
            continue
        total = sum(t.float().sum() for t in inputs)
        grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
        leaking = [n for (n, _), g in zip(params, grads) if g is not None and g.abs().sum() > 0]
        assert not leaking, f"{leaking[:3]} influence the {what} of {first.name}, the first trainable group"


@pytest.mark.parametrize("family,task", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_family(family, task):
    model = build(family, task)
    groups = lf.layer_groups(model)
    names = [g.name for g in groups]
    stacks = ("encoder", "decoder") if family in ENCODER_DECODER_FAMILIES else ("block",)
    blocks = 1 if family == "albert" else 2
    assert names == ["embeddings"] + [f"{s}.{i}" for s in stacks for i in range(blocks)] + ["head"]
    assert model.get_input_embeddings().weight in list(groups[0].parameters.values())
    assert groups[-1].num_params > 0 and all(g.num_params > 0 for g in groups)
    owned = [id(p) for g in groups for p in g.parameters.values()]
    twins = sum(len(t) - 1 for t in tied_weights(model, groups))
    assert len(owned) - twins == len(set(owned)) == len(list(model.parameters()))
    order = run_order_table(model, groups)
    assert order["in_order"].all() or family in ENCODER_DECODER_FAMILIES
    assert order.query("not in_order")["note"].ne("").all()  # only the documented case: a tied decoder embedding

    tied = bool(tied_weights(model, groups))
    assert tied == (task == "causal-lm")  # tiny LMs tie lm_head to the input embedding, like GPT-2 and Gemma
    ids, mask, labels = batch(task=task)
    with pytest.raises(ValueError, match="freeze_to needs an int n"):
        lf.freeze_to(model, len(groups))
    plans = [lambda: lf.strategy.apply_preset(model, "head", untie=tied), lambda: lf.freeze_to(model, 1, untie=tied),
             lambda: lf.strategy.apply_preset(model, "top", k=1, untie=tied),
             lambda: lf.strategy.apply_preset(model, "bottom", k=1, untie=tied)]
    if any(name.endswith("bias") for name, _ in model.named_parameters()):
        plans.append(lambda: lf.strategy.apply_preset(model, "bitfit", untie=tied))
    if tied:
        with pytest.raises(ValueError, match="untie=True"):
            lf.freeze_to(model, -1)
    for plan in plans:
        report = plan()
        groups = lf.layer_groups(model)
        table = lf.group_table(model, groups)
        trainable, total = lf.count_parameters(model)
        assert table.loc["total", "params"] == total and table.loc["total", "trainable"] == trainable
        estimate = lf.estimate_memory(model, batch_size=4, seq_len=10, groups=groups)
        assert estimate.weights_frozen + estimate.weights_trainable == sum(p.numel() * p.element_size()
                                                                           for p in model.parameters())
        assert report.trainable_params == trainable
        assert_invariant(model, groups, ids, mask)


@pytest.mark.parametrize("family,task", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_fit_with_and_without_the_cache(family, task):
    """A few steps with the bottom frozen: frozen weights stay bit-identical, and the cached run gives bit-identical
    weights and losses, or the cache refuses with a reason (never a crash inside the model)."""
    data = batch(16, seed=1, task=task)
    runs = {}
    for cache in (False, True):
        model = build(family, task)
        tied = bool(tied_weights(model))
        # the top block and the head train; encoder-decoders train from their second encoder block up
        lf.freeze_to(model, 2 if family in ENCODER_DECODER_FAMILIES else -2, eval_frozen=True, untie=tied)
        before = lf.fingerprint(model)
        try:
            history = lf.fit(model, data, data, epochs=1, batch_size=8, lr=1e-2, seed=3, cache_prefix=cache,
                             progress=False)
        except ValueError as error:
            assert cache and family in CACHE_REFUSES and CACHE_REFUSES[family] in str(error), error
            return
        assert cache is False or family not in CACHE_REFUSES
        assert lf.assert_frozen_unchanged(model, before) > 0
        assert lf.changed_parameters(before, lf.fingerprint(model))  # something trained
        row = history.epochs[0]
        if task == "causal-lm":  # scored per token: perplexity is exp of the mean token loss
            assert row["eval_perplexity"] == pytest.approx(torch.tensor(row["eval_loss"]).exp().item())
            assert 0 <= row["eval_accuracy"] <= 1
        runs[cache] = (row["train_loss"], lf.fingerprint(model), history.cached_groups, row["eval_loss"])
    (plain_loss, plain, _, plain_eval), (cached_loss, cached, cached_groups, cached_eval) = runs[False], runs[True]
    assert cached_groups == [g.name for g in lf.layer_groups(model)][:lf.cache.cacheable_prefix(model)]
    assert cached_loss == plain_loss and cached == plain
    assert cached_eval == pytest.approx(plain_eval, rel=1e-5)


def test_cache_refuses_to_cache_past_the_encoder():
    model = build("bart", "classification")
    lf.freeze_to(model, -2, eval_frozen=True)
    with pytest.raises(ValueError, match="the decoder's blocks read the encoder's output"):
        lf.fit(model, batch(8), epochs=1, batch_size=8, cache_prefix=True, progress=False)


def test_albert_warns_that_its_layers_share_one_block():
    with pytest.warns(UserWarning, match="runs 1 distinct block.s. as 4 layers: the layers share weights"):
        model = lf.tiny_model("albert", num_layers=4)
        lf.layer_groups(model)
    assert "runs 4 times" in lf.group_table(model).loc["block.0", "note"]


def test_shared_position_tables_sit_with_the_embeddings_and_say_so():
    for family, table in (("deberta-v2", "deberta.encoder.rel_embeddings"),
                          ("mpnet", "mpnet.encoder.relative_attention_bias")):
        model = lf.tiny_model(family, vocab_size=VOCAB, num_layers=2)
        groups = lf.layer_groups(model)
        assert table in groups[0].modules and table in lf.group_table(model).loc["embeddings", "note"]


def test_the_classifier_is_the_head_whatever_order_it_was_registered_in():
    model = build("xlm-roberta", "classification")
    assert set(lf.layer_groups(model)[-1].modules) == {"classifier"}
    report = lf.freeze_to(model, -1)
    assert report.group_states["head"] == "trainable" and report.group_states["embeddings"] == "frozen"


def test_opt_final_norm_is_in_the_head():
    model = build("opt", "classification")
    assert "model.decoder.final_layer_norm" in lf.layer_groups(model)[-1].modules


def test_the_trace_changes_no_weights_modes_or_random_state():
    model = lf.tiny_model("bert", num_layers=2)
    model.train()
    before, state = lf.fingerprint(model), torch.random.get_rng_state()
    lf.layer_groups(model)
    assert lf.fingerprint(model) == before and torch.equal(torch.random.get_rng_state(), state)
    assert all(m.training for m in model.modules())


def test_tiny_models_need_nothing_from_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("layerfreeze.models.resolve_model_source", lambda *a, **k: pytest.fail("touched MiniLM"))
    model, tokenizer = lf.load_model("tiny:t5")
    encoded = tokenizer(["not bad at all"], return_tensors="pt")
    assert encoded["input_ids"][0, -1].item() == model.config.eos_token_id == tokenizer.eos_token_id
    assert model(**encoded).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="valid: tiny:bert, tiny:albert"):
        lf.load_model("tiny:nope")
