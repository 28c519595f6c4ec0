"""Signals before training: where does the task live in the model, and which layers would move?

Three measurements, each per layer (or per weight matrix), each turned into a proposed :class:`~layerfreeze.plans.Plan`:

* **linear probe** (:func:`probe_by_layer`): a linear (ridge) classifier on the mean-pooled output of the embeddings and
  of every block. Where its accuracy reaches its best, the task's information is present; the blocks above it
  reshape it for the head. :func:`plan_from_probe` trains those blocks and the head.
* **gradient norm** (:func:`gradient_norms`): how hard the task's loss pulls on each group on a few batches, as
  the root mean square per parameter so that big and small groups compare. :func:`plan_from_gradients` trains the
  groups it pulls hardest.
* **Spectrum's SNR** (:func:`spectrum_snr`, Hartford et al. 2024): for each weight matrix, the singular values
  above the Marchenko-Pastur bound are signal, those below noise; SNR = their sums' ratio, divided by the largest
  singular value. :func:`plan_from_snr` trains the top fraction of matrices of each kind, as Spectrum does.

>>> import torch
>>> x = torch.randn(200, 5); y = (x[:, 2] > 0).long()
>>> linear_probe(x[:100], y[:100], x[100:], y[100:]) > 0.9
True
"""

from __future__ import annotations

import math
import re

import pandas as pd
import torch
from torch import nn

from ..base.data import as_tensors, index_batches
from .inspection import hidden_states
from .freezing import restore_trainable, trainable_state, unfreeze
from .layers import layer_groups
from .plans import Plan
from ..base.runtime import eval_mode

# --- the linear probe ----------------------------------------------------------------------------------------------


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, eval_x: torch.Tensor, eval_y: torch.Tensor,
                 ridge: float = 1.0) -> float:
    """Accuracy on ``eval`` of a ridge-regression classifier (least squares onto one-hot labels, penalty
    ``ridge``) fitted on ``train``, with standardised features: one linear solve, deterministic and quick."""
    mean, std = train_x.double().mean(0), train_x.double().std(0).clamp_min(1e-6)
    ones = lambda x: torch.cat([(x.double() - mean) / std, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    train_x, eval_x = ones(train_x), ones(eval_x)
    classes = int(max(train_y.max(), eval_y.max())) + 1
    targets = nn.functional.one_hot(train_y, classes).double()
    penalty = ridge * torch.eye(train_x.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0  # no penalty on the intercept
    weights = torch.linalg.solve(train_x.T @ train_x + penalty, train_x.T @ targets)
    return float(((eval_x @ weights).argmax(-1) == eval_y).double().mean())


def probe_by_layer(model: nn.Module, train_data, eval_data) -> pd.DataFrame:
    """The probe's accuracy on the output of the embeddings (layer 0) and of each block (layer i + 1 for
    ``block.i``), trained on ``train_data`` and scored on ``eval_data`` (``(input_ids, attention_mask, labels)``).
    """
    train_ids, train_mask, train_y = as_tensors(train_data)
    eval_ids, eval_mask, eval_y = as_tensors(eval_data)
    train_h = hidden_states(model, train_ids, train_mask)
    eval_h = hidden_states(model, eval_ids, eval_mask)
    names = [g.name for g in layer_groups(model)[:-1]]
    return pd.DataFrame({"layer": range(len(train_h)), "output of": names[:len(train_h)],
                         "probe_accuracy": [linear_probe(a, train_y, b, eval_y) for a, b in zip(train_h, eval_h)]})


def plan_from_probe(probe: pd.DataFrame, tolerance: float = 0.02) -> Plan:
    """Freeze up to the first layer whose probe accuracy is within ``tolerance`` of the best; train the blocks
    above it (at least the top one) and the head.

    >>> frame = pd.DataFrame({"probe_accuracy": [0.5, 0.7, 0.9, 0.88, 0.8]})
    >>> plan_from_probe(frame).selection
    ['block.2', 'block.3', 'head']
    """
    scores = probe["probe_accuracy"].to_list()
    best = max(scores)
    first = next(i for i, s in enumerate(scores) if s >= best - tolerance)
    blocks = len(scores) - 1
    start = min(first, blocks - 1)
    trained = [f"block.{i}" for i in range(start, blocks)]
    return Plan(f"probe: blocks {start}-{blocks - 1} + head", trained + ["head"],
                f"the probe reaches {scores[first]:.3f} (best {best:.3f}) at layer {first}: the layers below hold "
                "the task's information already; train the blocks above it and the head")


# --- gradient norms ------------------------------------------------------------------------------------------------

def gradient_norms(model: nn.Module, data, batches: int = 4, batch_size: int = 16, seed: int = 0) -> pd.DataFrame:
    """Each group's gradient norm, summed over ``batches`` batches of ``data`` with every parameter trainable
    (the model is in eval mode, so dropout adds no noise; trainable flags and gradients are restored after).
    ``grad_rms`` divides by the square root of the group's size, so that a big and a small group compare."""
    groups = layer_groups(model)
    state = trainable_state(model)
    unfreeze(model)
    device = next(model.parameters()).device
    input_ids, attention_mask, labels = as_tensors(data)
    with eval_mode(model):
        try:
            for _, index in zip(range(batches), index_batches(len(labels), batch_size, True, seed)):
                out = model(input_ids=input_ids[index].to(device), attention_mask=attention_mask[index].to(device),
                            labels=labels[index].to(device))
                out.loss.backward()
            rows = []
            for group in groups:
                squares = sum(float(p.grad.float().pow(2).sum()) for p in group.parameters.values()
                              if p.grad is not None)
                rows.append({"group": group.name, "grad_norm": math.sqrt(squares), "params": group.num_params,
                             "grad_rms": math.sqrt(squares / max(group.num_params, 1))})
        finally:
            model.zero_grad(set_to_none=True)
            restore_trainable(model, state)
    return pd.DataFrame(rows)


def plan_from_gradients(norms: pd.DataFrame, k: int) -> Plan:
    """Train the ``k`` blocks with the largest gradient RMS, and the head.

    >>> frame = pd.DataFrame({"group": ["embeddings", "block.0", "block.1", "head"], "grad_rms": [1, 3, 2, 9]})
    >>> plan_from_gradients(frame, 1).selection
    ['block.0', 'head']
    """
    blocks = norms[norms["group"].str.startswith("block.")]
    top = blocks.nlargest(k, "grad_rms")["group"].to_list()
    ordered = [g for g in blocks["group"] if g in top]
    return Plan(f"gradient: top {k} block(s) + head", ordered + ["head"],
                f"the task's loss pulls hardest (RMS gradient per parameter) on {', '.join(ordered)}")


# --- Spectrum's signal-to-noise ratio ------------------------------------------------------------------------------

def marchenko_pastur_threshold(sigma: float, rows: int, columns: int) -> float:
    """Spectrum's bound: ``sigma * (1 + sqrt(beta))`` with ``beta`` the aspect ratio (at most 1) of the matrix."""
    beta = min(rows, columns) / max(rows, columns)
    return sigma * (1 + math.sqrt(beta))


def matrix_snr(weight: torch.Tensor) -> dict:
    """Spectrum's SNR of one matrix: ``sigma`` is the singular values' interquartile range / 1.349 (a robust
    standard deviation); values above :func:`marchenko_pastur_threshold` are signal, the rest noise;
    ``snr = sum(signal) / sum(noise)`` and ``snr_ratio = snr / largest singular value``."""
    matrix = weight.detach()
    matrix = matrix if matrix.dtype == torch.float64 else matrix.float()
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    # the singular values, from the smaller Gram matrix: several times quicker than an SVD, exact enough here
    values = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)
    sigma = float(torch.quantile(values, 0.75) - torch.quantile(values, 0.25)) / 1.349
    threshold = marchenko_pastur_threshold(sigma, *weight.shape)
    signal, noise = float(values[values > threshold].sum()), float(values[values <= threshold].sum())
    snr = signal / noise if noise > 0 else math.inf
    return {"sigma": sigma, "threshold": threshold, "signal_values": int((values > threshold).sum()), "snr": snr,
            "snr_ratio": snr / float(values[0])}


def spectrum_snr(model: nn.Module) -> pd.DataFrame:
    """:func:`matrix_snr` of every weight matrix inside the blocks, with its group and its ``kind`` (its name
    inside the block, e.g. ``attention.self.query.weight``), by which Spectrum ranks."""
    rows = []
    for group in layer_groups(model):
        if group.kind != "block":
            continue
        (prefix,) = group.modules
        for name, param in group.parameters.items():
            if param.ndim == 2:
                rows.append({"parameter": name, "group": group.name, "kind": name[len(prefix) + 1:],
                             **matrix_snr(param)})
    return pd.DataFrame(rows)


def plan_from_snr(snr: pd.DataFrame, fraction: float = 0.25) -> Plan:
    """Spectrum: within each kind of matrix, train the top ``fraction`` by ``snr_ratio`` (at least one), with
    their biases, and the head."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    chosen = [name for _, rows in snr.groupby("kind", sort=False)
              for name in rows.nlargest(max(1, math.ceil(fraction * len(rows))), "snr_ratio")["parameter"]]
    modules = [re.compile("^" + re.escape(name.rsplit(".", 1)[0]) + r"\.(weight|bias)$") for name in chosen]
    where = sorted(set(snr[snr["parameter"].isin(chosen)]["group"]), key=lambda g: int(g.split(".")[1]))
    return Plan(f"SNR: top {fraction:.0%} of matrices + head", modules + ["head"],
                f"Spectrum's highest-SNR matrices of each kind, in {', '.join(where)}")
