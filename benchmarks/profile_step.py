"""Where a training step's time goes: torch.profiler over a few steps of `fit`, the hand-written loop and the
Trainer (the loops of benchmarks/run.py), split into the model's forward and backward operations, the optimizer,
data collation, other operations (clipping, the loss, moving tensors) and the Python that runs between them.

    python benchmarks/profile_step.py                      # MiniLM, batch 32 x 32 tokens (the full profile's step)
    python benchmarks/profile_step.py --loops fit --steps 3 --batch-size 8

Every time is the profiler's wall time on this device's host (on CUDA: the CPU side, launches included; the
kernels run asynchronously and are not what is split here). The categories:

- forward ops / forward Python: the operations inside the model's forward call, and the rest of that call's time
  (module calls, Python between the operations);
- backward: the autograd engine's functions;
- optimizer ops / optimizer Python: inside ``Optimizer.step`` and ``zero_grad``, the kernels and the rest;
- data: the DataLoader's ``__next__`` (collation; ``fit`` indexes tensors instead and records none);
- other ops: every other operation at the top level (clipping's norms, the batch's slicing and moves, the
  schedule);
- Python between: the step's time that no recorded operation covers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.autograd.profiler import record_function

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402  (the benchmark's loops, in this folder)

from layerfreeze.base.data import encode, load_task  # noqa: E402
from layerfreeze.base.models import load_model  # noqa: E402
from layerfreeze.base.runtime import describe_device, pick_device, resolve_precision  # noqa: E402
from layerfreeze.study.runs import fresh_copy  # noqa: E402

LOOPS = ("fit", "hand-written", "Trainer")
CATEGORIES = ("forward ops", "forward Python", "backward", "optimizer ops", "optimizer Python", "data", "other ops",
              "Python between")


def mark_forward(model):
    """Hooks that wrap every call of ``model`` in a profiler range named ``forward``."""
    open_ranges = []

    def before(module, args, kwargs):
        open_ranges.append(record_function("forward").__enter__())

    def after(module, args, kwargs, output):
        open_ranges.pop().__exit__(None, None, None)

    return [model.register_forward_pre_hook(before, with_kwargs=True),
            model.register_forward_hook(after, with_kwargs=True)]


def category(name: str) -> str:
    if name == "forward":
        return "forward"
    if name.startswith("Optimizer."):
        return "optimizer"
    if name.startswith("enumerate(DataLoader)"):
        return "data"
    if name.startswith("autograd::engine::evaluate_function"):
        return "backward"
    return "other ops"


def split_step(events, step_seconds: float, steps: int) -> dict:
    """Milliseconds per step in each category, from the top-level events of ``steps`` profiled steps."""
    ms = dict.fromkeys(CATEGORIES, 0.0)
    covered = 0.0
    for event in events:
        kind, total, own = category(event.name), event.cpu_time_total / 1e3, event.self_cpu_time_total / 1e3
        if kind in ("forward", "optimizer"):
            ms[f"{kind} ops"] += total - own
            ms[f"{kind} Python"] += own
        else:
            ms[kind] += total
        covered += total
    ms = {k: v / steps for k, v in ms.items()}
    ms["Python between"] = max(step_seconds * 1e3 - covered / steps, 0.0)
    return ms


def top_level_events(profiler) -> list:
    """Events directly under the ``ProfilerStep`` ranges: each step's own top level."""
    return [event for event in profiler.events()
            if event.cpu_parent is not None and event.cpu_parent.name.startswith("ProfilerStep")]


def profile_loop(name, base, config, data, batch_size, precision, device, warmup: int, steps: int) -> dict:
    model = bench.configure(fresh_copy(base), config)
    hooks = mark_forward(model)
    schedule = torch.profiler.schedule(wait=0, warmup=warmup, active=steps, repeat=1)
    activities = [torch.profiler.ProfilerActivity.CPU]
    marks = []
    with torch.profiler.profile(activities=activities, schedule=schedule) as profiler:
        def on_step():
            marks.append(time.perf_counter())
            profiler.step()
        marks.append(time.perf_counter())
        bench.RUNNERS[name](model, data, warmup + steps, batch_size, 1e-4, precision, device, on_step)
    for hook in hooks:
        hook.remove()
    step_seconds = (marks[-1] - marks[-1 - steps]) / steps
    ms = split_step(top_level_events(profiler), step_seconds, steps)
    return {"loop": name, "step ms": step_seconds * 1e3, **ms}


def optimizer_kernels(base, repeats: int = 5) -> dict:
    """Milliseconds of one AdamW step over all of ``base``'s parameters with each available implementation."""
    results = {}
    for kind in ("fused", "foreach", "for-loop"):
        model = fresh_copy(base)
        params = [p for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        options = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[kind]
        try:
            optimizer = torch.optim.AdamW(params, lr=1e-4, **options)
            optimizer.step()
        except (RuntimeError, ValueError) as error:
            results[kind] = f"unavailable: {error}"
            continue
        times = []
        for _ in range(repeats):
            start = time.process_time()
            optimizer.step()
            times.append(time.process_time() - start)
        results[kind] = sorted(times)[len(times) // 2] * 1e3
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--config", choices=list(bench.CONFIGURATIONS), default="full")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per loop, after --warmup")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.seq_len, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch-size, --seq-len and --steps must be at least 1, --warmup at least 0")
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    precision = resolve_precision("auto", device)
    base, tokenizer = load_model(args.model, num_labels=2)
    base.to(device)
    examples = args.batch_size * (args.warmup + args.steps + 1)
    task = load_task("a", limit={"train": examples})
    data = encode(task["train"], tokenizer, max_length=args.seq_len)
    print(f"profile on {describe_device(device)}, {precision}, {args.config}: batch {args.batch_size} x "
          f"{data.tensors[0].shape[1]} tokens, {args.steps} steps after {args.warmup}, "
          f"{torch.get_num_threads()} threads", flush=True)
    rows = [profile_loop(name, base, args.config, data, args.batch_size, precision, device, args.warmup, args.steps)
            for name in args.loops]
    kernels = optimizer_kernels(base) if device.type == "cpu" else {}
    print("| loop | step ms | " + " | ".join(CATEGORIES) + " |\n|" + " --- |" * (len(CATEGORIES) + 2))
    for row in rows:
        print(f"| {row['loop']} | {row['step ms']:.1f} | " + " | ".join(f"{row[c]:.1f}" for c in CATEGORIES) + " |")
    if kernels:
        print("AdamW over all parameters, ms of CPU time per step: " + ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in kernels.items()))
    if args.out:
        args.out.write_text(json.dumps({"device": describe_device(device), "rows": rows,
                                        "adamw_ms": kernels}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
