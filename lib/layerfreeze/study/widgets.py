"""An interactive layer picker (ipywidgets 8): choose what trains, see what it costs, run it, compare.

Usage::

    picker = LayerPicker(model, train, validation, test_data=test, lr=None, rates=[1e-4, 3e-4, 1e-3, 3e-3])
    picker                            # the last expression of a cell: shows the panel in JupyterLab or Colab
    picker.apply_preset("top", 2)     # the same panel, driven from code (as papermill does)
    picker.run()                      # fine-tunes a copy, adds a row to picker.results

With ``rates`` and ``lr=None``, each run chooses its learning rate on the validation split (a line search over the grid,
:func:`~layerfreeze.study.evidence.choose_learning_rate`) and reports accuracy on ``test``, which nothing was chosen
on; the panel's rate menu can also fix one rate.

Two parts: :class:`PickerSession`, a plain object that holds the choice (set through the freezing API: ``freeze``,
``unfreeze``, ``trainable_state``/``restore_trainable``), what it costs (:func:`choice_summary`), the runs and their
results; and :class:`LayerPicker`, a thin ipywidgets view over one session. Tests drive both without a browser.
Only standard ipywidgets controls are used (no JupyterLab extension), so the panel works the same on Colab, where
third-party widgets are enabled by default.

The panel never writes into an ``ipywidgets.Output``: its live loss curve is an ``Image`` widget and its results an
``HTML`` widget, whose values change like any other control's. Under a headless client (papermill, nbclient) an
``Output`` widget is emulated by the client itself, which then sends on the shell socket it polls for the cell's
reply and can stall the cell until a timeout fires (jupyter/nbclient#312).
"""

from __future__ import annotations

import io
import threading
import time
import traceback

import ipywidgets as w
import pandas as pd
import torch
from torch import nn

from ..base.data import as_tensors, batches_per_epoch
from ..core.freezing import count_parameters, freeze, restore_trainable, trainable_state, unfreeze
from ..core.cache import cacheable_prefix
from ..core.costs import relative_step_time
from ..core.inspection import group_table
from ..core.layers import layer_groups, num_blocks
from ..core.memory import MiB, estimate_memory
from ..core.schedules import head_and_body_lrs
from ..core.strategy import PRESETS, Strategy
from ..core.evaluation import evaluate
from ..core.training import fit
from .evidence import choose_learning_rate, grid_edge
from .runs import fresh_copy
from .timing import StepTimer, steady_step_seconds


def _human(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}k" if count >= 1e3 else str(count)


def describe_choice(groups) -> str:
    """What trains, in a few words: ``'all'``, ``'block.5, head'``, with BitFit's biases ``'biases of 7 groups,
    head'``, or with other partly trainable groups ``'part of 2 groups, head'``.

    >>> from layerfreeze import layer_groups, tiny_model, bitfit
    >>> model = tiny_model("bert", num_layers=2)
    >>> describe_choice(layer_groups(model))
    'all'
    >>> _ = bitfit(model)
    >>> describe_choice(layer_groups(model))
    'biases of 3 groups, head'
    """
    whole = [g.name for g in groups if g.trainable is True]
    partly = [g for g in groups if g.trainable is None]
    part = [g.name for g in partly]
    if len(whole) == len(groups):
        return "all"
    biases = all(name.endswith("bias") for g in partly for name, p in g.parameters.items() if p.requires_grad)
    described = [("biases of " if biases else "part of ") + (", ".join(part) if len(part) <= 2 else
                                                              f"{len(part)} groups")] if part else []
    return ", ".join(described + whole)


def choice_summary(model: nn.Module, batch_size: int = 32, seq_len: int = 64) -> dict:
    """What the current trainable set costs: counts, the memory estimate split by part, and the relative step time."""
    trainable, total = count_parameters(model)
    estimate = estimate_memory(model, batch_size, seq_len)
    return {"trainable": trainable, "total": total, "percent": 100 * trainable / total,
            "memory": estimate.table(), "memory_total_mib": estimate.total / MiB,
            "step_time": relative_step_time(model), "step_time_cached": relative_step_time(model, cache_prefix=True),
            "trainable_groups": [g.name for g in layer_groups(model) if g.trainable]}


def loss_curve_png(losses: list[float]) -> bytes:
    """A small PNG of the training loss per step. Drawn without pyplot, so it is safe from the training thread and
    opens no figure in the notebook.

    >>> loss_curve_png([0.7, 0.6, 0.65]).startswith(b"\\x89PNG")
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 2.2))
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, color="#e76f51")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("live loss", fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


class PickerSession:
    """The layer picker without its panel: the model whose groups are chosen, what the choice costs, and runs.

    Each run trains a fresh copy of the *pretrained* weights (taken when the session starts) with the current choice,
    so runs are comparable; its row holds what that choice cost when the run started. The body trains at ``lr``, the
    new head at ``head_ratio`` times it; with ``rates`` (ascending body rates), ``lr=None`` makes each run search
    them on ``eval_data`` instead. ``accuracy`` is measured on ``test_data`` when given (nothing
    is chosen on it), else on ``eval_data``.

    >>> from layerfreeze import tiny_model
    >>> session = PickerSession(tiny_model("bert", num_layers=2))
    >>> session.set_trainable({"embeddings": False, "block.0": False})
    >>> session.cost()["trainable_groups"]
    ['block.1', 'head']
    """

    def __init__(self, model: nn.Module, train_data=None, eval_data=None, *, test_data=None, epochs: int = 2,
                 batch_size: int = 32, lr: float | None = 1e-4, head_ratio: float = 10.0, rates=None, seed: int = 0):
        self.rates = list(rates) if rates is not None else None
        if self.rates is not None and (len(self.rates) < 3 or self.rates != sorted(self.rates)
                                       or self.rates[0] <= 0):
            raise ValueError(f"rates must hold at least 3 ascending learning rates above 0, to bracket the one a "
                             f"search keeps; got {rates!r}")
        if lr is None and self.rates is None:
            raise ValueError("lr=None searches the rates: pass rates too, e.g. rates=[1e-4, 3e-4, 1e-3, 3e-3]")
        self.model = model
        self.pretrained = fresh_copy(model)
        self.train_data, self.eval_data, self.test_data = train_data, eval_data, test_data
        self.epochs, self.batch_size, self.lr, self.head_ratio, self.seed = epochs, batch_size, lr, head_ratio, seed
        self.seq_len = as_tensors(train_data)[0].shape[1] if train_data is not None else 64
        self.groups = layer_groups(model)
        self.results = pd.DataFrame()
        self.curves: dict[str, list[float]] = {}  # validation accuracy per epoch, by choice

    def set_trainable(self, choice: dict[str, bool]) -> None:
        """Switch the named groups on (train) or off (freeze); the other groups keep their state, partly trainable
        ones (BitFit) included. Unknown names, or a choice that leaves nothing to train, raise."""
        names = [g.name for g in self.groups]
        unknown = set(choice) - set(names)
        if unknown:
            raise ValueError(f"unknown layer groups {sorted(unknown)}; valid: {', '.join(names)}")
        after = {id(p): p.requires_grad for p in self.model.parameters()}
        for group in self.groups:
            if group.name in choice:
                after.update({id(p): choice[group.name] for p in group.parameters.values()})
        if not any(after.values()):
            raise ValueError("nothing left to train: keep at least one layer group on (the head, for a linear probe)")
        on, off = [n for n, v in choice.items() if v], [n for n, v in choice.items() if not v]
        if on:
            unfreeze(self.model, *on, groups=self.groups, eval_frozen=False)
        if off:
            freeze(self.model, *off, groups=self.groups, eval_frozen=False)

    def apply_strategy(self, strategy: Strategy) -> None:
        """Set the choice from a strategy's preset or plan. Frozen groups are not held in eval mode: a run copies
        only the trainable flags."""
        strategy.apply(self.model, eval_frozen=False)

    def apply_preset(self, preset: str, k: int | None = None) -> None:
        """Set the choice from a preset (head, top k, bottom k, all, bitfit)."""
        self.apply_strategy(Strategy(preset if k is None else f"{preset} {k}", preset, k))

    def cost(self) -> dict:
        """What the current choice costs (:func:`choice_summary`)."""
        return choice_summary(self.model, self.batch_size, self.seq_len)

    def steps(self, epochs: int) -> int:
        """Optimizer steps of a run of ``epochs`` epochs."""
        return epochs * batches_per_epoch(len(as_tensors(self.train_data)[2]), self.batch_size)

    def run(self, epochs: int | None = None, on_step_end=None, on_rate=None) -> dict:
        """Fine-tune a fresh copy of the pretrained weights with the current choice, at ``lr``, or at the rate of
        ``rates`` that scores best on ``eval_data`` when ``lr`` is None; add a row to ``results`` and return it.
        ``on_step_end(step, loss)`` is :func:`~layerfreeze.fit`'s; ``on_rate(rate)`` is called as each rate starts."""
        if self.train_data is None or self.eval_data is None:
            raise ValueError("pass train_data and eval_data to LayerPicker to enable runs")
        choice, estimated_mib = describe_choice(self.groups), estimate_memory(
            self.model, self.batch_size, self.seq_len).total / MiB
        trainable = trainable_state(self.model)
        start, best = time.perf_counter(), {}

        def train_at(rate):
            if on_rate is not None:
                on_rate(rate)
            trained = self._train(trainable, rate, epochs or self.epochs, on_step_end)
            if not best or trained["validation_accuracy"] > best["validation_accuracy"]:  # ties keep the first
                best.update(trained)  # only the best model so far is kept, to be scored on the test split
            return {key: value for key, value in trained.items() if key != "model"}

        if self.lr is None:
            middle = (len(self.rates) - 1) // 2
            rate, trained, scores = choose_learning_rate(train_at, self.rates, score="validation_accuracy",
                                                         start=self.rates[middle:middle + 2])
        else:
            rate, trained = self.lr, train_at(self.lr)
            scores = {rate: trained["validation_accuracy"]}
        test = evaluate(best["model"], self.test_data)["accuracy"] if self.test_data is not None else None
        history = trained["history"]
        row = {"choice": choice, "lr": rate, "rates_tried": len(scores),
               "rate_edge": grid_edge(rate, self.rates, accuracy=scores[rate]) if self.lr is None else "",
               "trainable_params": history.trainable_params,
               "percent_trainable": 100 * history.trainable_params / history.total_params,
               "validation_accuracy": trained["validation_accuracy"],
               "accuracy": test if test is not None else trained["validation_accuracy"],
               "seconds": time.perf_counter() - start, "step_ms": trained["step_ms"], "estimated_mib": estimated_mib}
        self.results = pd.concat([self.results, pd.DataFrame([row])], ignore_index=True)
        self.curves[choice] = [epoch["eval_accuracy"] for epoch in history.epochs]
        return row

    def _train(self, trainable: dict, rate: float, epochs: int, on_step_end) -> dict:
        model = fresh_copy(self.pretrained)
        restore_trainable(model, trainable)
        groups = layer_groups(model)
        frozen_groups = [g.name for g in groups if g.trainable is False]
        if frozen_groups:  # held in eval mode, as every strategy of the course: a frozen prefix can then be cached
            freeze(model, *frozen_groups, groups=groups, eval_frozen=True)
        timer = StepTimer(next(model.parameters()).device)

        def step_end(step, loss):
            timer.mark()
            if on_step_end is not None:
                on_step_end(step, loss)

        history = fit(model, self.train_data, self.eval_data, epochs=epochs, batch_size=self.batch_size,
                      lr=head_and_body_lrs(rate, self.head_ratio * rate), seed=self.seed, progress=False,
                      on_step_end=step_end, cache_prefix=cacheable_prefix(model, groups) > 0)
        seconds = timer.seconds()  # the median after the first two (the benchmarks' timer); the mean if too few ran
        return {"model": model, "history": history, "validation_accuracy": history.final_accuracy,
                "step_ms": 1000 * (steady_step_seconds(seconds) if len(seconds) > 1 else history.step_seconds)}

    def results_table(self) -> pd.DataFrame:
        """``results`` to read: numbers rounded to 3 places, learning rates written out (1e-4, not 0.0)."""
        table = self.results.round(3)
        return table.assign(lr=self.results["lr"].map("{:g}".format)) if "lr" in table else table

    def reset(self) -> None:
        """Forget all results."""
        self.results, self.curves = pd.DataFrame(), {}

    def plot_results(self, ax=None):
        """Accuracy against trainable parameters for every run so far (a static figure)."""
        from .plots import plot_accuracy_vs

        if self.results.empty:
            raise ValueError("no results yet: call run() first")
        return plot_accuracy_vs(self.results, "trainable_params", ax=ax, label="choice", y="accuracy")


class LayerPicker:
    """A panel over a :class:`PickerSession`: one toggle per layer group, presets, a live cost summary, a run button
    and a results table. Every change goes through the session, and so through the freezing API.

    The model you pass is the one whose groups are toggled; each run trains a fresh copy of the *pretrained*
    weights (taken when the picker is created) with the current choice, so runs are comparable.
    """

    def __init__(self, model: nn.Module, train_data=None, eval_data=None, *, test_data=None, epochs: int = 2,
                 batch_size: int = 32, lr: float | None = 1e-4, head_ratio: float = 10.0, rates=None, seed: int = 0):
        self.session = PickerSession(model, train_data, eval_data, test_data=test_data, epochs=epochs,
                                     batch_size=batch_size, lr=lr, head_ratio=head_ratio, rates=rates, seed=seed)
        self.model, self.groups = model, self.session.groups
        self.losses: list[float] = []
        self._thread: threading.Thread | None = None
        self._syncing = False
        self._build()
        self._sync_toggles_from_model()
        self.refresh()

    @property
    def results(self) -> pd.DataFrame:
        return self.session.results

    @property
    def curves(self) -> dict[str, list[float]]:
        return self.session.curves

    # --- building the panel ----------------------------------------------------------------------------------------

    def _build(self) -> None:
        counts = group_table(self.model)["params"]
        self.toggles = {}
        for group in self.groups:
            toggle = w.ToggleButton(description=f"{group.name} ({_human(int(counts[group.name]))})",
                                    tooltip=f"train {group.name}", layout=w.Layout(width="220px"))
            toggle.observe(self._guard(self._on_toggle), names="value")
            self.toggles[group.name] = toggle
        self.preset = w.Dropdown(options=list(PRESETS), value="top", description="preset")
        self.k = w.IntSlider(value=2, min=1, max=num_blocks(self.model), description="k blocks")
        self.apply_button = w.Button(description="apply preset", icon="check")
        self.apply_button.on_click(self._guard(lambda _: self.apply_preset(self.preset.value, self._preset_k())))
        self.summary = w.HTML()
        self.epochs_box = w.IntSlider(value=self.session.epochs, min=1, max=10, description="epochs")
        rates = sorted({*(self.session.rates or []), *([self.session.lr] if self.session.lr else [])})
        self.rate = w.Dropdown(options=([("search on validation", None)] if self.session.rates else [])
                               + [(f"{rate:g}", rate) for rate in rates], value=self.session.lr, description="body lr")
        self.run_button = w.Button(description="run", button_style="success", icon="play")
        self.run_button.on_click(self._guard(lambda _: self.run(block=False)))
        self.reset_button = w.Button(description="reset results", icon="trash")
        self.reset_button.on_click(self._guard(lambda _: self.reset()))
        self.status = w.HTML("<i>ready</i>")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="training")
        self.live = w.Image(format="png", layout=w.Layout(max_width="420px", display="none"))  # shown once drawn
        self.table = w.HTML()
        self.error = w.HTML()
        self.panel = self._layout()

    def _layout(self) -> w.HBox:
        layers = w.VBox([w.HTML("<b>Layer groups</b><br><small>top of the model first</small>")]
                        + [self.toggles[g.name] for g in reversed(self.groups)],
                        layout=w.Layout(min_width="235px"))
        controls = w.VBox([w.HTML("<b>Presets</b>"), self.preset, self.k, self.apply_button, w.HTML("<b>Cost</b>"),
                           self.summary], layout=w.Layout(min_width="340px", margin="0 12px"))
        runner = w.VBox([w.HTML("<b>Run</b>"), self.epochs_box, self.rate, w.HBox([self.run_button, self.reset_button]),
                         self.progress, self.status, self.live, self.error, self.table],
                        layout=w.Layout(flex="1 1 auto"))
        return w.HBox([layers, controls, runner], layout=w.Layout(flex_flow="row wrap"))

    def _preset_k(self) -> int | None:
        return self.k.value if self.preset.value in ("top", "bottom") else None

    def _guard(self, handler):
        """Show an exception from a widget callback in the panel instead of losing it in the kernel log."""
        def wrapped(*args):
            try:
                self.error.value = ""
                handler(*args)
            except Exception as exc:  # the panel is the only place a learner will see it
                self.error.value = (f"<pre style='color:#b00020;white-space:pre-wrap'>{type(exc).__name__}: "
                                    f"{exc}\n\n{traceback.format_exc(limit=3)}</pre>")
        return wrapped

    def _ipython_display_(self):
        from IPython.display import display
        display(self.panel)

    # --- the choice ------------------------------------------------------------------------------------------------

    def _on_toggle(self, change) -> None:
        if self._syncing:
            return
        name = next(n for n, toggle in self.toggles.items() if toggle is change.owner)
        self.set_trainable({name: change.new})

    def set_trainable(self, choice: dict[str, bool]) -> None:
        """:meth:`PickerSession.set_trainable`, then the toggles and the summary show the new state (also after an
        error, so that the panel never shows a choice the model does not have)."""
        try:
            self.session.set_trainable(choice)
        finally:
            self._sync_toggles_from_model()
        self.refresh()

    def toggle(self, name: str) -> None:
        """Flip one group's button, as a click does (a partly trainable group shows as on, so a click freezes it)."""
        if name not in self.toggles:
            raise ValueError(f"unknown layer group {name!r}; valid: {', '.join(self.toggles)}")
        self.toggles[name].value = not self.toggles[name].value

    def apply_preset(self, preset: str, k: int | None = None) -> None:
        """Set the choice from a preset (head, top k, bottom k, all, bitfit)."""
        self.session.apply_preset(preset, k)
        self._sync_toggles_from_model()
        self.refresh()

    def _sync_toggles_from_model(self) -> None:
        self._syncing = True
        try:
            for group in self.groups:
                state = group.trainable
                toggle = self.toggles[group.name]
                toggle.value = bool(state) if state is not None else True
                toggle.button_style = "success" if state else ("warning" if state is None else "")
                toggle.tooltip = "partly trainable (e.g. BitFit)" if state is None else toggle.tooltip
        finally:
            self._syncing = False

    def refresh(self) -> dict:
        """Recompute and show the cost summary; returns it."""
        info = self.session.cost()
        rows = "".join(f"<tr><td>{part}</td><td>{row['frozen']:.1f}</td><td>{row['trainable']:.1f}</td>"
                       f"<td><b>{row['total']:.1f}</b></td></tr>" for part, row in info["memory"].iterrows())
        self.summary.value = (
            f"<div class='layerfreeze-summary'><b>Trainable:</b> <span class='trainable-count'>{info['trainable']:,}</span>"
            f" of {info['total']:,} parameters (<span class='trainable-percent'>{info['percent']:.1f}%</span>)<br>"
            f"<b>Step time:</b> ~{info['step_time']:.2f}x full fine-tuning "
            f"({info['step_time_cached']:.2f}x with the prefix cache)<br>"
            f"<b>Memory</b> (MiB, batch {self.session.batch_size}, {self.session.seq_len} tokens, AdamW):"
            f"<table><tr><th></th><th>frozen</th><th>trainable</th><th>total</th></tr>{rows}</table></div>")
        self.last_summary = info
        return info

    # --- running ---------------------------------------------------------------------------------------------------

    def run(self, block: bool = True) -> dict | None:
        """Fine-tune a fresh copy of the pretrained weights with the current choice; add a row to ``results``.

        The run button calls this with ``block=False``: training goes to a thread, so the panel stays responsive and
        shows progress. From code (and under papermill) it blocks and returns the row.
        """
        if self.session.train_data is None or self.session.eval_data is None:
            raise ValueError("pass train_data and eval_data to LayerPicker to enable runs")
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("a run is already in progress; wait for it to finish")
        if block:
            return self._run()
        self._thread = threading.Thread(target=self._guard(self._run), daemon=True)
        self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a run started with ``block=False``."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> dict:
        epochs = self.epochs_box.value
        self.progress.max, self.progress.value = self.session.steps(epochs), 0
        self.run_button.disabled = True
        self.session.lr = self.rate.value

        def on_rate(rate):
            self.losses, self.progress.value = [], 0
            self.status.value = f"<i>training {describe_choice(self.groups)} for {epochs} epochs at lr {rate:g} ...</i>"

        try:
            row = self.session.run(epochs, on_step_end=self._on_step, on_rate=on_rate)
        finally:
            self.run_button.disabled = False
        measured_on = "test" if self.session.test_data is not None else "validation"
        self.status.value = (f"done: {measured_on} accuracy <b>{row['accuracy']:.3f}</b> at lr {row['lr']:g} "
                             f"({row['rates_tried']} rate(s) tried) in {row['seconds']:.0f} s")
        self.table.value = self.session.results_table().to_html(index=False, classes="layerfreeze-results")
        return row

    def _on_step(self, step: int, loss: torch.Tensor) -> None:
        self.progress.value = step
        self.losses.append(float(loss))
        every = max(1, self.progress.max // 20)
        if step % every == 0 or step == self.progress.max:
            self.live.value = loss_curve_png(self.losses)
            self.live.layout.display = None

    def reset(self) -> None:
        """Forget all results."""
        self.session.reset()
        self.table.value = ""
        self.live.value = b""
        self.live.layout.display = "none"
        self.status.value = "<i>results cleared</i>"

    def plot_results(self, ax=None):
        """Accuracy against trainable parameters for every run so far (a static figure)."""
        return self.session.plot_results(ax)
