"""Adapters: new trainable parameters beside a frozen pretrained body. Here LoRA (low-rank adapters, via ``peft``)
on every projection inside the blocks; block expansion (LLaMA Pro) lives with the other plans in
:mod:`layerfreeze.core.plans`.

>>> from layerfreeze import tiny_model
>>> lora_size(tiny_model("bert", num_layers=1, hidden_size=32), 8)
{'rank': 8, 'alpha': 16, 'adapter_params': 4608, 'block_params': 12704}
"""

from __future__ import annotations

import warnings

from torch import nn

from .evaluation import is_causal_lm
from .layers import layer_groups


def lora_alpha(rank: int) -> int:
    """The scaling LoRA's adapters get: alpha = 2 x rank, the common convention."""
    return 2 * rank


def lora_targets(model: nn.Module) -> list[str]:
    """The projections LoRA adapts, by their full names: every linear layer inside the blocks, attention's and the
    MLP's (the conventional choice; QLoRA and Biderman et al. 2024 adapt all of them).

    >>> from layerfreeze import tiny_model
    >>> names = [name.split(".", 4)[-1] for name in lora_targets(tiny_model("bert", num_layers=1))]
    >>> names  # doctest: +NORMALIZE_WHITESPACE
    ['attention.self.query', 'attention.self.key', 'attention.self.value', 'attention.output.dense',
     'intermediate.dense', 'output.dense']
    """
    targets = []
    for group in layer_groups(model)[1:-1]:
        for prefix, block in group.modules.items():
            targets += [f"{prefix}.{name}" for name, module in block.named_modules()
                        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"]
    return targets


def lora_parameter_count(model: nn.Module, rank: int) -> int:
    """Parameters that rank-``rank`` adapters on :func:`lora_targets` add: ``rank x (inputs + outputs)`` each.

    >>> from layerfreeze import tiny_model
    >>> lora_parameter_count(tiny_model("bert", num_layers=1, hidden_size=32), 8)  # 4 of 32x32, 2 of 32x128
    4608
    """
    modules = dict(model.named_modules())
    return sum(rank * sum(modules[name].weight.shape) for name in lora_targets(model))


def lora_size(model: nn.Module, rank: int) -> dict:
    """What rank-``rank`` LoRA costs on ``model``, beside one block: rank, alpha, adapter and block parameters."""
    return {"rank": rank, "alpha": lora_alpha(rank), "adapter_params": lora_parameter_count(model, rank),
            "block_params": layer_groups(model)[1].num_params}


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    """LoRA adapters (alpha = 2 x rank, no dropout) on every projection of the blocks, via ``peft``; a new task
    head's modules train fully (a causal LM's pretrained head stays frozen, as in LoRA fine-tuning of an LLM). Returns the ``peft`` model that wraps ``model``."""
    from peft import LoraConfig, get_peft_model

    head = [] if is_causal_lm(model) else [name for name, module in layer_groups(model)[-1].modules.items()
                                           if next(module.parameters(), None) is not None]  # not dropout
    config = LoraConfig(r=rank, lora_alpha=lora_alpha(rank), lora_dropout=0.0, target_modules=lora_targets(model),
                        modules_to_save=head)
    with warnings.catch_warnings():  # peft asks transformers 5 a renamed question; nothing for a learner to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
