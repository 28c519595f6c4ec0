"""Signals before training: where does the task live in the model, and which layers would move?

Three measurements, each per layer (or per weight matrix), each turned into a proposed :class:`~layerfreeze.plans.Plan`:

* **linear probe** (:func:`probe_by_layer`): a linear (ridge) classifier on the mean-pooled output of the embeddings and
  of every block. Where its accuracy reaches its best, the task's information is present; the blocks above it
  reshape it for the head. :func:`plan_from_probe` trains those blocks and the head.
* **gradient norm** (:func:`gradient_norms`): how hard the task's loss pulls on each group on a few batches, as
  the root mean square per parameter so that big and small groups compare. :func:`plan_from_gradients` trains the
  groups it pulls hardest.
* **Spectrum's SNR** (:func:`spectrum_snr`, Hartford et al. 2024): for each weight matrix, the singular values
  above the Marchenko-Pastur bound are signal, those below noise; SNR = their sums' ratio. Two scores: Spectrum's
  reference (``snr_ratio``, :func:`matrix_snr`) and one that passes a planted-signal test (``mp_snr``,
  :func:`matrix_snr_mp`). :func:`plan_from_snr` trains the top fraction of matrices of each kind, as Spectrum does.

>>> import torch
>>> x = torch.randn(200, 5); y = (x[:, 2] > 0).long()
>>> linear_probe(x[:100], y[:100], x[100:], y[100:]) > 0.9
True
"""

from __future__ import annotations

import functools
import math
import re

import pandas as pd
import torch
from torch import nn

from ..base.data import as_tensors, index_batches
from .inspection import hidden_states
from .freezing import restore_trainable, trainable_state
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


def final_norm(model: nn.Module) -> str | None:
    """The name of the norm a decoder applies after its last block (GPT-2's ``transformer.ln_f``, Llama's
    ``model.norm``), which its last hidden state includes; ``None`` for a post-norm encoder such as BERT.

    >>> from ..base.models import tiny_model
    >>> final_norm(tiny_model("gpt2")), final_norm(tiny_model("bert"))
    ('transformer.ln_f', None)
    """
    prefix = getattr(model, "base_model_prefix", "")
    head = layer_groups(model)[-1]
    norms = [name for name, module in head.modules.items() if "Norm" in type(module).__name__
             and (not prefix or name.startswith(prefix + "."))]
    return norms[0] if norms else None


def probe_by_layer(model: nn.Module, train_data, eval_data) -> pd.DataFrame:
    """The probe's accuracy on the output of the embeddings (layer 0) and of each block (layer i + 1 for
    ``block.i``), trained on ``train_data`` and scored on ``eval_data`` (``(input_ids, attention_mask, labels)``).
    A decoder's top layer is read after its final norm (the model's last hidden state): ``output of`` says so.
    """
    train_ids, train_mask, train_y = as_tensors(train_data)
    eval_ids, eval_mask, eval_y = as_tensors(eval_data)
    train_h = hidden_states(model, train_ids, train_mask)
    eval_h = hidden_states(model, eval_ids, eval_mask)
    names = [g.name for g in layer_groups(model)[:-1]][:len(train_h)]
    norm = final_norm(model)
    if norm is not None:
        names[-1] = f"{names[-1]} + {norm}"
    return pd.DataFrame({"layer": range(len(train_h)), "output of": names,
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
    (the model is in eval mode, so dropout adds no noise). Trainable flags, gradients, every module's train/eval
    mode and the groups ``eval_frozen=True`` pins in eval mode are as they were after.
    ``grad_rms`` divides by the square root of the group's size, so that a big and a small group compare."""
    groups = layer_groups(model)
    state = trainable_state(model)
    device = next(model.parameters()).device
    input_ids, attention_mask, labels = as_tensors(data)
    with eval_mode(model):
        try:
            for param in model.parameters():  # flags only: unfreeze() would also release the eval pinning
                param.requires_grad_(True)
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
#
# Two scores per matrix. ``snr_ratio`` is Spectrum's, line for line as its reference code computes it (``spectrum.py``
# in cognitivecomputations/spectrum). ``mp_snr`` keeps Spectrum's idea (values above the Marchenko-Pastur edge are
# signal) but fits the noise level to the whole spectrum and uses the edge of an n x m noise matrix,
# sigma * (sqrt(n) + sqrt(m)): it passes the planted-signal test (tests/test_signals_planted.py) that the reference
# score fails, so the plan ranks by it unless told otherwise.

def marchenko_pastur_threshold(sigma: float, rows: int, columns: int) -> float:
    """Spectrum's bound: ``sigma * (1 + sqrt(beta))`` with ``beta`` the aspect ratio (at most 1) of the matrix."""
    beta = min(rows, columns) / max(rows, columns)
    return sigma * (1 + math.sqrt(beta))


def _singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values, largest first, from the smaller Gram matrix: several times quicker than an SVD."""
    matrix = weight.detach()
    matrix = matrix if matrix.dtype == torch.float64 else matrix.float()
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def matrix_snr(weight: torch.Tensor) -> dict:
    """Spectrum's reference SNR of one matrix: ``sigma`` is the singular values' interquartile range / 1.349;
    values above :func:`marchenko_pastur_threshold` are signal, the rest noise; ``snr = sum(signal) / sum(noise)``
    and ``snr_ratio = snr / largest singular value``. As in the reference, when no value falls below the
    threshold the noise sum counts as 1.0 (a rectangular matrix's values bunch together, so their interquartile
    range is small and every value can be "signal"). Kept faithful for comparison: it depends on the matrix's
    scale and ranks a planted signal below noise (see :func:`matrix_snr_mp`).

    >>> result = matrix_snr(0.02 * torch.randn(64, 256))
    >>> math.isfinite(result["snr_ratio"])
    True
    """
    return _reference_snr(_singular_values(weight), *weight.shape)


def _reference_snr(values: torch.Tensor, rows: int, columns: int) -> dict:
    sigma = float(torch.quantile(values, 0.75) - torch.quantile(values, 0.25)) / 1.349
    threshold = marchenko_pastur_threshold(sigma, rows, columns)
    signal, noise = float(values[values > threshold].sum()), float(values[values <= threshold].sum())
    noise = noise if bool((values <= threshold).any()) else 1.0
    snr = signal / noise if noise > 0 else math.inf
    largest = float(values[0])
    return {"sigma": sigma, "threshold": threshold, "signal_values": int((values > threshold).sum()), "snr": snr,
            "snr_ratio": snr / largest if largest > 0 else math.nan}


@functools.lru_cache(maxsize=256)
def marchenko_pastur_median(beta: float, points: int = 20001) -> float:
    """The median of the Marchenko-Pastur law with aspect ratio ``beta`` (at most 1) and unit variance: the
    eigenvalues of ``X X^T / m`` for an ``n x m`` matrix of standard noise, ``beta = n / m``.

    >>> round(marchenko_pastur_median(1.0), 4)
    0.6528
    """
    low, high = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    # x = low + (high - low) (1 - cos(pi u)) / 2 turns the density's square-root ends into a smooth integrand
    u = torch.linspace(0, 1, points, dtype=torch.float64)
    x = low + (high - low) * (1 - torch.cos(math.pi * u)) / 2
    density = (high - low) ** 2 / 8 * torch.sin(math.pi * u) ** 2 / (beta * x.clamp_min(1e-300))
    density[0] = density[1] if low == 0 else density[0]
    cdf = torch.cumsum((density[1:] + density[:-1]) / 2, 0)
    return float(x[1 + int(torch.searchsorted(cdf, 0.5 * cdf[-1]))])


def noise_edge(sigma: float, rows: int, columns: int, margin: float = 4.0) -> float:
    """The largest singular value an ``rows x columns`` matrix of noise (entries of standard deviation ``sigma``)
    reaches: the Marchenko-Pastur edge ``sigma * (sqrt(n) + sqrt(m))`` plus ``margin`` Tracy-Widom scales
    (Johnstone 2001), since the top noise value fluctuates around the edge. Measured on 200 noise matrices each,
    with sigma fitted by :func:`matrix_snr_mp`: with no margin 28-38% of 64x32 to 256x1024 matrices had a
    "signal" value; with 4 scales none did (0 of 200 at 64x32, 256x256 and 256x1024; 6 of 200 at 32x32)."""
    n, m = sorted((rows, columns))
    mean = (math.sqrt(n) + math.sqrt(m)) ** 2
    scale = (math.sqrt(n) + math.sqrt(m)) * (1 / math.sqrt(n) + 1 / math.sqrt(m)) ** (1 / 3)
    return sigma * math.sqrt(mean + margin * scale)


def matrix_snr_mp(weight: torch.Tensor) -> dict:
    """An SNR that passes the planted-signal test: the noise level ``mp_sigma`` is fitted so that the median
    singular value sits at the Marchenko-Pastur median (a low-rank signal moves a few top values, not the median);
    values above :func:`noise_edge` are signal; ``mp_snr = sum(signal) / sum(noise)``. It is 0 for pure noise,
    above 0 for a planted signal, unchanged when the matrix is scaled, and finite for every shape of a matrix that
    holds noise (inf only for one of rank under half its smaller side, with no noise to fit).

    >>> g = torch.Generator().manual_seed(0)
    >>> noise = 0.02 * torch.randn(128, 256, generator=g)
    >>> planted = noise + 0.5 * torch.ones(128, 256)  # rank one, far above the noise
    >>> matrix_snr_mp(noise)["mp_signal_values"], matrix_snr_mp(planted)["mp_signal_values"]
    (0, 1)
    """
    return _mp_snr(_singular_values(weight), *weight.shape)


def _mp_snr(values: torch.Tensor, rows: int, columns: int) -> dict:
    n, m = sorted((rows, columns))
    sigma = float(values.median()) / math.sqrt(m * marchenko_pastur_median(round(n / m, 6)))
    edge = noise_edge(sigma, n, m)
    signal = values > edge
    noise, signal_sum = float(values[~signal].sum()), float(values[signal].sum())
    # no noise left to compare with: a zero matrix (0), or one of rank under half its smaller side (inf)
    snr = signal_sum / noise if noise > 0 else (math.inf if signal_sum > 0 else 0.0)
    return {"mp_sigma": sigma, "mp_edge": edge, "mp_signal_values": int(signal.sum()), "mp_snr": snr}


def spectrum_snr(model: nn.Module) -> pd.DataFrame:
    """Both SNRs of every weight matrix inside the blocks (:func:`matrix_snr`, Spectrum's reference, and
    :func:`matrix_snr_mp`), with its group and its ``kind`` (its name inside the block, e.g.
    ``attention.self.query.weight``), by which Spectrum ranks."""
    rows = []
    for group in layer_groups(model):
        if group.kind != "block":
            continue
        (prefix,) = group.modules
        for name, param in group.parameters.items():
            if param.ndim == 2:
                values = _singular_values(param)  # once, for both scores
                rows.append({"parameter": name, "group": group.name, "kind": name[len(prefix) + 1:],
                             **_reference_snr(values, *param.shape), **_mp_snr(values, *param.shape)})
    return pd.DataFrame(rows)


SNR_SCORES = ("mp_snr", "snr_ratio")


def plan_from_snr(snr: pd.DataFrame, fraction: float = 0.25, score: str = "mp_snr",
                  train_embeddings: bool = True) -> Plan:
    """Spectrum: within each kind of matrix, train the top ``fraction`` by ``score`` with their biases, the head,
    and (``train_embeddings``, as Spectrum always does) the embeddings.

    ``score``: ``mp_snr`` (default: it ranks a planted signal above noise) or ``snr_ratio`` (Spectrum's reference
    score). Like the reference, the count per kind is ``int(fraction * n)``, rounded down; unlike it, at least
    one matrix of each kind trains (the reference would train none of a kind with fewer than ``1 / fraction``
    matrices). The reference trains ``embed_tokens.weight`` and ``lm_head.weight``; here the whole embeddings
    group (for BERT also its position embeddings and LayerNorm) and the whole head group (with a decoder's
    final norm).

    >>> frame = pd.DataFrame({"parameter": [f"b.{i}.q.weight" for i in range(6)], "group": [f"block.{i}" for i in
    ...                       range(6)], "kind": ["q.weight"] * 6, "mp_snr": [0, 3, 1, 0, 2, 0]})
    >>> plan_from_snr(frame, 0.34).reason
    "Spectrum's highest-mp_snr matrices of each kind (2 of 6), in block.1, block.4; + embeddings, head"
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    if score not in SNR_SCORES:
        raise ValueError(f"score must be one of {', '.join(SNR_SCORES)}; got {score!r}")
    if score not in snr.columns:
        raise ValueError(f"score={score!r} is not a column of the SNR table; it has {', '.join(snr.columns)}")
    chosen, counts = [], []
    for _, rows in snr.groupby("kind", sort=False):
        take = max(1, int(fraction * len(rows) + 1e-9))  # the reference's int(), with a floor of one
        chosen += rows.sort_values(score, ascending=False, kind="stable")["parameter"].head(take).to_list()
        counts.append(f"{take} of {len(rows)}")
    modules = [re.compile("^" + re.escape(name.rsplit(".", 1)[0]) + r"\.(weight|bias)$") for name in chosen]
    where = sorted(set(snr[snr["parameter"].isin(chosen)]["group"]), key=lambda g: int(g.split(".")[1]))
    always = ["embeddings", "head"] if train_embeddings else ["head"]
    return Plan(f"SNR ({score}): top {fraction:.0%} of matrices + {' + '.join(always)}", modules + always,
                f"Spectrum's highest-{score} matrices of each kind ({', '.join(dict.fromkeys(counts))}), in "
                f"{', '.join(where)}; + {', '.join(always)}")
