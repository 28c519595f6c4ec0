"""The recipe of the kit's own pretrained decoder, ``"kit-decoder"`` (:func:`~layerfreeze.base.models.load_model`).

A Llama-shaped causal LM (6 blocks, 128 wide, rotary positions, a byte-level BPE vocabulary of at most 2,048 tokens:
the trainer stops at 1,276, all the merges the corpus's small lexicon has) pretrained
with :func:`~layerfreeze.core.training.fit` on the generated general corpus of :mod:`layerfreeze.base.corpus` (2% of it manual text of the domain). The
committed weights are what :func:`pretrain_decoder` writes with its defaults; ``data/README.md`` gives the run
(its time, its held-out perplexity against a random model of the same shape) and the command that repeats it::

    python -c "from layerfreeze.core.pretraining import pretrain_decoder; pretrain_decoder('lib/layerfreeze/base/kit_decoder')"

A short version (``pretrain_decoder(out_dir, paragraphs=2000, epochs=1)``) runs in seconds; the tests run it.
"""

from __future__ import annotations

from pathlib import Path

from ..base.corpus import PRETRAINING_PARAGRAPHS, PRETRAINING_SEED, held_out_general, pretraining_corpus
from ..base.text import encode_lm
from .evaluation import evaluate
from .training import fit

SHAPE = dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=384, max_position_embeddings=256)
VOCAB_SIZE = 2048
END = "<|endoftext|>"
MAX_LENGTH = 128
HELD_OUT_SEED = 10_000  # the general texts the recipe measures on; no pretraining text comes from this seed


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer (as GPT-2's) learnt from ``texts``, with ``<|endoftext|>`` as its one special
    token (the end of a text, and the padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END, bos_token=END, pad_token=END,
                                   unk_token=END, model_max_length=SHAPE["max_position_embeddings"])


def random_decoder(tokenizer, seed: int = 0):
    """A Llama of the recipe's shape with random weights: the baseline a pretrained decoder is measured against."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **SHAPE)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pretrain_decoder(out_dir: str | Path | None = None, *, paragraphs: int = PRETRAINING_PARAGRAPHS, epochs: int = 2,
                     lr: float = 3e-3, batch_size: int = 64, seed: int = PRETRAINING_SEED, progress: bool = False) -> dict:
    """Pretrain the kit's decoder on ``paragraphs`` general texts (and a little manual text:
    :func:`~layerfreeze.base.corpus.pretraining_corpus`); save it (with its tokenizer) to ``out_dir``.

    Returns the model, the tokenizer and the measurements: held-out general-text perplexity before (random
    weights, the same shape) and after, and the training time."""
    texts = pretraining_corpus(paragraphs, seed)
    tokenizer = train_tokenizer(texts)
    model = random_decoder(tokenizer, seed)
    held_out = encode_lm(held_out_general(500, HELD_OUT_SEED), tokenizer, MAX_LENGTH)
    before = evaluate(model, held_out)["perplexity"]
    history = fit(model, encode_lm(texts, tokenizer, MAX_LENGTH), epochs=epochs, lr=lr, batch_size=batch_size,
                  curve="cosine", warmup=0.05, weight_decay=0.1, seed=seed, progress=progress,
                  bucket_by_length=True)
    after = evaluate(model, held_out)["perplexity"]
    if out_dir is not None:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        _portable_tokenizer_config(Path(out_dir))
    return {"model": model, "tokenizer": tokenizer, "random_perplexity": before, "perplexity": after,
            "train_seconds": history.train_seconds, "steps": history.steps, "paragraphs": paragraphs,
            "tokens": int(encode_lm(texts, tokenizer, MAX_LENGTH).tensors[1].sum()) * epochs}


def _portable_tokenizer_config(folder: Path) -> None:
    """Name the tokenizer's class as every supported transformers knows it (5.x writes ``TokenizersBackend``, which
    4.x cannot load)."""
    import json

    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    settings.pop("backend", None)
    path.write_text(json.dumps(settings, indent=2) + "\n")
