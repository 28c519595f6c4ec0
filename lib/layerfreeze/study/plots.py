"""Figures the notebooks share. Each function draws on an Axes (a new one when none is given) and returns it."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd
from torch import nn

from ..core.inspection import group_table
from ..core.memory import MemoryEstimate

TRAINABLE_COLOR, FROZEN_COLOR = "#2a9d8f", "#b0b7bf"
MEMORY_COLORS = {"weights": "#264653", "gradients": "#e9c46a", "optimizer state": "#f4a261",
                 "activations": "#e76f51"}


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    return ax


def legend_outside(ax, **options) -> None:
    """The legend to the right of the axes, where it covers no data."""
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              **options)


def integer_ticks(ax, axis: str = "x") -> None:
    """Whole numbers only on ``axis`` (epochs, steps): no tick at epoch 2.5."""
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def chance_line(ax, chance: float | None, axis: str = "y") -> None:
    """A dashed line at the accuracy of guessing (1 / number of classes), labelled, so a result at chance shows."""
    if chance is None:
        return
    line = ax.axhline if axis == "y" else ax.axvline
    line(chance, color="#999", linestyle="--", linewidth=1, label=f"chance ({chance:.0%})", zorder=1)


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
    legend_outside(ax)
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
    legend_outside(ax)
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
                     label: str = "name", y: str = "test_accuracy", chance: float | None = None,
                     errors: tuple[str, str] | None = None):
    """Accuracy of each strategy (column ``y``) against a cost column (trainable parameters, wall time ...);
    ``chance`` draws the accuracy of guessing, ``errors`` names the columns of an interval's low and high ends."""
    ax = _axes(ax)
    if errors:
        spread = [results[y] - results[errors[0]], results[errors[1]] - results[y]]
        ax.errorbar(results[x], results[y], yerr=spread, fmt="none", ecolor="#999", capsize=3, zorder=2)
    ax.scatter(results[x], results[y], color=TRAINABLE_COLOR, zorder=3)
    chance_line(ax, chance)
    label_points(ax, results[x], results[y], results[label], log_x=log)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def memory_is_measured(results: pd.DataFrame) -> bool:
    """Whether the runs' peak memory measures something: CUDA's allocator counts every tensor; a CPU process's
    resident-set growth does not (the allocator keeps freed memory, so it swings from 0 to hundreds of MiB).

    >>> memory_is_measured(pd.DataFrame({"memory_kind": ["cpu rss above start"]}))
    False
    """
    return bool(results["memory_kind"].astype(str).str.startswith("cuda").all())


def plot_measured_vs_estimated_memory(results: pd.DataFrame, ax=None, label: str = "name"):
    """Bars per strategy: what training adds on top of the weights (MiB), estimated; beside it the measured peak
    where it is measured (CUDA), never a CPU process's resident-set growth."""
    ax = _axes(ax)
    xs = range(len(results))
    measured = memory_is_measured(results)
    width = 0.4 if measured else 0.6
    bars = ax.bar([x - width / 2 * measured for x in xs], results["estimated_overhead_mib"], width,
                  color=MEMORY_COLORS["weights"], label="estimate (gradients + AdamW state + activations)")
    ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=2)  # a bar too small to see still shows its value
    if measured:
        ax.bar([x + width / 2 for x in xs], results["peak_memory_mib"], width, color=MEMORY_COLORS["activations"],
               label=f"measured ({results['memory_kind'].iloc[0]})")
    ax.set_xticks(list(xs), results[label], rotation=20, ha="right")
    ax.set_ylabel("MiB")
    legend_outside(ax)
    return ax


def plot_epoch_curves(curves: dict[str, list[float]], ax=None, ylabel: str = "validation accuracy",
                      chance: float | None = None, start: int = 1):
    """One line per run: a metric after each epoch (the first at ``start``), whole-number epoch ticks, markers of
    different shapes so that overlapping lines stay apart, the legend beside the axes, and a chance line.

    >>> ax = plot_epoch_curves({"a": [0.5, 0.8], "b": [0.5, 0.9]}, chance=0.5)
    >>> [t for t in ax.get_xticks() if t != int(t)]
    []
    """
    ax = _axes(ax)
    markers = "osD^vP*X"
    for i, (name, values) in enumerate(curves.items()):
        ax.plot(range(start, len(values) + start), values, marker=markers[i % len(markers)], label=name, alpha=0.85)
    chance_line(ax, chance)
    integer_ticks(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    legend_outside(ax)
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


def plot_cka(cka: pd.DataFrame, ax=None, title: str = "Linear CKA per layer"):
    """A heatmap of linear CKA, layers (rows, bottom first) by runs (columns), each cell written in: 1 means the
    layer's representation did not move. The colour scale starts at the lowest value or 0.5, whichever is lower.

    >>> ax = plot_cka(pd.DataFrame({"full": [1.0, 0.8], "head only": [1.0, 1.0]}, index=["layer 0", "layer 1"]))
    >>> [t.get_text() for t in ax.texts]
    ['1.00', '1.00', '0.80', '1.00']
    """
    ax = _axes(ax)
    values = cka.to_numpy(dtype=float)
    low = min(0.5, float(np.nanmin(values)))
    image = ax.imshow(values, aspect="auto", cmap="magma", vmin=low, vmax=1.0, origin="lower")
    for (row, column), value in np.ndenumerate(values):
        ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                color="black" if value > (1 + low) / 2 else "white")
    ax.set_xticks(range(len(cka.columns)), cka.columns, rotation=20, ha="right")
    ax.set_yticks(range(len(cka.index)), cka.index)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="linear CKA")
    return ax


def plot_cache_speedup(cached: pd.DataFrame, ax=None):
    """Bars of the epoch time without and with the frozen-prefix cache, one pair per strategy (the rows of
    ``cached``, with ``epoch_seconds_uncached``, ``epoch_seconds_cached`` and ``cache_speedup_noisy``); a noisy
    measurement says so under its bars.

    >>> frame = pd.DataFrame({"epoch_seconds_uncached": [2.0], "epoch_seconds_cached": [1.0],
    ...                       "cache_speedup_noisy": [True]}, index=["top 1"])
    >>> [t.get_text() for t in plot_cache_speedup(frame).get_xticklabels()]
    ['top 1 (noisy)']
    """
    ax = _axes(ax)
    xs = range(len(cached))
    ax.bar([x - 0.2 for x in xs], cached["epoch_seconds_uncached"], 0.4, label="without cache", color="#b0b7bf")
    ax.bar([x + 0.2 for x in xs], cached["epoch_seconds_cached"], 0.4, label="with cache", color="#2a9d8f")
    ax.set_xticks(list(xs), [f"{n}{' (noisy)' if cached.loc[n, 'cache_speedup_noisy'] else ''}" for n in cached.index])
    ax.set_ylabel("seconds per epoch")
    ax.set_title("Epoch time with and without the frozen-prefix cache (median step time x steps)")
    ax.legend(frameon=False)
    return ax


def plot_oracle(plans: pd.DataFrame, judged: pd.DataFrame, oracle: str, axes=None):
    """The oracle sweep in two panels: every plan's accuracy on B (``plans``, from
    :func:`~layerfreeze.oracle.plan_accuracy`, in its order: best validation accuracy first; bars span one standard
    deviation over seeds), the oracle and each signal's proposal marked; and each signal's regret against the oracle
    in points, with its paired interval, labelled with its rank correlation (``judged``, from
    :func:`~layerfreeze.oracle.judge_signals`).

    >>> plans = pd.DataFrame({"b_accuracy": [0.9, 0.7], "b_accuracy_std": [0.0, 0.0]}, index=["last 2 blocks", "p"])
    >>> judged = pd.DataFrame({"proposal": ["p"], "rank_correlation": [0.5], "regret_points": [20.0],
    ...                        "regret_low": [10.0], "regret_high": [30.0]}, index=["probe"])
    >>> left, right = plot_oracle(plans, judged, "last 2 blocks")
    >>> [t.get_text() for t in right.get_yticklabels()]
    ['probe: p']
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(13, 0.32 * len(plans) + 1.8), width_ratios=(3, 2))
    left, right = axes
    proposed_by = {plan: [s for s in judged.index if judged.loc[s, "proposal"] == plan] for plan in plans.index}
    colors = ["#264653" if plan == oracle else "#e76f51" if proposed_by[plan] else "#b0b7bf" for plan in plans.index]
    rows = range(len(plans))[::-1]  # best at the top
    left.barh(rows, plans["b_accuracy"], xerr=plans["b_accuracy_std"], color=colors, ecolor="#555", capsize=2)
    names = [plan + (" (oracle)" if plan == oracle else "") + "".join(f" <- {s}" for s in proposed_by[plan])
             for plan in plans.index]
    left.set_yticks(list(rows), names, fontsize="small")
    left.set_xlim(max(0.0, float(plans["b_accuracy"].min()) - 0.1), 1.0)
    left.set(xlabel="accuracy on B (test; mean over seeds)",
             title="Every plan a signal could propose, one budget\n"
                   "(ordered by validation accuracy, as the oracle is chosen)")
    left.grid(alpha=0.3, axis="x")
    spread = [judged["regret_points"] - judged["regret_low"], judged["regret_high"] - judged["regret_points"]]
    ys = range(len(judged))[::-1]
    right.barh(ys, judged["regret_points"], xerr=spread, color="#e76f51", ecolor="#555", capsize=3)
    right.axvline(0, color="#333", linewidth=0.8)
    right.set_yticks(list(ys), [f"{s}: {judged.loc[s, 'proposal']}" for s in judged.index], fontsize="small")
    for y, signal in zip(ys, judged.index):
        rho = judged.loc[signal, "rank_correlation"]
        right.annotate(f"rank corr. {rho:+.2f}" if rho == rho else "rank corr. n/a", (0, y), xytext=(4, 9),
                       textcoords="offset points", fontsize="x-small", color="#333")
    right.set(xlabel="regret: oracle minus proposal (points of B accuracy)", title="What trusting each signal cost")
    right.grid(alpha=0.3, axis="x")
    return left, right


def plot_training_length_curves(curves: pd.DataFrame, ax=None):
    """Each strategy's path through learning and forgetting as B trains longer (``curves``, from
    :func:`~layerfreeze.sequential.training_length_curves`): one marker per epoch, the first one open, the last one
    labelled.

    >>> curves = pd.DataFrame({"strategy": ["full", "full"], "epoch": [1, 2], "forgetting": [5.0, 9.0],
    ...                        "b_accuracy": [0.8, 0.95]})
    >>> [t.get_text() for t in plot_training_length_curves(curves).texts]
    ['full (epoch 2)']
    """
    ax = _axes(ax)
    for name, path in curves.groupby("strategy", sort=False):
        line, = ax.plot(path["forgetting"], path["b_accuracy"], marker="o", markersize=4, linewidth=1.2, alpha=0.85)
        ax.plot(path["forgetting"].iloc[:1], path["b_accuracy"].iloc[:1], marker="o", markersize=7,
                markerfacecolor="white", color=line.get_color())  # where the path starts: epoch 1
        last = path.iloc[-1]
        ax.annotate(f"{name} (epoch {int(last['epoch'])})", (last["forgetting"], last["b_accuracy"]),
                    xytext=(4, 3), textcoords="offset points", fontsize="x-small", color=line.get_color())
    ax.set(xlabel="forgetting of task A (points, after each epoch of B)",
           ylabel="accuracy on B (validation, after each epoch)",
           title="Learning vs. forgetting over training length (open circle: epoch 1)")
    ax.grid(alpha=0.3)
    return ax
