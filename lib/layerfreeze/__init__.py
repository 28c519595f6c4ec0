"""layerfreeze: see, choose and measure which layers of a pretrained transformer train.

The top level holds the concepts (``docs/architecture.md`` says which module holds each):

* loading: :func:`load_model`, :func:`tiny_model`, :func:`load_task`, :func:`encode`, :func:`encode_lm`, :func:`num_labels`,
  :func:`seed_everything`, :func:`describe_device`, :data:`MiB`
* layers and freezing: :func:`layer_groups`, :func:`num_blocks`, :func:`freeze`,
  :func:`unfreeze`, :func:`train_only`, :func:`freeze_to`, :func:`bitfit`, :func:`count_parameters`,
  :func:`fingerprint`, :func:`changed_parameters`, :func:`assert_frozen_unchanged`
* inspection and memory: :func:`parameter_table`, :func:`group_table`, :func:`estimate_memory`
* training and schedules: :func:`fit`, :func:`evaluate`, :func:`gradual_unfreezing`, :func:`chain_thaw`,
  :func:`discriminative_lrs`
* plans and strategies: :class:`Plan`, :func:`apply_plan`, :func:`factory_plan`, :class:`Strategy` with its parts
  :class:`Gradual`, :class:`Lisa`, :class:`Adaptive` (schedules) and :class:`Lora`, :class:`Expansion` (adapters)

Every module is also reachable by its own name, imported when first used: the concepts (``lf.schedules``,
``lf.signals``, ``lf.forgetting``, ``lf.cache``, ``lf.trainer``, ``lf.adapters`` ...) and the study tools the
notebooks measure and report with (``lf.evidence``, ``lf.plots``, ``lf.timing``, ``lf.runs``, ``lf.sequential``,
``lf.widgets``, ``lf.takeaways``). The course machinery stays in ``layerfreeze.course`` (``lf.course.start(...)``
in each notebook's set-up cell).

>>> import layerfreeze as lf
>>> lf.forgetting.backward_transfer([[0.9, 0.0], [0.8, 0.9]])
-0.09999999999999998
"""

import importlib

from .course.cli import check_before_import as _check_command_line

_check_command_line()  # under `python -m layerfreeze`: --help and a bad flag answer before torch is imported
from .base.data import encode, load_task, num_labels
from .base.text import encode_lm
from .base.models import load_model, tiny_model
from .base.runtime import MiB, describe_device, seed_everything
from .core.freezing import (assert_frozen_unchanged, bitfit, changed_parameters, count_parameters, fingerprint,
                            freeze, freeze_to, train_only, unfreeze)
from .core.inspection import group_table, parameter_table
from .core.layers import layer_groups, num_blocks
from .core.memory import estimate_memory
from .core.plans import Plan, apply_plan, factory_plan
from .core.schedules import chain_thaw, discriminative_lrs, gradual_unfreezing
from .core.strategy import Adaptive, Expansion, Gradual, Lisa, Lora, Strategy
from .core.evaluation import evaluate
from .core.training import fit

__version__ = "0.1.0"

# lf.forgetting, lf.plots ...: each module by its own name, wherever its layer keeps it
_SUBMODULES = {name: f"{layer}.{name}" for layer, names in {
    "base": ("checks", "corpus", "data", "models", "runtime", "tasks", "text"),
    "core": ("adapters", "cache", "costs", "evaluation", "forgetting", "freezing", "inspection", "layers", "memory", "optim",
             "plans", "pretraining", "schedules", "signals", "strategy", "trainer", "training"),
    "study": ("baselines", "decoder", "evidence", "oracle", "plots", "runs", "sequential", "takeaways", "timing", "widgets")}.items() for name in names}


def __getattr__(name: str):
    """``lf.forgetting``, ``lf.widgets`` ...: a module, imported when first named (ipywidgets, the Trainer and
    peft load only where they are used)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    raise AttributeError(f"module 'layerfreeze' has no attribute {name!r}")


__all__ = [
    # loading
    "load_model", "tiny_model", "load_task", "encode", "encode_lm", "num_labels", "seed_everything", "describe_device", "MiB",
    # layers and freezing
    "layer_groups", "num_blocks", "freeze", "unfreeze", "train_only", "freeze_to", "bitfit",
    "count_parameters", "fingerprint", "changed_parameters", "assert_frozen_unchanged",
    # inspection and memory
    "parameter_table", "group_table", "estimate_memory",
    # training and schedules
    "fit", "evaluate", "gradual_unfreezing", "chain_thaw", "discriminative_lrs",
    # plans and strategies
    "Plan", "apply_plan", "factory_plan", "Strategy", "Gradual", "Lisa", "Adaptive", "Lora", "Expansion",
]
