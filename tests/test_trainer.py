"""Gradual unfreezing with an ordinary Hugging Face Trainer: which parameters moved in each phase."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from layerfreeze import (changed_parameters, discriminative_lrs, fingerprint, gradual_unfreezing, layer_groups,
                         tiny_model)
from layerfreeze.core.trainer import TrainerDataset, UnfreezingCallback, schedule_optimizer
from tests.test_training import toy_task


class Snapshots(TrainerCallback):
    """Fingerprints the model at the start of every step."""

    def __init__(self):
        self.at = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = fingerprint(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = fingerprint(model)


def test_trainer_follows_the_schedule(tmp_path):
    model = tiny_model("bert", num_layers=3)
    groups = layer_groups(model)
    names = [g.name for g in groups]
    schedule = gradual_unfreezing(names, every=3, total_steps=9, lrs=discriminative_lrs(names, 1e-2))
    optimizer, scheduler = schedule_optimizer(model, schedule)
    unfreezing, snapshots = UnfreezingCallback(schedule), Snapshots()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=9,
                             logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True,
                             use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=TrainerDataset(toy_task(72)), optimizers=(optimizer, scheduler),
                      callbacks=[unfreezing, snapshots])
    trainer.train()
    assert unfreezing.phases == [(0, ["head"]), (3, ["block.2", "head"]), (6, ["block.1", "block.2", "head"])]
    # the callback runs before the snapshot in each step, so snapshots[s] is the state after steps 0..s-1
    owner = {name: g.name for g in groups for name in g.parameters}
    for start, end, trained in [(0, 3, {"head"}), (3, 6, {"block.2", "head"}), (6, 9, {"block.1", "block.2", "head"})]:
        moved = {owner[n] for n in changed_parameters(snapshots.at[start], snapshots.at[end])}
        assert moved == trained, (start, moved)
    rates = {g["layer_group"]: g["initial_lr"] for g in optimizer.param_groups}
    assert rates["block.1"] < rates["block.2"] < rates["head"]
