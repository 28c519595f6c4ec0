"""Scoring a model on data: :func:`evaluate`, the one evaluation loop, and the checks every data set passes first.

Data is ``(input_ids, attention_mask, labels)``. A classifier has one label per example
(:func:`~layerfreeze.base.data.encode`); a causal language model has one label per token
(:func:`~layerfreeze.base.text.encode_lm`), ``-100`` where no loss counts (padding, and an instruction's prompt in
supervised fine-tuning). A classifier is scored by accuracy, a causal LM by perplexity and next-token accuracy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base.data import as_tensors, by_length_batches, eval_batch_size as default_eval_batch_size, real_lengths
from ..base.runtime import autocast, eval_mode, resolve_precision

IGNORE_INDEX = -100  # the label of a token that no loss counts (transformers' convention)


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` predicts the next token (a ``...ForCausalLM`` or ``...LMHeadModel``, also under peft)."""
    name = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
    return "CausalLM" in name or name.endswith("LMHeadModel")


def forward_rows(model, inputs, lengths, index, stand_in=None, cached=None, device=None, with_labels: bool = True):
    """The model on one batch, ``index`` (on the CPU) into ``inputs``, cut to the batch's widest row
    (:func:`~layerfreeze.base.data.real_lengths`); with a cache, its frozen prefix replayed for those rows."""
    width = int(lengths[index].max())
    on_device = index.to(device)
    input_ids, attention_mask, labels = inputs[0][on_device, :width], inputs[1][on_device, :width], inputs[2][on_device]
    if labels.ndim == 2:  # one label per token: cut like the inputs
        labels = labels[:, :width]
    labels = labels if with_labels else None
    if stand_in is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    stand_in.value = cached[index.to(cached.device), :width].to(device, non_blocking=True)
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    finally:
        stand_in.value = None  # a model that shares the blocks runs them for real in between


def evaluate(model: nn.Module, data, batch_size: int | None = None, device: torch.device | None = None,
             precision: str = "auto", _stand_in=None, _cached=None) -> dict:
    """Loss and accuracy of ``model`` on ``data``, in batches of ``batch_size`` examples of similar length (by
    default :func:`~layerfreeze.base.data.eval_batch_size`). For a causal LM the loss is the mean over predicted
    tokens, ``accuracy`` the share of next tokens predicted right, and ``perplexity`` is ``exp(loss)``.

    >>> from layerfreeze import tiny_model
    >>> data = (torch.randint(5, 99, (8, 6)), torch.ones(8, 6, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    >>> sorted(evaluate(tiny_model("bert"), data))
    ['accuracy', 'loss']
    >>> ids = torch.randint(5, 99, (8, 6))
    >>> sorted(evaluate(tiny_model("gpt2", task="causal-lm"), (ids, torch.ones_like(ids), ids)))
    ['accuracy', 'loss', 'perplexity', 'tokens']
    """
    if len(as_tensors(data)[2]) == 0:
        raise ValueError("data has 0 rows: evaluate needs at least one labelled example (check the split or the "
                         "filter that produced it)")
    hits, counts, loss = _score(model, data, batch_size, device, precision, _stand_in, _cached)
    if as_tensors(data)[2].ndim == 1:
        return {"loss": loss, "accuracy": hits.sum().item() / len(hits)}
    tokens = int(counts.sum())
    return {"loss": loss, "accuracy": hits.sum().item() / max(tokens, 1), "perplexity": math.exp(min(loss, 50.0)),
            "tokens": tokens}


def score_examples(model: nn.Module, data, batch_size: int | None = None, device: torch.device | None = None,
                   precision: str = "auto", _stand_in=None, _cached=None) -> tuple[torch.Tensor, float]:
    """Each example's score (a tensor on the CPU, in the order of ``data``) and the mean loss. For a classifier the
    score says whether the example is right (bool); for a causal LM it is the share of its tokens predicted right."""
    hits, counts, loss = _score(model, data, batch_size, device, precision, _stand_in, _cached)
    return (hits if as_tensors(data)[2].ndim == 1 else hits / counts.clamp(min=1)), loss


def _score(model, data, batch_size, device, precision, stand_in, cached):
    """The one evaluation loop: per example, the hits and the number of scored labels, and the mean loss (per
    example for a classifier, per token for a causal LM)."""
    tensors = as_tensors(data)
    device = device or next(model.parameters()).device
    precision, batch_size = resolve_precision(precision, device), batch_size or default_eval_batch_size(device)
    inputs = tuple(t.to(device) for t in tensors)
    lengths, labels = real_lengths(inputs[1]), inputs[2]
    per_token = labels.ndim == 2
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    hits = torch.zeros(len(labels), dtype=torch.float32 if per_token else torch.bool)
    counts = torch.ones(len(labels))
    with eval_mode(model), torch.no_grad(), autocast(precision, device):
        for index in by_length_batches(lengths, batch_size):
            out = forward_rows(model, inputs, lengths, index, stand_in, cached, device, with_labels=not per_token)
            if per_token:
                batch_hits, batch_counts, batch_loss = _next_token_scores(out.logits, labels[index.to(device)])
                hits[index], counts[index] = batch_hits.cpu(), batch_counts.cpu()
                total_loss += batch_loss
            else:
                total_loss += out.loss.double() * len(index)
                hits[index] = (out.logits.argmax(-1) == labels[index.to(device)]).cpu()
    units = counts.sum().item() if per_token else len(labels)
    return hits, counts, total_loss.item() / max(units, 1)


def _next_token_scores(logits: torch.Tensor, labels: torch.Tensor):
    """Per row: next tokens predicted right, tokens scored; and the summed loss (logits at t predict label t + 1)."""
    logits, target = logits[:, :-1].float(), labels[:, 1:logits.shape[1]]
    scored = target != IGNORE_INDEX
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum")
    right = (logits.argmax(-1) == target) & scored
    return right.sum(1).float(), scored.sum(1).float(), loss.double()


# --- the checks every data set passes before anything trains --------------------------------------------------------

def check_data(name: str, model: nn.Module, data) -> int:
    """The data fit takes: not empty, token ids in the model's vocabulary, sequences within its positions, labels
    that match the model (classes for a classifier, token ids or -100 for a causal LM). Returns the number of
    examples."""
    try:
        input_ids, attention_mask, labels = as_tensors(data)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (input_ids, attention_mask, labels) of one length, e.g. from "
                         f"layerfreeze.encode(split, tokenizer); got {type(data).__name__}") from None
    if len(labels) == 0:
        raise ValueError(f"{name} is empty: there is nothing to train or evaluate on")
    vocabulary = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    if vocabulary is not None and (input_ids.min() < 0 or input_ids.max() >= vocabulary):
        raise ValueError(f"{name} has token ids from {int(input_ids.min())} to {int(input_ids.max())}, but the model's "
                         f"vocabulary has ids 0 to {vocabulary - 1}: encode with the model's own tokenizer")
    positions = max_positions(model)
    if positions is not None and input_ids.shape[-1] > positions:
        raise ValueError(f"{name} has sequences of {input_ids.shape[-1]} tokens, but the model takes at most "
                         f"{positions}: encode with max_length={positions} or less")
    _check_labels(name, model, labels, input_ids, vocabulary)
    return len(labels)


def _check_labels(name: str, model: nn.Module, labels, input_ids, vocabulary: int | None) -> None:
    causal = is_causal_lm(model)
    if causal and labels.ndim != 2:
        raise ValueError(f"{name} has one label per example, but {type(model).__name__} is a causal LM, which takes "
                         "one label per token: encode with layerfreeze.encode_lm(texts, tokenizer)")
    if not causal and labels.ndim == 2:
        raise ValueError(f"{name} has one label per token (causal-LM data), but {type(model).__name__} is not a "
                         "causal LM: load it with task='causal-lm', or encode one label per example (encode)")
    if causal:
        if labels.shape != input_ids.shape:
            raise ValueError(f"{name} has labels of shape {tuple(labels.shape)} for inputs of shape "
                             f"{tuple(input_ids.shape)}: a causal LM needs one label per input token")
        scored = labels[labels != IGNORE_INDEX]
        if vocabulary is not None and len(scored) and (scored.min() < 0 or scored.max() >= vocabulary):
            raise ValueError(f"{name} has token labels outside the vocabulary (0 to {vocabulary - 1}, or -100 for no "
                             "loss): encode with the model's own tokenizer")
        return
    classes = getattr(getattr(model, "config", None), "num_labels", None)
    if labels.ndim == 1 and classes and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name} has labels from {int(labels.min())} to {int(labels.max())}, but the model has "
                         f"{classes} classes (labels 0 to {classes - 1}): load it with num_labels=num_labels(task)")


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence a model with learned absolute positions takes (RoBERTa's first positions are reserved
    for padding); ``None`` for rotary or relative positions."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in ("position_embeddings", "wpe"):
            return module.num_embeddings - (module.padding_idx + 1 if module.padding_idx is not None else 0)
    return None
