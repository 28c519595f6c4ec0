"""layerfreeze: see, choose and measure which layers of a pretrained transformer train.

The public API, by concept:

* models: :func:`load_model`, :func:`tiny_model`, :func:`resolve_model_source`
* layers: :func:`layer_groups`, :func:`shared_parameters`, :func:`tied_weights`, :class:`LayerGroup`
  (``docs/layer_groups.md``: the grouping rule and its special cases)
* inspection and memory: :func:`parameter_table`, :func:`group_table`, :func:`estimate_memory`
* freezing: :func:`freeze`, :func:`unfreeze`, :func:`train_only`, :func:`freeze_to`, :func:`bitfit`,
  :func:`frozen`, :func:`fingerprint`, :func:`assert_frozen_unchanged`
* data: :func:`load_task`, :func:`encode`
* training: :func:`fit`, :func:`evaluate`, :class:`History`
* strategies: :class:`Strategy`, :func:`apply_preset`, :func:`run_strategy`, :func:`add_cache_timing`
* timing: :class:`StepTimer`, :func:`interleave`, :class:`Spread`, :func:`profile_groups`, :func:`ideal_step_seconds`
* plans: :class:`Plan`, :func:`apply_plan`, :func:`factory_plan`, :func:`lisa`, :func:`adaptive_freezing`,
  :func:`expand_blocks`
* signals before training: :func:`probe_by_layer`, :func:`gradient_norms`, :func:`spectrum_snr` and the plans
  they propose (:func:`plan_from_probe`, :func:`plan_from_gradients`, :func:`plan_from_snr`)
* the course's notebook contract: :func:`resolve_profile`, :func:`save_metrics`, :func:`save_figure`
* evidence: :func:`difference_interval`, :func:`verdict`, :func:`likely_reason`, :func:`still_improving`,
  :func:`choose_learning_rate`
"""

from .cli import check_before_import as _check_command_line

_check_command_line()  # under `python -m layerfreeze`: --help and a bad flag answer before torch is imported
from .course import describe_device, pick_device, resolve_profile, save_figure, save_metrics, seed_everything
from .evidence import (Interval, choose_learning_rate, combine_verdicts, correct_per_example, curve_shape,
                       describe_curves, difference_interval, likely_reason, still_improving, verdict)
from .data import encode, generate_task, load_task, num_labels
from .freezing import (FreezeReport, assert_frozen_unchanged, bitfit, changed_parameters, count_parameters, freeze,
                       freeze_to, frozen, frozen_in_eval, fingerprint, release_eval_mode, restore_trainable,
                       select_parameters, train_only, trainable_state, unfreeze)
from .inspection import group_table, parameter_table, relative_step_time, run_order_table
from .layers import (LayerGroup, find_blocks_path, layer_groups, module_run_order, num_blocks, shared_parameters,
                     tied_weights)
from .memory import MemoryEstimate, estimate_memory
from .models import MINILM_SHA256, load_model, resolve_model_source, tiny_model
from .plots import (label_points, plot_accuracy_vs, plot_epoch_curves, plot_measured_vs_estimated_memory,
                    plot_memory, plot_parameter_groups, plot_schedule)
from .strategies import (PRESETS, Strategy, add_cache_timing, apply_preset, apply_strategy, fresh_copy,
                         measure_cache_speedup, run_strategy)
from .plots import chance_line, integer_ticks, legend_outside, memory_is_measured, plot_cka
from .schedules import (Schedule, chain_thaw, constant_schedule, discriminative_lrs, gradual_unfreezing,
                        layerwise_decay, lr_multiplier, spread_lrs)
from .timing import (GroupCosts, Interleaved, Spread, StepTimer, ideal_cache_speedup, ideal_step_seconds, interleave,
                     profile_groups, steady_step_seconds)
from .plans import AdaptiveFreezing, Plan, adaptive_freezing, apply_plan, expand_blocks, factory_plan, lisa
from .signals import (gradient_norms, linear_probe, matrix_snr, plan_from_gradients, plan_from_probe, plan_from_snr,
                      probe_by_layer, spectrum_snr)
from .training import (History, enable_gradient_checkpointing, evaluate, fit, follow_schedule, make_optimizer,
                       parameter_groups)

__version__ = "0.1.0"

__all__ = [
    "describe_device", "pick_device", "resolve_profile", "save_figure", "save_metrics", "seed_everything",
    "encode", "generate_task", "load_task", "num_labels",
    "Interval", "choose_learning_rate", "combine_verdicts", "correct_per_example", "curve_shape", "describe_curves",
    "difference_interval", "likely_reason", "still_improving", "verdict",
    "FreezeReport", "assert_frozen_unchanged", "bitfit", "changed_parameters", "count_parameters", "freeze",
    "freeze_to", "frozen", "frozen_in_eval", "fingerprint", "release_eval_mode", "restore_trainable",
    "select_parameters", "train_only", "trainable_state", "unfreeze",
    "group_table", "parameter_table", "relative_step_time", "run_order_table",
    "LayerGroup", "find_blocks_path", "layer_groups", "num_blocks", "shared_parameters", "module_run_order",
    "tied_weights",
    "MemoryEstimate", "estimate_memory",
    "MINILM_SHA256", "load_model", "resolve_model_source", "tiny_model",
    "label_points", "plot_accuracy_vs", "plot_epoch_curves", "plot_measured_vs_estimated_memory", "plot_memory",
    "plot_parameter_groups", "plot_schedule",
    "PRESETS", "Strategy", "add_cache_timing", "apply_preset", "apply_strategy", "fresh_copy", "measure_cache_speedup",
    "run_strategy",
    "chance_line", "integer_ticks", "legend_outside", "memory_is_measured",
    "plot_cka",
    "Schedule", "chain_thaw", "constant_schedule", "discriminative_lrs", "gradual_unfreezing", "layerwise_decay",
    "lr_multiplier", "spread_lrs",
    "GroupCosts", "Interleaved", "Spread", "StepTimer", "ideal_cache_speedup", "ideal_step_seconds", "interleave",
    "profile_groups", "steady_step_seconds",
    "History", "enable_gradient_checkpointing", "evaluate", "fit", "follow_schedule", "make_optimizer",
    "parameter_groups",
    "AdaptiveFreezing", "Plan", "adaptive_freezing", "apply_plan", "expand_blocks", "factory_plan", "lisa",
    "gradient_norms", "linear_probe", "matrix_snr", "plan_from_gradients", "plan_from_probe", "plan_from_snr",
    "probe_by_layer", "spectrum_snr",
]
