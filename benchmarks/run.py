"""Benchmarks: layerfreeze's `fit` vs. a minimal hand-written PyTorch loop vs. the Hugging Face Trainer.

All three train the same model with the same frozen set, data, batch size, optimizer (AdamW, weight decay 0.01,
linear schedule, clipping at 1.0) and precision, in one process on one device. Per-step time is measured
differentially: (time for N steps - time for N0 steps) / (N - N0), after a warm-up run, so each runner's fixed
set-up cost (building the optimizer, the Trainer's accelerator ...) drops out and the steady state remains.

Also measured: the frozen-prefix cache's speed-up per epoch after the first, and the memory estimate against the
measured peak (what training adds on top of the weights; on CUDA the allocator's peak, on the CPU the sampled RSS).

Goals, reported and never asserted: fit within 5% of the hand-written loop per step; fit faster than the Trainer;
the cache at least 3x faster per epoch for top-2-block training; the estimate within +-10% of the CUDA peak.

    python benchmarks/run.py            # writes benchmarks/results/<device>.json and .md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import layerfreeze as lf
from layerfreeze.precision import resolve_precision
from layerfreeze.schedules import lr_multiplier
from layerfreeze.trainer import TrainerDataset
from layerfreeze.training import PeakMemory, fused_available

CONFIGURATIONS = {"full": ("all", None), "top half": ("top", "half"), "top 2 blocks": ("top", 2),
                  "top 1 block": ("top", 1), "head only": ("head", None)}


def configure(model, name):
    preset, k = CONFIGURATIONS[name]
    if k == "half":
        k = lf.num_blocks(model) // 2
    lf.apply_preset(model, preset, k)
    return model


def hand_written_loop(model, data, steps, batch_size, lr, precision, device):
    """The baseline: what a careful person writes by hand (DataLoader, AdamW over trainable parameters, autocast),
    with the same AdamW kernel as ``fit``, so that the ratio measures the loop's own overhead."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, fused=fused_available(device))  # the same kernel as fit
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, steps, 0, "linear"))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("bf16", "fp16") else torch.autocast("cpu", enabled=False))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    model.train()
    done = 0
    while done < steps:
        for input_ids, attention_mask, labels in loader:
            with autocast:
                loss = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             labels=labels.to(device)).loss
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done += 1
            if done == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer_loop(model, data, steps, batch_size, lr, precision, device):
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
            weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
            logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
            dataloader_num_workers=0, bf16=precision == "bf16", fp16=precision == "fp16",
            use_cpu=device.type == "cpu")
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics at the end
            Trainer(model=model, args=args, train_dataset=TrainerDataset(data)).train()
    if device.type == "cuda":
        torch.cuda.synchronize()


def fit_loop(model, data, steps, batch_size, lr, precision, device):
    subset = tuple(t[: steps * batch_size] for t in data.tensors)
    lf.fit(model, subset, epochs=1, lr=lr, batch_size=batch_size, warmup=0, precision=precision, progress=False,
           device=device)


RUNNERS = {"fit": fit_loop, "hand-written": hand_written_loop, "Trainer": trainer_loop}


def timed(runner, base, config, data, steps, batch_size, lr, precision, device):
    model = configure(lf.fresh_copy(base), config)
    start = time.perf_counter()
    runner(model, data, steps, batch_size, lr, precision, device)
    return time.perf_counter() - start


def step_seconds(runner, base, config, data, short, long, batch_size, lr, precision, device, repeats):
    """Steady-state seconds per step: the median over repeats of (t(long) - t(short)) / (long - short)."""
    samples = []
    for _ in range(repeats):
        t_short = timed(runner, base, config, data, short, batch_size, lr, precision, device)
        t_long = timed(runner, base, config, data, long, batch_size, lr, precision, device)
        samples.append((t_long - t_short) / (long - short))
    return sorted(samples)[len(samples) // 2]


def cache_speedup(base, config, data, batch_size, lr, precision, device):
    """Seconds of the second epoch with and without the frozen-prefix cache."""
    seconds = {}
    for cache in (False, True):
        model = configure(lf.fresh_copy(base), config)
        history = lf.fit(model, data, epochs=2, lr=lr, batch_size=batch_size, precision=precision, progress=False,
                         cache_prefix=cache, device=device)
        seconds[cache] = history.epochs[1]["train_seconds"]
    return seconds[False], seconds[True]


def memory(base, config, data, batch_size, lr, precision, device):
    model = configure(lf.fresh_copy(base), config)
    history = lf.fit(model, data, epochs=1, lr=lr, batch_size=batch_size, precision=precision, progress=False,
                     device=device)
    estimate = lf.estimate_memory(model, batch_size, data.tensors[0].shape[1],
                                  activation_bytes=2 if precision in ("bf16", "fp16") else None)
    return history.peak_memory_bytes / 2 ** 20, estimate.training_overhead / 2 ** 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--size", choices=["auto", "smoke", "cpu", "full"], default="auto",
                        help="auto: full on a GPU, cpu otherwise; smoke: a few steps, for the test suite")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    device = lf.pick_device()
    size = args.size if args.size != "auto" else ("full" if device.type == "cuda" else "cpu")
    plan = {"smoke": dict(batch_size=8, short=1, long=3, repeats=1, examples=32, seq_len=16),
            "cpu": dict(batch_size=16, short=3, long=11, repeats=3, examples=256, seq_len=32),
            "full": dict(batch_size=32, short=10, long=60, repeats=5, examples=4000, seq_len=None)}[size]
    precision = resolve_precision("auto", device)
    lr = 1e-4
    base, tokenizer = lf.load_model(args.model, num_labels=2)
    base.to(device)
    task = lf.load_task("a", limit={"train": plan["examples"]})
    data = lf.encode(task["train"], tokenizer, max_length=plan["seq_len"] or 64)
    device_name = lf.describe_device(device)
    print(f"benchmarks on {device_name}, precision {precision}, size {size}: batch {plan['batch_size']}, "
          f"{data.tensors[0].shape[1]} tokens, steps {plan['short']}->{plan['long']}, {plan['repeats']} repeats")

    for runner in RUNNERS.values():  # warm-up: first calls load kernels and libraries
        timed(runner, base, "head only", data, 2, plan["batch_size"], lr, precision, device)

    rows = []
    for config in CONFIGURATIONS:
        row = {"configuration": config}
        for name, runner in RUNNERS.items():
            row[f"{name} s/step"] = step_seconds(runner, base, config, data, plan["short"], plan["long"],
                                                 plan["batch_size"], lr, precision, device, plan["repeats"])
        row["fit / hand-written"] = row["fit s/step"] / row["hand-written s/step"]
        row["Trainer / fit"] = row["Trainer s/step"] / row["fit s/step"]
        if config != "full":
            uncached, cached = cache_speedup(base, config, data, plan["batch_size"], lr, precision, device)
            row.update({"epoch s uncached": uncached, "epoch s cached": cached, "cache speed-up": uncached / cached})
        measured, estimated = memory(base, config, data, plan["batch_size"], lr, precision, device)
        # only CUDA's allocator peak is comparable with the estimate (the CPU's resident set grows by whatever the
        # allocator did not already hold, often nothing): no ratio elsewhere
        ratio = estimated / measured if device.type == "cuda" and measured > 0 else None
        row.update({"measured MiB": measured, "estimated MiB": estimated, "estimate / measured": ratio})
        rows.append(row)
        print(f"  {config}: fit/hand {row['fit / hand-written']:.3f}, Trainer/fit {row['Trainer / fit']:.2f}"
              + (f", cache {row['cache speed-up']:.2f}x" if "cache speed-up" in row else "")
              + (f", estimate/measured memory {ratio:.2f}" if ratio is not None else ""), flush=True)

    stem = device_name.split(":")[0] if device.type == "cpu" else torch.cuda.get_device_name().replace(" ", "-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"device": device_name, "precision": precision, "size": size, "plan": plan,
               "memory_kind": PeakMemory(device).kind, "environment": lf.course.environment(), "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown_table(rows, device_name, precision)
    (out / f"{stem}.md").write_text(table)
    print("\n" + table)
    print(f"written: {out / (stem + '.json')}, {out / (stem + '.md')}")


def markdown_table(rows, device_name, precision):
    cuda = not device_name.startswith("cpu")
    columns = ["configuration", "fit s/step", "hand-written s/step", "Trainer s/step", "fit / hand-written",
               "Trainer / fit", "cache speed-up"] + (["estimate / measured"] if cuda else [])
    memory_note = ("" if cuda else " Memory: the CPU's resident-set growth is not comparable with the estimate "
                   "(the allocator reuses what earlier runs freed), so that ratio is reported on CUDA only.")
    lines = [f"Benchmarks on {device_name} ({precision}). Goals: fit / hand-written <= 1.05; Trainer / fit > 1; "
             "cache speed-up >= 3 for top-2 blocks; estimate / measured within 0.9-1.1 on CUDA." + memory_note, "",
             "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cells.append(value if isinstance(value, str) else "-" if value is None else
                         f"{value * 1000:.1f} ms" if c.endswith("s/step") else f"{value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
