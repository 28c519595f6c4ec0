"""layerfreeze: see, choose and measure which layers of a pretrained transformer train.

The public API, by concept:

* models: :func:`load_model`, :func:`tiny_model`, :func:`resolve_model_source`
* layers: :func:`layer_groups`, :func:`shared_parameters`, :class:`LayerGroup`
* inspection and memory: :func:`parameter_table`, :func:`group_table`, :func:`estimate_memory`
* freezing: :func:`freeze`, :func:`unfreeze`, :func:`train_only`, :func:`freeze_to`, :func:`bitfit`,
  :func:`frozen`, :func:`fingerprint`, :func:`assert_frozen_unchanged`
* data: :func:`load_task`, :func:`encode`
* training: :func:`fit`, :func:`evaluate`, :class:`History`
* strategies: :class:`Strategy`, :func:`apply_preset`, :func:`run_strategy`
* timing: :class:`StepTimer`, :func:`interleave`, :class:`Spread`, :func:`profile_groups`, :func:`ideal_step_seconds`
* the course's notebook contract: :func:`resolve_profile`, :func:`save_metrics`, :func:`save_figure`
"""

from .course import describe_device, pick_device, resolve_profile, save_figure, save_metrics, seed_everything
from .data import encode, generate_task, load_task, num_labels
from .freezing import (FreezeReport, assert_frozen_unchanged, bitfit, changed_parameters, count_parameters, freeze,
                       freeze_to, frozen, frozen_in_eval, fingerprint, release_eval_mode, restore_trainable,
                       select_parameters, train_only, trainable_state, unfreeze)
from .inspection import group_table, parameter_table, relative_step_time
from .layers import LayerGroup, find_blocks_path, layer_groups, num_blocks, shared_parameters
from .memory import MemoryEstimate, estimate_memory
from .models import MINILM_SHA256, load_model, resolve_model_source, tiny_model
from .plots import (label_points, plot_accuracy_vs, plot_epoch_curves, plot_measured_vs_estimated_memory,
                    plot_memory, plot_parameter_groups, plot_schedule)
from .strategies import (PRESETS, Strategy, apply_preset, apply_strategy, fresh_copy, measure_cache_speedup,
                         run_strategy)
from .schedules import (Schedule, chain_thaw, constant_schedule, discriminative_lrs, gradual_unfreezing,
                        layerwise_decay, lr_multiplier, spread_lrs)
from .timing import (GroupCosts, Interleaved, Spread, StepTimer, ideal_cache_speedup, ideal_step_seconds, interleave,
                     profile_groups, steady_step_seconds)
from .training import (History, enable_gradient_checkpointing, evaluate, fit, follow_schedule, make_optimizer,
                       parameter_groups)

__version__ = "0.1.0"

__all__ = [
    "describe_device", "pick_device", "resolve_profile", "save_figure", "save_metrics", "seed_everything",
    "encode", "generate_task", "load_task", "num_labels",
    "FreezeReport", "assert_frozen_unchanged", "bitfit", "changed_parameters", "count_parameters", "freeze",
    "freeze_to", "frozen", "frozen_in_eval", "fingerprint", "release_eval_mode", "restore_trainable",
    "select_parameters", "train_only", "trainable_state", "unfreeze",
    "group_table", "parameter_table", "relative_step_time",
    "LayerGroup", "find_blocks_path", "layer_groups", "num_blocks", "shared_parameters",
    "MemoryEstimate", "estimate_memory",
    "MINILM_SHA256", "load_model", "resolve_model_source", "tiny_model",
    "label_points", "plot_accuracy_vs", "plot_epoch_curves", "plot_measured_vs_estimated_memory", "plot_memory",
    "plot_parameter_groups", "plot_schedule",
    "PRESETS", "Strategy", "apply_preset", "apply_strategy", "fresh_copy", "measure_cache_speedup", "run_strategy",
    "Schedule", "chain_thaw", "constant_schedule", "discriminative_lrs", "gradual_unfreezing", "layerwise_decay",
    "lr_multiplier", "spread_lrs",
    "GroupCosts", "Interleaved", "Spread", "StepTimer", "ideal_cache_speedup", "ideal_step_seconds", "interleave",
    "profile_groups", "steady_step_seconds",
    "History", "enable_gradient_checkpointing", "evaluate", "fit", "follow_schedule", "make_optimizer",
    "parameter_groups",
]
