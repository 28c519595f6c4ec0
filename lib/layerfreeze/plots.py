"""Figures the notebooks share. Each function draws on an Axes (a new one when none is given) and returns it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from torch import nn

from .inspection import group_table
from .memory import MiB, MemoryEstimate

TRAINABLE_COLOR, FROZEN_COLOR = "#2a9d8f", "#b0b7bf"
MEMORY_COLORS = {"weights": "#264653", "gradients": "#e9c46a", "optimizer state": "#f4a261",
                 "activations": "#e76f51"}


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    return ax


def plot_parameter_groups(model_or_table: nn.Module | pd.DataFrame, ax=None, log: bool = False):
    """Parameters per layer group, stacked trainable (teal) over frozen (grey)."""
    table = group_table(model_or_table) if isinstance(model_or_table, nn.Module) else model_or_table
    table = table.drop(index="total", errors="ignore")
    ax = _axes(ax)
    millions = 1e6
    ax.bar(table.index, table["trainable"] / millions, color=TRAINABLE_COLOR, label="trainable")
    ax.bar(table.index, table["frozen"] / millions, bottom=table["trainable"] / millions, color=FROZEN_COLOR,
           label="frozen")
    ax.set_ylabel("parameters (millions)")
    if log:
        ax.set_yscale("log")
    ax.set_title("Parameters per layer group")
    ax.legend(frameon=False)
    ax.tick_params(axis="x", rotation=45)
    return ax


def plot_memory(estimates: dict[str, MemoryEstimate], ax=None, measured_mib: dict[str, float] | None = None):
    """Stacked bars of estimated memory per strategy (MiB); ``measured_mib`` adds measured peaks as markers."""
    ax = _axes(ax)
    names = list(estimates)
    bottoms = [0.0] * len(names)
    for component, color in MEMORY_COLORS.items():
        values = [estimates[n].table().loc[component, "total"] for n in names]
        ax.bar(names, values, bottom=bottoms, color=color, label=component)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    if measured_mib:
        xs = [names.index(n) for n in measured_mib]
        ax.scatter(xs, list(measured_mib.values()), marker="D", color="black", zorder=3, label="measured peak")
    ax.set_ylabel("MiB")
    ax.set_title("Memory of one training step")
    ax.legend(frameon=False, fontsize="small")
    ax.tick_params(axis="x", rotation=20)
    return ax
