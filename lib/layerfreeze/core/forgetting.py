"""Catastrophic forgetting, measured: forgetting metrics and representation drift.

Metrics, for an accuracy matrix ``R`` where ``R[i][j]`` is the accuracy on task ``j`` after training task ``i``:

* **forgetting** (Chaudhry et al. 2018): for each earlier task, the best accuracy it ever had minus its final one;
* **backward transfer, BWT** (Lopez-Paz & Ranzato 2017): ``1/(T-1) * sum_i (R[T-1][i] - R[i][i])`` over the
  earlier tasks (negative when the model forgets);
* **learning**: the accuracy gained on the new task;
* **drift without labels**: linear CKA (Kornblith et al. 2019) between the model after task A and the same model
  after task B, layer by layer, and the cosine agreement of their sentence embeddings: what training B moved;
* **for decoders**: the rise in perplexity on general text after training on domain text.

The experiment that produces these numbers (task A, then task B under a strategy) is
:mod:`layerfreeze.study.sequential`.
"""

from __future__ import annotations

import torch
from torch import nn

from .inspection import hidden_states

# --- metrics on an accuracy matrix ---------------------------------------------------------------------------------


def _matrix(R) -> list[list[float]]:
    rows = [list(map(float, row)) for row in R]
    if not rows or any(len(row) != len(rows) for row in rows):
        raise ValueError("R must be a square T x T matrix: R[i][j] is the accuracy on task j after training task i")
    return rows


def forgetting(R) -> dict:
    """Chaudhry et al. 2018: per earlier task ``j``, ``max_{l < T-1} R[l][j] - R[T-1][j]``; and their mean.

    >>> forgetting([[0.9, 0.1], [0.6, 0.8]])
    {'per_task': [0.30000000000000004], 'mean': 0.30000000000000004}
    """
    R = _matrix(R)
    T = len(R)
    if T < 2:
        raise ValueError("forgetting needs at least two tasks")
    per_task = [max(R[l][j] for l in range(T - 1)) - R[T - 1][j] for j in range(T - 1)]
    return {"per_task": per_task, "mean": sum(per_task) / len(per_task)}


def backward_transfer(R) -> float:
    """Lopez-Paz & Ranzato 2017: ``1/(T-1) * sum_{i < T-1} (R[T-1][i] - R[i][i])``.

    >>> round(backward_transfer([[0.9, 0.0, 0.0], [0.7, 0.8, 0.0], [0.6, 0.9, 0.95]]), 3)
    -0.1
    """
    R = _matrix(R)
    T = len(R)
    if T < 2:
        raise ValueError("backward transfer needs at least two tasks")
    return sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1)


def learning(before: float, after: float) -> float:
    """Accuracy gained on the new task: after training it, minus before."""
    return after - before


# --- representation drift ------------------------------------------------------------------------------------------

def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centered kernel alignment between two ``[examples, features]`` matrices (Kornblith et al. 2019).

    1 for identical representations, unchanged by an orthogonal transform or an isotropic scaling of either.

    >>> x = torch.randn(50, 8, dtype=torch.float64)
    >>> round(linear_cka(x, x), 6), round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]), 6)
    (1.0, 1.0)
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same examples: got {x.shape[0]} and {y.shape[0]} rows")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def drift(original: nn.Module, tuned: nn.Module, input_ids, attention_mask) -> tuple[list[float], float]:
    """Both drift measures from one pass of each model: per-layer CKA and sentence-embedding agreement."""
    before = hidden_states(original, input_ids, attention_mask)
    after = hidden_states(tuned, input_ids, attention_mask)
    agreement = float(torch.nn.functional.cosine_similarity(before[-1], after[-1], dim=-1).mean())
    return [linear_cka(a, b) for a, b in zip(before, after)], agreement


def cka_by_layer(original: nn.Module, tuned: nn.Module, input_ids, attention_mask) -> list[float]:
    """Linear CKA between the two models' representations, for the embeddings output and each block's output."""
    return drift(original, tuned, input_ids, attention_mask)[0]


def embedding_agreement(original: nn.Module, tuned: nn.Module, input_ids, attention_mask) -> float:
    """Mean cosine similarity between the two models' sentence embeddings (mean-pooled last hidden state)."""
    return drift(original, tuned, input_ids, attention_mask)[1]


# --- decoders: forgetting as a rise in perplexity ------------------------------------------------------------------

def perplexity(model: nn.Module, data, batch_size: int | None = None) -> float:
    """exp of the mean next-token loss over every scored token of ``data`` (``encode_lm``'s labels; -100 counts no
    loss): :func:`~layerfreeze.core.evaluation.evaluate`'s ``perplexity``."""
    from .evaluation import evaluate

    return evaluate(model, data, batch_size)["perplexity"]
