"""Baselines that give an accuracy its meaning: what a model with no pretraining, and the pretrained features with
no fine-tuning, already reach on the task.

- :func:`majority_class`: always the training split's most common class.
- :func:`tfidf_logistic`: TF-IDF of words and word pairs, then logistic regression (scikit-learn). No pretraining at
  all: a fine-tuned transformer that does not beat it has bought nothing with its pretraining on this task.
- :func:`linear_probe`: logistic regression on the pretrained model's mean-pooled last hidden states, the body
  untouched. The classic linear probe; a head-only fine-tune is a noisier, costlier version of it.

Each chooses its regularisation strength ``C`` on the validation split from a grid of five values a decade apart and
says when the choice sits on the grid's edge; each returns per-example correctness on the test split, so a strategy's
gain over it gets a paired interval (:func:`above_baselines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..base.data import texts_and_labels, as_tensors
from ..core.inspection import hidden_states
from .evidence import choose_learning_rate, difference_interval, grid_edge

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
SCRATCH_GRID = (1e-4, 3e-4, 1e-3, 3e-3)  # random weights take larger steps than fine-tuning's


@dataclass
class Baseline:
    """One baseline's test result: ``correct`` holds 0/1 per test example; ``c`` is the chosen ``C``."""

    name: str
    accuracy: float
    correct: np.ndarray = field(repr=False)
    c: float
    validation_by_c: dict
    note: str = ""


def _fit_logistic(name, train, validation, test, grid) -> Baseline:
    """Fit one logistic regression per ``C`` of ``grid`` on ``train = (features, labels)``, keep the one that
    scores best on ``validation``, and score it on ``test``."""
    from sklearn.linear_model import LogisticRegression

    if len(grid) < 2 or any(c <= 0 for c in grid):
        raise ValueError(f"grid must hold at least two values of C above 0; got {grid!r}")
    scores, models = {}, {}
    for c in grid:
        models[c] = LogisticRegression(C=c, max_iter=3000).fit(*train)
        scores[c] = float(models[c].score(*validation))
    best = max(grid, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: the less extreme C
    correct = (models[best].predict(test[0]) == np.asarray(test[1])).astype(float)
    edge = grid_edge(best, list(grid), what="C")
    return Baseline(name, float(correct.mean()), correct, best, scores, f"C {best:g}" + (f", {edge}" if edge else ""))


def majority_class(train_labels, test_labels) -> Baseline:
    """Always answer the training split's most common class: the floor every accuracy is read against (a model A
    at 65% on a task whose majority class is 55% learned 10 points, not 65).

    >>> majority_class([0, 1, 1], [1, 0, 1, 1]).accuracy
    0.75
    """
    train, test = np.asarray(train_labels), np.asarray(test_labels)
    if train.size == 0 or test.size == 0:
        raise ValueError(f"train_labels and test_labels must be non-empty; got {train.size} and {test.size} labels")
    values, counts = np.unique(train, return_counts=True)
    label = values[np.argmax(counts)]
    correct = (test == label).astype(float)
    return Baseline("majority class", float(correct.mean()), correct, float("nan"), {}, f"always {label}")


def tfidf_logistic(task, grid=C_GRID) -> Baseline:
    """TF-IDF (words and word pairs, sublinear counts) + logistic regression on ``task`` (a :func:`load_task`
    result with ``train``, ``validation`` and ``test`` splits).

    >>> from layerfreeze.base.data import load_task
    >>> round(tfidf_logistic(load_task("b", limit={"train": 200, "validation": 50, "test": 50})).accuracy, 1) > 0.2
    True
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (texts_and_labels(task[s])
                                                            for s in ("train", "validation", "test"))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train_x)
    return _fit_logistic("TF-IDF + logistic regression", (vectorizer.transform(train_x), train_y),
                         (vectorizer.transform(val_x), val_y), (vectorizer.transform(test_x), test_y), grid)


def pooled_features(model, data) -> np.ndarray:
    """The mean-pooled last hidden states of encoded ``data`` (``(input_ids, attention_mask, labels)``)."""
    input_ids, attention_mask, _ = as_tensors(data)
    return hidden_states(model, input_ids, attention_mask)[-1].float().cpu().numpy()


def linear_probe(model, train, validation, test, grid=C_GRID) -> Baseline:
    """Logistic regression on ``model``'s frozen, mean-pooled last hidden states (the pretrained body, no
    fine-tuning); ``train``, ``validation`` and ``test`` are encoded data (:func:`~layerfreeze.base.data.encode`).
    Features are standardised with the training split's mean and spread."""
    features = [pooled_features(model, split) for split in (train, validation, test)]
    mean, spread = features[0].mean(0), features[0].std(0) + 1e-6
    scaled = [(f - mean) / spread for f in features]
    labels = [as_tensors(split)[2].cpu().numpy() for split in (train, validation, test)]
    return _fit_logistic("linear probe (frozen, mean-pooled)", *zip(scaled, labels), grid=grid)


def predicts_one_class(correct, labels) -> bool:
    """Whether per-example correctness is exactly that of always answering one class (right on that class's
    examples, wrong on every other): the signature of a run that learned nothing.

    >>> predicts_one_class([1, 0, 1, 0], [2, 1, 2, 0]), predicts_one_class([1, 1, 0, 0], [2, 1, 2, 0])
    (True, False)
    """
    correct, labels = np.asarray(correct, dtype=bool), np.asarray(labels)
    return any(np.array_equal(correct, labels == label) for label in np.unique(labels))


def from_scratch(base, train, validation, test, grid=SCRATCH_GRID, *, epochs: int = 5, batch_size: int = 32,
                 seed: int = 0, early_stopping: int | None = 2, **fit_options) -> Baseline:
    """``base``'s architecture from random weights (seeded), every layer trained for at most ``epochs`` epochs
    (early stopping on ``validation`` with patience ``early_stopping``), at each rate of ``grid`` (the head gets
    the same rate: nothing in it is pretrained); the rate that scores best on ``validation`` is kept and scored on
    ``test``. The note names the rate, says when it sits on the grid's edge, and when the model predicts a single
    class on the test set (:func:`predicts_one_class`: a failed run, not the architecture's limit).

    >>> from layerfreeze.base.models import tiny_model
    >>> import torch
    >>> data = (torch.randint(5, 99, (32, 6)), torch.ones(32, 6, dtype=torch.long), torch.randint(0, 2, (32,)))
    >>> result = from_scratch(tiny_model("bert"), data, data, data, grid=(1e-3, 3e-3), epochs=1, batch_size=16)
    note: the chosen rate ... is on the ... edge of its grid (... of 1e-03 to 3e-03)...
    >>> result.name, len(result.correct), sorted(result.validation_by_c)
    ('from scratch (tuned)', 32, [0.001, 0.003])
    """
    from ..core.strategy import Strategy
    from .runs import run_strategy

    if len(grid) < 2 or any(rate <= 0 for rate in grid):
        raise ValueError(f"grid must hold at least two learning rates above 0; got {grid!r}")
    def run(rate):
        return run_strategy(base, Strategy("from scratch", "all", lr=rate, head_lr=rate, from_scratch=True), train,
                            validation, test, epochs=epochs, batch_size=batch_size, seed=seed, progress=False,
                            cache_prefix=False, early_stopping=early_stopping, **fit_options)

    rate, row, scores = choose_learning_rate(run, list(grid))
    correct = np.asarray(row["test_correct"], dtype=float)
    labels = as_tensors(test)[2].cpu().numpy()
    single = predicts_one_class(correct, labels)
    edge = grid_edge(rate, list(grid), accuracy=scores[rate])
    note = (f"lr {rate:g}" + (f", {edge}" if edge else "") + (", predicts a single class" if single else "")
            + (f"; {row['stop_reason']}" if row.get("stop_reason") else ""))
    return Baseline("from scratch (tuned)", float(correct.mean()), correct, rate, scores, note)


def above_baselines(accuracies: dict, correct: dict, baselines: list[Baseline], chance: float) -> pd.DataFrame:
    """Each strategy's test accuracy raw (in percent), above chance and above the best baseline (points, with the
    paired 95% interval over the same test examples): ``accuracies`` and ``correct`` by strategy name.

    >>> b = Baseline("b", 0.5, np.array([1, 0, 1, 0]), 1.0, {})
    >>> float(above_baselines({"s": 0.75}, {"s": np.array([1, 1, 1, 0])}, [b], chance=0.5).loc["s", "above_baseline_points"])
    25.0
    """
    best = max(baselines, key=lambda b: b.accuracy)
    rows = {}
    for name, accuracy in accuracies.items():
        gain = difference_interval(correct[name], best.correct)
        rows[name] = {"accuracy_percent": accuracy * 100, "above_chance_points": (accuracy - chance) * 100,
                      "above_baseline_points": gain.estimate * 100, "above_baseline_low": gain.low * 100,
                      "above_baseline_high": gain.high * 100}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["baseline"] = best.name
    return table
