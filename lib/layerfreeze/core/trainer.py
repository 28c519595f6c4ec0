"""Gradual unfreezing and discriminative learning rates with an ordinary Hugging Face ``Trainer``.

The Trainer builds its optimizer from the parameters that are trainable when training starts, before any
callback's ``on_train_begin``: parameters unfrozen later would never be optimized. So :func:`schedule_optimizer`
builds the optimizer up front over *every* group of the schedule (each with its own rate) and a scheduler that
follows the schedule's curve; :class:`UnfreezingCallback` then switches ``requires_grad`` at the schedule's steps.
AdamW skips parameters whose ``.grad`` is ``None``, so a group that has not thawed yet neither moves nor builds
optimizer state.

Usage::

    schedule = gradual_unfreezing([g.name for g in layer_groups(model)], every=50, total_steps=400, lrs=rates)
    optimizer, scheduler = schedule_optimizer(model, schedule)
    Trainer(model=model, args=args, train_dataset=TrainerDataset(train), data_collator=collate_trimmed,
            optimizers=(optimizer, scheduler), callbacks=[UnfreezingCallback(schedule)]).train()
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from ..base.data import as_tensors, real_lengths
from .layers import layer_groups
from .optim import follow_schedule, fused_available, parameter_groups
from ..base.runtime import resolve_precision
from .schedules import Schedule


class TrainerDataset(torch.utils.data.Dataset):
    """The kit's ``(input_ids, attention_mask, labels)`` data as the dicts the ``Trainer`` feeds to a model."""

    def __init__(self, data):
        self.input_ids, self.attention_mask, self.labels = as_tensors(data)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def collate_trimmed(rows: list[dict]) -> dict:
    """The Trainer's ``data_collator`` for :class:`TrainerDataset`: the rows stacked, without the padding columns
    after the batch's widest row, as :func:`~layerfreeze.fit` does, so that both do the same work.

    >>> rows = [{"input_ids": torch.tensor([5, 6, 0]), "attention_mask": torch.tensor([1, 1, 0]),
    ...          "labels": torch.tensor(1)}] * 2
    >>> {key: tuple(value.shape) for key, value in collate_trimmed(rows).items()}
    {'input_ids': (2, 2), 'attention_mask': (2, 2), 'labels': (2,)}
    """
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    width = int(real_lengths(batch["attention_mask"]).max())
    return {key: value[:, :width] if value.ndim == 2 else value for key, value in batch.items()}  # LM labels too


def schedule_optimizer(model: nn.Module, schedule: Schedule, weight_decay: float = 0.01):
    """AdamW over every parameter the schedule will ever train, one group per layer group at its own base rate,
    and a ``LambdaLR`` that applies the schedule's curve. Pass both as ``Trainer(optimizers=(...))``."""
    ever = {g for _, gs in schedule.phases for g in gs}
    groups = [g for g in layer_groups(model) if g.name in ever]
    rates = {name: rate for name, rate in schedule.lrs.items() if name in ever}
    param_groups = parameter_groups(model, rates, weight_decay, groups, trainable_only=False)
    optimizer = torch.optim.AdamW(param_groups, lr=param_groups[0]["lr"],
                                  fused=fused_available(next(model.parameters()).device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.multiplier)
    return optimizer, scheduler


class UnfreezingCallback(TrainerCallback):
    """Applies a :class:`~layerfreeze.schedules.Schedule` inside ``Trainer.train()``: before each step, the groups
    that train at that step are unfrozen and all others frozen. Records ``(step, groups)`` in ``phases``."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.phases: list[tuple[int, list[str]]] = []
        self._current: list[str] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.world_size > 1:
            raise RuntimeError("UnfreezingCallback runs in one process: DDP registers the parameters that need "
                               "gradients when the Trainer wraps the model, so groups unfrozen later would not be "
                               "synchronised. For several GPUs use `python -m layerfreeze train` under torchrun, "
                               "which re-wraps DDP at every change.")
        self._apply(model, 0)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._apply(model, state.global_step)

    def _apply(self, model, step):
        trainable = self.schedule.trainable_at(step)
        if trainable != self._current:
            follow_schedule(model, self.schedule, step)
            self._current = trainable
            self.phases.append((step, trainable))


def trainer_precision(device: torch.device) -> dict:
    """``TrainingArguments`` keywords for the precision :func:`~layerfreeze.runtime.resolve_precision` picks, so
    the Trainer and :func:`~layerfreeze.training.fit` train alike (bf16, fp16 with a scaler, or fp32).

    >>> trainer_precision(torch.device("cpu"))
    {'bf16': False, 'fp16': False, 'use_cpu': True}
    """
    precision = resolve_precision("auto", device)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": device.type == "cpu"}
