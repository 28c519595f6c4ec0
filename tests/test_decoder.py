"""Causal LMs in the kit: token-labelled data, supervised fine-tuning's prompt mask, perplexity, the kit's pretrained
decoder (and its recipe), and the decoder study of notebooks 04 and 06."""

import math

import pytest
import torch

import layerfreeze as lf
from layerfreeze.base.corpus import (DEVICES, FIXES, domain_instructions, domain_manual, general_texts,
                                     held_out_general, pretraining_corpus)
from layerfreeze.base.models import KIT_DECODER_SHA256, resolve_model_source, sha256_of
from layerfreeze.core.evaluation import IGNORE_INDEX, evaluate, is_causal_lm
from layerfreeze.core.pretraining import random_decoder, train_tokenizer
from layerfreeze.study import decoder as study


@pytest.fixture(scope="module")
def kit_decoder():
    return lf.load_model("kit-decoder", task="causal-lm")


@pytest.fixture(scope="module")
def tiny_llama():
    return lf.load_model("tiny:llama", task="causal-lm")


def response_only_loss(model, data):
    """Mean cross-entropy over the response tokens, computed by hand from the logits."""
    ids, mask, labels = data.tensors
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[keep], target[keep]).item()


# --- data ------------------------------------------------------------------------------------------------------------

def test_the_prompt_counts_no_loss(kit_decoder):
    _, tokenizer = kit_decoder
    pairs = domain_instructions(4)
    ids, mask, labels = lf.encode_lm([p["response"] for p in pairs], tokenizer, 96,
                                     prompts=[p["prompt"] for p in pairs]).tensors
    for row, pair in enumerate(pairs):
        prompt = len(tokenizer(pair["prompt"])["input_ids"])
        assert (labels[row, :prompt] == IGNORE_INDEX).all()
        real = int(mask[row].sum())
        assert torch.equal(labels[row, prompt:real], ids[row, prompt:real])  # the response, every token of it
        assert (labels[row, real:] == IGNORE_INDEX).all()  # padding
        assert ids[row, real - 1] == tokenizer.eos_token_id  # the response ends where the model should stop


def test_masked_tokens_change_nothing_in_the_loss(kit_decoder):
    """The loss fit trains on, and evaluate's, are the mean over response tokens alone; counting the prompt too
    gives another number (so this test can fail)."""
    model, tokenizer = kit_decoder
    pairs = domain_instructions(6)
    sft = lf.encode_lm([p["response"] for p in pairs], tokenizer, 96, prompts=[p["prompt"] for p in pairs])
    ids, mask, labels = sft.tensors
    expected = response_only_loss(model, sft)
    assert evaluate(model, sft, precision="fp32")["loss"] == pytest.approx(expected, rel=1e-4)
    width = int(mask.sum(1).max())
    with torch.no_grad():
        trained_on = model(input_ids=ids[:, :width], attention_mask=mask[:, :width], labels=labels[:, :width]).loss
    assert trained_on.item() == pytest.approx(expected, rel=1e-4)
    plain = lf.encode_lm([p["prompt"] + p["response"] for p in pairs], tokenizer, 96)
    assert response_only_loss(model, plain) != pytest.approx(expected, rel=1e-3)


def test_perplexity_and_token_accuracy_are_over_scored_tokens(tiny_llama):
    model, tokenizer = tiny_llama
    data = lf.encode_lm(general_texts(8), tokenizer, 64)
    scores = evaluate(model, data, precision="fp32")
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    assert scores["tokens"] == int((data.tensors[2][:, 1:] != IGNORE_INDEX).sum())
    assert 0 <= scores["accuracy"] <= 1


@pytest.mark.parametrize("texts, prompts, message", [
    ("one string", None, "texts must be a list"),
    ([], None, "texts is empty"),
    (["a", 3], None, "texts must be strings"),
    (["a", "b"], ["only one"], "prompts must be a list of strings, one per text"),
])
def test_encode_lm_refuses_bad_input(tiny_llama, texts, prompts, message):
    with pytest.raises(ValueError, match=message):
        lf.encode_lm(texts, tiny_llama[1], 32, prompts=prompts)


def test_fit_refuses_data_of_the_other_kind(tiny_llama):
    model, tokenizer = tiny_llama
    lm_data = lf.encode_lm(general_texts(4), tokenizer, 32)
    with pytest.raises(ValueError, match="one label per token .* is not a causal LM: load it with task='causal-lm'"):
        lf.fit(lf.tiny_model("llama", vocab_size=len(tokenizer)), lm_data, progress=False)
    ids, mask, _ = lm_data.tensors
    with pytest.raises(ValueError, match="one label per example, but LlamaForCausalLM is a causal LM"):
        lf.fit(model, (ids, mask, torch.zeros(len(ids), dtype=torch.long)), progress=False)


def test_is_causal_lm_sees_through_wrappers():
    from layerfreeze.core.adapters import add_lora
    assert is_causal_lm(lf.tiny_model("gpt2", task="causal-lm"))
    assert is_causal_lm(add_lora(lf.tiny_model("llama", task="causal-lm"), 4))
    assert not is_causal_lm(lf.tiny_model("llama"))


# --- the kit's pretrained decoder ------------------------------------------------------------------------------------

def test_the_kit_decoder_is_pinned_and_loads_offline(kit_decoder):
    model, tokenizer = kit_decoder
    assert sha256_of(f"{resolve_model_source('kit-decoder')}/model.safetensors") == KIT_DECODER_SHA256
    assert type(model).__name__ == "LlamaForCausalLM" and lf.num_blocks(model) == 6
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def test_the_kit_decoder_is_really_pretrained(kit_decoder):
    """Held-out general text: at most a tenth of the perplexity of a random model of the same shape."""
    model, tokenizer = kit_decoder
    held_out = lf.encode_lm(held_out_general(200, study.GENERAL_SEED + 99), tokenizer, 96)
    pretrained = evaluate(model, held_out)["perplexity"]
    random = evaluate(random_decoder(tokenizer, seed=1), held_out)["perplexity"]
    assert pretrained <= random / 10, (pretrained, random)


def test_the_recipe_regenerates_the_tokenizer_and_a_short_model(kit_decoder, tmp_path):
    """The committed tokenizer is what the recipe learns from its corpus; a short run of the recipe already
    pretrains (the full run is data/README.md's command)."""
    from layerfreeze.core.pretraining import pretrain_decoder

    _, tokenizer = kit_decoder
    assert train_tokenizer(pretraining_corpus()).get_vocab() == tokenizer.get_vocab()
    short = pretrain_decoder(tmp_path, paragraphs=1500, epochs=1)
    assert short["perplexity"] < short["random_perplexity"] / 5
    reloaded, _ = lf.load_model(str(tmp_path), task="causal-lm")
    assert lf.fingerprint(reloaded) == lf.fingerprint(short["model"])


# --- the corpus ------------------------------------------------------------------------------------------------------

def test_the_domain_is_one_fix_per_symptom_in_both_forms():
    for pair in domain_instructions(50, seed=3):
        device = next(d for d in sorted(DEVICES, key=len, reverse=True) if f" {d} " in pair["prompt"])
        assert any(pair["response"] == " " + fix.format(d=device) + "." for fix in FIXES.values())
    manual = domain_manual(50, seed=3)
    assert all(any(fix.format(d=d) in text for fix in FIXES.values() for d in DEVICES) for text in manual)
    held_out = held_out_general(300, study.GENERAL_SEED)
    assert len(held_out) == 300 and not set(pretraining_corpus()) & set(held_out)


# --- the decoder study -----------------------------------------------------------------------------------------------

def test_every_decoder_strategy_and_method_runs(tiny_llama):
    from layerfreeze.core.signals import plan_from_snr, spectrum_snr

    model, tokenizer = tiny_llama
    data = study.domain_data(tokenizer, 16, 8, 8, max_length=64)
    methods = {**study.decoder_strategies(model, 2),
               **study.llm_methods(model, 10, plan_from_snr(spectrum_snr(model)))}
    rows = study.domain_study(model, methods, data, dict(study.PROTOCOL["smoke"], batch_size=8), [0])
    assert [r["strategy"] for r in rows] == list(methods)
    full = next(r for r in rows if r["strategy"] == "full")
    for row in rows:
        assert row["domain_before"] == full["domain_before"]  # measured once, on the same model
        assert row["domain_gain"] == pytest.approx(row["domain_before"] / row["domain_after"])
        assert 0 < row["trainable_params"] <= full["trainable_params"]
    assert next(r for r in rows if r["strategy"] == "continued pre-training")["trains_on"] == study.CPT


def test_adaptive_freezing_on_a_decoder_refuses_a_tied_head_in_one_line_and_runs_untied(tiny_llama):
    """Adaptive freezing keeps the embeddings frozen and trains the head: on a tied LM head that is one tensor."""
    from layerfreeze.core.strategy import Adaptive, Strategy

    _, tokenizer = tiny_llama
    data = study.domain_data(tokenizer, 16, 8, 8, max_length=64)
    adaptive = Strategy("adaptive", schedule=Adaptive(interval=1, window=1, threshold=100.0), head_lr=None)
    tied = lf.tiny_model("llama", task="causal-lm", vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="one tied tensor.*untie=True"):
        study.domain_run(tied, adaptive, data, lr=1e-3, epochs=1, batch_size=8)
    untied = lf.tiny_model("llama", task="causal-lm", vocab_size=len(tokenizer), tie_word_embeddings=False)
    row = study.domain_run(untied, adaptive, data, lr=1e-3, epochs=2, batch_size=8)
    assert row["steps"] == 4 and row["general_after"] > 0


def test_a_causal_lm_keeps_its_pretrained_head_frozen_under_freeze_tuning_lora_and_expansion(tiny_llama):
    from layerfreeze.core.plans import apply_plan, factory_plan
    from layerfreeze.core.strategy import Expansion, Lora, Strategy

    model, _ = tiny_llama
    for strategy in (Strategy("lora", adapter=Lora(4)), Strategy("expansion", adapter=Expansion(every=2))):
        prepared, _ = strategy.prepare(lf.tiny_model("llama", task="causal-lm"), 10)
        trained = [n for n, p in prepared.named_parameters() if p.requires_grad]
        assert trained and not [n for n in trained if "lm_head" in n or "embed_tokens" in n], strategy.name
    copy = lf.tiny_model("llama", task="causal-lm")
    apply_plan(copy, factory_plan(copy, 2, "mlp"))
    assert {n.split(".")[3] for n, p in copy.named_parameters() if p.requires_grad} == {"mlp"}


def test_a_comparison_on_fewer_than_three_seeds_is_untestable():
    rows = [{"strategy": s, "seed": seed, "general_rise": rise} for seed in (0, 1, 2)
            for s, rise in (("full", 1.5 + seed / 100), ("top", 1.1 + seed / 50))]
    assert study.domain_finding(rows, "k", "full forgets more", "full", "top", "general_rise").verdict == "holds"
    assert study.domain_finding(rows, "k", "top forgets more", "top", "full",
                                "general_rise").verdict == "does not hold"
    one = [r for r in rows if r["seed"] == 0]
    found = study.domain_finding(one, "k", "full forgets more", "full", "top", "general_rise")
    assert found.verdict == "untestable here" and found.reason.startswith("1 seed")


def test_a_schedule_trains_at_the_rate_it_is_given(tiny_llama):
    """LISA carries its own rates: each rate of the search must build the schedule at that rate."""
    from layerfreeze.core.strategy import Lisa, Strategy

    model, tokenizer = tiny_llama
    data = study.domain_data(tokenizer, 16, 8, 8, max_length=64)
    lisa = Strategy("LISA", schedule=Lisa(gamma=1, every=2), head_lr=None)
    slow, fast = (study.domain_run(model, lisa, data, lr=rate, epochs=1, batch_size=8) for rate in (1e-5, 1e-2))
    assert slow["validation_perplexity"] != fast["validation_perplexity"]


def test_saved_rows_are_taken_only_from_the_same_runs(tmp_path):
    import json

    settings = dict(study.PROTOCOL["smoke"])
    rows = [{"strategy": "full", "seed": 0, "general_rise": 1.5}, {"strategy": "LoRA", "seed": 0, "general_rise": 1.1}]
    path = tmp_path / "04.json"
    path.write_text(json.dumps({"decoder": {"model": "kit-decoder", "settings": settings, "data_seed": 0,
                                            "rows": rows}}))
    assert study.saved_rows(path, "kit-decoder", settings, [0], ["full", "LoRA"], 0) == {
        "full": rows[:1], "LoRA": rows[1:]}
    assert study.saved_rows(path, "kit-decoder", settings, [0, 1], ["full"], 0) == {}  # other seeds
    assert study.saved_rows(path, "kit-decoder", {**settings, "epochs": 9}, [0], ["full"], 0) == {}
    assert study.saved_rows(path, "other", settings, [0], ["full"], 0) == {}
    assert study.saved_rows(path, "kit-decoder", settings, [0], ["full"], 1) == {}  # other data
    assert study.saved_rows(tmp_path / "missing.json", "kit-decoder", settings, [0], ["full"], 0) == {}
