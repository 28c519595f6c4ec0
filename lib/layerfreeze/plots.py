"""Figures the notebooks share. Each function draws on an Axes (a new one when none is given) and returns it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
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


def label_points(ax, xs, ys, labels, log_x: bool = False, close: float = 0.06) -> None:
    """Write each label beside its point; a label whose point sits close to an earlier one (within ``close`` of
    the data's range on both axes) moves down a line, so that near-identical results stay readable.

    >>> ax = _axes(None)
    >>> label_points(ax, [1.0, 1.01, 5.0], [0.5, 0.5, 0.9], ["a", "b", "c"])
    >>> [t.xyann[1] for t in ax.texts]
    [4, -7, 4]
    """
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    xs = np.log10(xs) if log_x else xs

    def unit(v):
        return (v - v.min()) / ((v.max() - v.min()) or 1.0)

    nx, ny = unit(xs), unit(ys)
    for i, text in enumerate(labels):
        crowd = sum(bool(abs(nx[i] - nx[j]) < close and abs(ny[i] - ny[j]) < close) for j in range(i))
        ax.annotate(text, (10 ** xs[i] if log_x else xs[i], ys[i]), textcoords="offset points",
                    xytext=(6, 4 - 11 * crowd), fontsize="small")


def plot_accuracy_vs(results: pd.DataFrame, x: str = "trainable_params", ax=None, log: bool = True,
                     label: str = "name", y: str = "test_accuracy"):
    """Accuracy of each strategy (column ``y``) against a cost column (trainable parameters, wall time ...)."""
    ax = _axes(ax)
    ax.scatter(results[x], results[y], color=TRAINABLE_COLOR, zorder=3)
    label_points(ax, results[x], results[y], results[label], log_x=log)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def plot_measured_vs_estimated_memory(results: pd.DataFrame, ax=None, label: str = "name"):
    """Grouped bars per strategy: what training adds on top of the weights, estimated beside measured (MiB)."""
    ax = _axes(ax)
    xs = range(len(results))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], results["estimated_overhead_mib"], width, color=MEMORY_COLORS["weights"],
           label="estimate (gradients + AdamW state + activations)")
    ax.bar([x + width / 2 for x in xs], results["peak_memory_mib"], width, color=MEMORY_COLORS["activations"],
           label=f"measured ({results['memory_kind'].iloc[0]})")
    ax.set_xticks(list(xs), results[label], rotation=20)
    ax.set_ylabel("MiB")
    ax.legend(frameon=False, fontsize="small")
    return ax


def plot_epoch_curves(curves: dict[str, list[float]], ax=None, ylabel: str = "validation accuracy"):
    """One line per run: a metric after each epoch."""
    ax = _axes(ax)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return ax


def plot_schedule(schedule, ax=None):
    """A schedule before training: groups (bottom to top) against steps, coloured by learning rate; white is frozen."""
    import numpy as np
    from matplotlib.colors import LogNorm

    ax = _axes(ax)
    table = schedule.table()
    values = table.to_numpy().T
    masked = np.ma.masked_where(values <= 0, values)
    positive = values[values > 0]
    image = ax.imshow(masked, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                      norm=LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None,
                      extent=(0, len(table), -0.5, len(schedule.groups) - 0.5))
    ax.set_yticks(range(len(schedule.groups)), schedule.groups)
    ax.set_xlabel("step")
    ax.set_title(schedule.name)
    ax.figure.colorbar(image, ax=ax, label="learning rate")
    return ax
