"""Signals before training: the probe, gradient norms and Spectrum's SNR, each checked on a known answer."""

import math

import pandas as pd
import pytest
import torch

from layerfreeze import apply_plan, tiny_model
from layerfreeze.core.freezing import trainable_state
from layerfreeze.core.signals import (gradient_norms, linear_probe, matrix_snr, plan_from_gradients, plan_from_probe,
                                      plan_from_snr, probe_by_layer, spectrum_snr)

from .test_training import toy_task


def test_probe_finds_a_planted_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    y = (x[:, 5] + 0.1 * torch.randn(400, generator=g) > 0).long()
    assert linear_probe(x[:200], y[:200], x[200:], y[200:]) > 0.9
    noise = torch.randn(400, 16, generator=g)  # the same labels, features with no signal: chance
    assert abs(linear_probe(noise[:200], y[:200], noise[200:], y[200:]) - 0.5) < 0.12


def test_probe_by_layer_covers_every_layer(bert):
    frame = probe_by_layer(bert, toy_task(64, seed=1), toy_task(64, seed=2))
    assert frame["output of"].to_list() == ["embeddings", "block.0", "block.1", "block.2", "block.3"]
    assert frame["probe_accuracy"].between(0, 1).all()


def test_plan_from_probe_trains_the_blocks_above_where_the_task_appears():
    low = pd.DataFrame({"probe_accuracy": [0.6, 0.9, 0.9, 0.85, 0.8]})
    assert plan_from_probe(low).selection == ["block.1", "block.2", "block.3", "head"]
    top = pd.DataFrame({"probe_accuracy": [0.5, 0.6, 0.7, 0.8, 0.9]})
    assert plan_from_probe(top).selection == ["block.3", "head"]


def test_snr_of_a_matrix_with_a_known_spectrum():
    # singular values 20, 3, 2.5, 2, 1.5, 1, 0.5, 0.25 in an 8 x 8 matrix (beta = 1). By hand, with torch.quantile's
    # linear interpolation: q25 = 0.875, q75 = 2.625, sigma = 1.75 / 1.349, threshold = 2 sigma = 2.5945;
    # signal: 20 + 3, noise: 7.75; SNR = 23 / 7.75; ratio = SNR / 20.
    values = torch.tensor([20, 3, 2.5, 2, 1.5, 1, 0.5, 0.25], dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    result = matrix_snr(u @ torch.diag(values) @ v.T)
    assert result["signal_values"] == 2
    assert result["threshold"] == pytest.approx(2 * 1.75 / 1.349, rel=1e-5)
    assert result["snr"] == pytest.approx(23 / 7.75, rel=1e-5)
    assert result["snr_ratio"] == pytest.approx(23 / 7.75 / 20, rel=1e-5)


def test_snr_ranks_a_planted_low_rank_signal_above_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 32, generator=g)
    signal = noise + 3 * torch.randn(64, 2, generator=g) @ torch.randn(2, 32, generator=g)
    assert matrix_snr(signal)["snr"] > matrix_snr(noise)["snr"]


def test_spectrum_plan_takes_the_top_fraction_of_each_kind(bert):
    frame = spectrum_snr(bert)
    kinds = frame["kind"].nunique()
    assert len(frame) == 4 * kinds and set(frame["group"]) == {f"block.{i}" for i in range(4)}
    plan = plan_from_snr(frame, fraction=0.25)  # one matrix of each kind out of four blocks
    report = apply_plan(bert, plan)
    trained = {n for n, p in bert.named_parameters() if p.requires_grad and ".layer." in n}
    assert len({n for n in trained if n.endswith("weight") and n in set(frame["parameter"])}) == kinds
    assert report.group_states["head"] == "trainable"


def test_gradient_norms_restore_the_model_and_rank_groups(bert):
    state = trainable_state(bert)
    frame = gradient_norms(bert, toy_task(64), batches=2)
    assert trainable_state(bert) == state and all(p.grad is None for p in bert.parameters())
    assert frame["group"].to_list()[0] == "embeddings" and (frame["grad_norm"] > 0).all()
    assert all(math.isclose(r.grad_rms, r.grad_norm / math.sqrt(r.params)) for r in frame.itertuples())
    plan = plan_from_gradients(frame, 2)
    assert len(plan.selection) == 3 and plan.selection[-1] == "head"
