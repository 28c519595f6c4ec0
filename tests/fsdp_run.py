"""Runs ``fit`` under FSDP2 on every rank (launched by torchrun or accelerate) and writes what each rank holds, for
tests/test_distributed.py to compare: the final parameters, which ones moved since the start, the trainable set, the
tensors with optimizer state, and the bytes of weights, gradients and optimizer state this rank holds beside
``estimate_memory``'s sharded estimate.

``fsdp_run.py REPORT train ARGS...`` runs the command line (``python -m layerfreeze train ARGS...``);
``fsdp_run.py REPORT schedules`` runs ``fit`` on a tiny model with LISA, then with adaptive freezing. Each rank
writes ``REPORT.rank<N>.json`` (``REPORT-lisa...``, ``REPORT-adaptive...`` for the second form).
"""

import json
import sys
from contextlib import contextmanager


def rank_report(model, optimizer, history, before: dict, train_data, schedule=None) -> dict:
    """This rank's view of the run (collectives inside: every rank calls it once, after fit)."""
    import torch

    from layerfreeze.base.data import as_tensors
    from layerfreeze.core.freezing import fingerprint
    from layerfreeze.core.layers import layer_groups
    from layerfreeze.core.memory import estimate_memory
    from layerfreeze.base.runtime import distributed_context, is_sharded, local_bytes

    rank, world_size = distributed_context()
    after = fingerprint(model)
    names = {id(p): n for n, p in model.named_parameters()}
    with_state = sorted(names[id(p)] for p, state in optimizer.state.items() if state)
    state_bytes = sum(local_bytes(v) for state in optimizer.state.values() for v in state.values()
                      if isinstance(v, torch.Tensor))
    input_ids, attention_mask, labels = (t[:8] for t in as_tensors(train_data))
    with counted_reductions() as reduced:
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()  # gradients to measure
    gradient_bytes = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    estimate = estimate_memory(model, world_size=world_size)
    return {"rank": rank, "world_size": world_size, "sharded": is_sharded(model), "phases": history.phases,
            "groups": {name: g.name for g in layer_groups(model) for name in g.parameters},
            "digests": after, "moved": sorted(n for n in after if after[n] != before[n]),
            "norms": getattr(schedule, "norms", {}),  # adaptive freezing's measurements
            "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
            "optimizer_state": with_state, "reduced_elements": sum(reduced),
            "trainable_elements": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "held": {"weights": sum(local_bytes(p) for p in model.parameters()), "gradients": gradient_bytes,
                     "optimizer_state": state_bytes},
            "estimated": {"weights": estimate.weights_frozen + estimate.weights_trainable,
                          "gradients": estimate.gradients, "optimizer_state": estimate.optimizer_state}}


@contextmanager
def counted_reductions():
    """The number of gradient values each reduce-scatter sends in the block (FSDP2's only gradient reduction)."""
    import torch.distributed as dist

    original, sizes = dist.reduce_scatter_single, []

    def counted(output, input, *args, **kwargs):
        sizes.append(input.numel())
        return original(output, input, *args, **kwargs)

    dist.reduce_scatter_single = counted
    try:
        yield sizes
    finally:
        dist.reduce_scatter_single = original


def checked_fit(report: str):
    """``fit``, wrapped: the optimizer it builds is kept, and each rank writes its report after the run."""
    import layerfreeze.core.training as training
    from layerfreeze.core.freezing import fingerprint

    original_fit, original_optimizer, built = training.fit, training.make_optimizer, []

    def make_optimizer(*args, **kwargs):
        built.append(original_optimizer(*args, **kwargs))
        return built[-1]

    def fit(model, train_data, *args, report_to: str = report, **kwargs):
        before = fingerprint(model)
        history = original_fit(model, train_data, *args, **kwargs)
        result = rank_report(model, built[-1], history, before, train_data, kwargs.get("schedule"))
        with open(f"{report_to}.rank{result['rank']}.json", "w") as f:
            json.dump(result, f, indent=1)
        return history

    training.make_optimizer, training.fit = make_optimizer, fit
    return fit


def schedules_run(fit, report: str) -> None:
    """Two plans that change the trainable set on a tiny BERT, 8 steps each. LISA: one block of four trains at a
    time with the embeddings and the head, drawn anew every 2 steps. Adaptive freezing, started without the
    embeddings and block 0: a threshold this loose freezes the lowest training block as soon as it has two
    measurements. Both release the optimizer state of what stops training."""
    import torch

    from layerfreeze.core.layers import layer_groups
    from layerfreeze.base.models import tiny_model
    from layerfreeze.core.plans import adaptive_freezing, lisa
    from layerfreeze.base.runtime import distributed_context, seed_everything
    from layerfreeze.course.train_command import _leave_process_group

    _, world_size = distributed_context()
    generator = torch.Generator().manual_seed(0)
    data = (torch.randint(5, 99, (64, 12), generator=generator), torch.ones(64, 12, dtype=torch.long),
            torch.randint(0, 2, (64,), generator=generator))
    steps = 2 * 64 // (8 * world_size)
    for name in ("lisa", "adaptive"):
        seed_everything(0)
        model = tiny_model("bert")
        names = [g.name for g in layer_groups(model)]
        plan = lisa(names, gamma=1, every=2, total_steps=steps, lrs=1e-3) if name == "lisa" else \
            adaptive_freezing(names, steps, 1e-3, interval=1, window=1, threshold=100.0, trainable=names[2:])
        fit(model, data, tuple(t[:32] for t in data), epochs=2, batch_size=8, schedule=plan, progress=False,
            fsdp=True, report_to=f"{report}-{name}")
    _leave_process_group()


if __name__ == "__main__":
    report, mode = sys.argv[1], sys.argv[2]
    fit = checked_fit(report)
    if mode == "schedules":
        schedules_run(fit, report)
    else:
        from layerfreeze.__main__ import main

        sys.argv = [sys.argv[0], *sys.argv[2:]]
        main()
