"""layerfreeze: see, choose and measure which layers of a pretrained transformer train.

The public API, by concept (``docs/architecture.md`` says which module holds each):

* runtime: :func:`seed_everything`, :func:`pick_device`, :func:`describe_device`, :data:`MiB`
* models and layers: :func:`load_model`, :func:`tiny_model`, :func:`layer_groups`, :func:`num_blocks`,
  :class:`LayerGroup`, :func:`shared_parameters`, :func:`tied_weights` (``docs/layer_groups.md``: the grouping rule)
* inspection and memory: :func:`parameter_table`, :func:`group_table`, :func:`run_order_table`,
  :func:`estimate_memory`
* freezing: :func:`freeze`, :func:`unfreeze`, :func:`train_only`, :func:`freeze_to`, :func:`bitfit`,
  :func:`frozen`, :func:`trainable_state`, :func:`restore_trainable`, :func:`fingerprint`,
  :func:`assert_frozen_unchanged`
* data: :func:`load_task`, :func:`encode`, :func:`num_labels`, :func:`batches_per_epoch`
* training: :func:`fit` (a learning-rate ``curve``, or an unfreezing ``schedule``), :func:`evaluate`,
  :class:`History`
* schedules: :class:`Schedule`, :func:`gradual_unfreezing`, :func:`chain_thaw`, :func:`discriminative_lrs`,
  :func:`head_and_body_lrs`, :func:`plot_schedule`
* strategies: :class:`Strategy` (a preset, a plan, a schedule or an adapter), :func:`apply_strategy`,
  :func:`prepare_strategy`, :func:`run_strategy`, :func:`add_cache_timing`, :func:`describe_cache_speedup`,
  :func:`cache_speedup_is_clear`
* plans and signals: :class:`Plan`, :func:`factory_plan`, :func:`lisa`, :func:`adaptive_freezing`,
  :func:`expand_blocks`, :func:`probe_by_layer`, :func:`gradient_norms`, :func:`spectrum_snr` and the plans they
  propose (:func:`plan_from_probe`, :func:`plan_from_gradients`, :func:`plan_from_snr`)
* timing: :class:`StepTimer`, :func:`interleave`, :func:`profile_groups`, :func:`ideal_step_seconds`
* evidence: :func:`difference_interval`, :func:`verdict`, :func:`likely_reason`, :func:`still_improving`,
  :func:`choose_learning_rate`
* the course's notebook contract: :func:`resolve_profile`, :func:`save_metrics`, :func:`save_figure`, and
  ``lf.course.start(...)`` for each notebook's set-up cell

Submodules hold the rest and load when first named: ``lf.schedules``, ``lf.plots``, ``lf.forgetting``
(task A then task B), ``lf.widgets`` (the layer picker), ``lf.course``, ``lf.publish``, ``lf.trainer`` (the Hugging
Face ``Trainer``), ``lf.adapters`` (LoRA).

>>> import layerfreeze as lf
>>> lf.forgetting.backward_transfer([[0.9, 0.0], [0.8, 0.9]])
-0.09999999999999998
"""

import importlib

from .course.cli import check_before_import as _check_command_line

_check_command_line()  # under `python -m layerfreeze`: --help and a bad flag answer before torch is imported
from .course.contract import resolve_profile, save_figure, save_metrics
from .base.data import batches_per_epoch, encode, load_task, num_labels
from .study.evidence import (choose_learning_rate, combine_verdicts, correct_per_example, curve_shape, describe_curves,
                       difference_interval, likely_reason, still_improving, verdict)
from .core.freezing import (assert_frozen_unchanged, bitfit, changed_parameters, count_parameters, freeze, freeze_to,
                       frozen, fingerprint, release_eval_mode, restore_trainable, train_only, trainable_state, unfreeze)
from .core.inspection import group_table, parameter_table, run_order_table
from .core.layers import LayerGroup, layer_groups, num_blocks, shared_parameters, tied_weights
from .core.memory import estimate_memory
from .base.models import load_model, tiny_model
from .core.optim import make_optimizer
from .core.plans import Plan, adaptive_freezing, apply_plan, expand_blocks, factory_plan, lisa
from .study.plots import (label_points, legend_outside, memory_is_measured, plot_accuracy_vs, plot_cache_speedup, plot_cka,
                    plot_epoch_curves, plot_measured_vs_estimated_memory, plot_memory, plot_parameter_groups,
                    plot_schedule)
from .base.runtime import MiB, describe_device, pick_device, seed_everything
from .core.schedules import (Schedule, chain_thaw, constant_schedule, discriminative_lrs, gradual_unfreezing,
                        head_and_body_lrs, layerwise_decay, lr_multiplier, spread_lrs)
from .core.signals import (gradient_norms, linear_probe, matrix_snr, plan_from_gradients, plan_from_probe, plan_from_snr,
                      probe_by_layer, spectrum_snr)
from .study.strategies import (Strategy, add_cache_timing, apply_preset, apply_strategy, cache_speedup_is_clear,
                         describe_cache_speedup, fresh_copy, measure_cache_speedup, prepare_strategy, run_strategy)
from .study.timing import Spread, StepTimer, ideal_cache_speedup, ideal_step_seconds, interleave, profile_groups
from .core.training import History, enable_gradient_checkpointing, evaluate, fit

__version__ = "0.1.0"

# lf.forgetting, lf.plots ...: each module by its own name, wherever its layer keeps it
_SUBMODULES = {name: f"{layer}.{name}" for layer, names in {
    "base": ("checks", "data", "models", "runtime"),
    "core": ("adapters", "cache", "forgetting", "freezing", "inspection", "layers", "memory", "optim", "plans",
             "schedules", "signals", "trainer", "training"),
    "study": ("evidence", "plots", "sequential", "strategies", "takeaways", "timing", "widgets"),
    "course": ("publish",)}.items() for name in names}


def __getattr__(name: str):
    """``lf.forgetting``, ``lf.widgets`` ...: a submodule, imported when first named (ipywidgets, the Trainer and
    peft load only where they are used)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    raise AttributeError(f"module 'layerfreeze' has no attribute {name!r}")


__all__ = [
    # runtime and the course's notebook contract
    "MiB", "describe_device", "pick_device", "seed_everything", "resolve_profile", "save_figure", "save_metrics",
    # models, layers, inspection, memory
    "load_model", "tiny_model", "LayerGroup", "layer_groups", "num_blocks", "shared_parameters", "tied_weights",
    "group_table", "parameter_table", "run_order_table", "estimate_memory",
    # freezing
    "assert_frozen_unchanged", "bitfit", "changed_parameters", "count_parameters", "freeze", "freeze_to", "frozen",
    "fingerprint", "release_eval_mode", "restore_trainable", "train_only", "trainable_state", "unfreeze",
    # data and training
    "batches_per_epoch", "encode", "load_task", "num_labels",
    "History", "enable_gradient_checkpointing", "evaluate", "fit", "make_optimizer",
    # schedules, strategies, plans, signals
    "Schedule", "chain_thaw", "constant_schedule", "discriminative_lrs", "gradual_unfreezing", "head_and_body_lrs",
    "layerwise_decay", "lr_multiplier", "spread_lrs",
    "Strategy", "add_cache_timing", "apply_preset", "apply_strategy", "cache_speedup_is_clear",
    "describe_cache_speedup", "fresh_copy", "measure_cache_speedup", "prepare_strategy", "run_strategy",
    "Plan", "adaptive_freezing", "apply_plan", "expand_blocks", "factory_plan", "lisa",
    "gradient_norms", "linear_probe", "matrix_snr", "plan_from_gradients", "plan_from_probe", "plan_from_snr",
    "probe_by_layer", "spectrum_snr",
    # timing and evidence
    "Spread", "StepTimer", "ideal_cache_speedup", "ideal_step_seconds", "interleave", "profile_groups",
    "choose_learning_rate", "combine_verdicts", "correct_per_example", "curve_shape", "describe_curves",
    "difference_interval", "likely_reason", "still_improving", "verdict",
    # plots the notebooks draw with
    "label_points", "legend_outside", "memory_is_measured", "plot_accuracy_vs", "plot_cache_speedup", "plot_cka",
    "plot_epoch_curves", "plot_measured_vs_estimated_memory", "plot_memory", "plot_parameter_groups", "plot_schedule",
]
