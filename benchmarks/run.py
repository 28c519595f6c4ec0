"""Benchmarks: layerfreeze's `fit` vs. a hand-written loop vs. the Trainer, and the frozen-prefix cache, each beside
the ideal step time that the model's own forward and backward passes allow.

All three loops train the same model with the same frozen set, data, batch size, optimizer (AdamW, weight decay
0.01, linear schedule, clipping at 1.0) and precision, in one process on one device. Timing uses the kit's
noise-surviving timer (`layerfreeze.study.timing`): every run records the time of each step and drops the warm-up steps;
the configurations run interleaved (fit, hand-written, Trainer, fit with the cache, then again), so that a burst
of load from other jobs hits every member of a round; each ratio is the median of the per-round ratios with a 90%
confidence interval for that median (order statistics), rounds are added until every interval is within 10% of its
median or the time cap is reached, and a ratio whose interval stays wider is marked noisy and kept out of the
verdicts. On the CPU, torch runs one thread and steps are timed by this process's CPU time, which other jobs
barely change (benchmarks/README.md says why).

Throughput: tokens per second for fit, the hand-written loop and the Trainer, and the fraction of the device's peak
FLOP/s that their steps' arithmetic reaches (`layerfreeze.study.timing.step_flops` over the median step time). The
peak is stated with its source: on CUDA a known card's datasheet bf16 dense peak, on the CPU a large matrix product
measured on this machine with the benchmark's thread count (`layerfreeze.study.timing.device_peak`).

The ideal: each layer group's forward and backward time is measured once (`layerfreeze.study.timing.profile_groups`),
and each configuration's ideal step time is what its step must run (`layerfreeze.core.costs.step_seconds`). Goals, reported
and never asserted, follow from that: the cache's speed-up at least 90% of its ideal; fit at most 1.05x the
hand-written loop; on CUDA, fit at least 1.5x faster than the Trainer for head only and the top block (where the
Trainer's per-step overhead dominates); on CUDA, the memory estimate within +-10% of the peak allocated memory (on
the CPU memory is not measured: the resident set grows by whatever the allocator did not already hold).

    python benchmarks/run.py                      # writes benchmarks/results/<device>.json and .md
    python benchmarks/run.py --compare A.json B.json   # do two runs agree within their ranges?
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from layerfreeze.base.corpus import held_out_general
from layerfreeze.base.data import encode, index_batches, load_task, real_lengths
from layerfreeze.base.models import load_model
from layerfreeze.base.text import encode_lm
from layerfreeze.base.runtime import describe_device, grad_scaler, pick_device, resolve_precision
from layerfreeze.core.costs import step_seconds
from layerfreeze.core.layers import num_blocks
from layerfreeze.core.memory import PeakMemory, estimate_memory
from layerfreeze.core.optim import fused_available
from layerfreeze.base.runtime import apply_thread_policy
from layerfreeze.core.schedules import lr_multiplier
from layerfreeze.core.trainer import TrainerDataset, collate_trimmed
from layerfreeze.core.training import fit
from layerfreeze.course.contract import environment
from layerfreeze.core.plans import apply_plan, factory_plan
from layerfreeze.core.strategy import apply_preset
from layerfreeze.study.runs import fresh_copy
from layerfreeze.study.timing import (CONFIDENCE, TOLERANCE, Spread, StepTimer, device_peak, interleave,
                                      profile_groups, step_flops)

CONFIGURATIONS = {"full": ("all", None), "top half": ("top", "half"), "top 2 blocks": ("top", 2),
                  "top 1 block": ("top", 1), "head only": ("head", None)}
PLANS = {  # steps per timed run; the first `warmup` step times of each run are dropped
    "smoke": dict(batch_size=8, examples=32, seq_len=16, steps=4, warmup=1, min_rounds=2, max_rounds=2,
                  max_seconds=5),
    "cpu": dict(batch_size=16, examples=256, seq_len=32, steps=6, warmup=1, min_rounds=5, max_rounds=12,
                max_seconds=60),
    "full": dict(batch_size=32, examples=4000, seq_len=64, steps=40, warmup=5, min_rounds=5, max_rounds=30,
                 max_seconds=60),
}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}  # on CUDA, events time the steps whatever this says
LOOPS = ("fit", "hand-written", "Trainer")  # the three loops whose throughput is reported
PAIRS = {"fit / hand-written": ("fit", "hand-written"), "Trainer / fit": ("Trainer", "fit"),
         "cache speed-up": ("fit", "fit cached")}


# A causal LM as LLaMA-Factory's freeze mode trains it: the last two blocks, the pretrained head frozen.
DECODER_CONFIGURATIONS = {"decoder: last 2 blocks": 2}


def configure(model, name):
    if name in DECODER_CONFIGURATIONS:
        apply_plan(model, factory_plan(model, DECODER_CONFIGURATIONS[name]))
        return model
    preset, k = CONFIGURATIONS[name]
    if k == "half":
        k = num_blocks(model) // 2
    apply_preset(model, preset, k)
    return model


def hand_written_loop(model, data, steps, batch_size, lr, precision, device, on_step):
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
    scaler = grad_scaler(precision, device)
    model.train()
    done = 0
    while done < steps:
        for input_ids, attention_mask, labels in loader:
            width = int(real_lengths(attention_mask).max())  # no padding columns after the widest row, as fit does
            input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
            labels = labels[:, :width] if labels.ndim == 2 else labels  # a causal LM's labels, one per token
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
            on_step()
            done += 1
            if done == steps:
                break


def trainer_loop(model, data, steps, batch_size, lr, precision, device, on_step):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class MarkSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            on_step()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
            weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
            logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
            dataloader_num_workers=0, bf16=precision == "bf16", fp16=precision == "fp16",
            use_cpu=device.type == "cpu")
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics at the end
            Trainer(model=model, args=args, train_dataset=TrainerDataset(data), data_collator=collate_trimmed,
                    callbacks=[MarkSteps()]).train()


def fit_loop(model, data, steps, batch_size, lr, precision, device, on_step, cache=False):
    subset = tuple(t[: steps * batch_size] for t in data.tensors)
    fit(model, subset, epochs=1, lr=lr, batch_size=batch_size, warmup=0, precision=precision, progress=False,
           device=device, cache_prefix=cache, on_step_end=lambda step, loss: on_step())


def fit_cached_loop(*args):
    fit_loop(*args, cache=True)


RUNNERS = {"fit": fit_loop, "hand-written": hand_written_loop, "Trainer": trainer_loop, "fit cached": fit_cached_loop}


def timed_run(runner, base, config, data, plan, lr, precision, device, clock):
    """A run from scratch (a fresh copy of the model) that returns its per-step times."""
    def run():
        model = configure(fresh_copy(base), config)
        timer = StepTimer(device, clock)
        runner(model, data, plan["steps"], plan["batch_size"], lr, precision, device, timer.mark)
        return timer.seconds()
    return run


def memory(base, config, data, batch_size, lr, precision, device):
    """Estimated / measured memory that training adds on top of the weights (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    model = configure(fresh_copy(base), config)
    history = fit(model, data, epochs=1, lr=lr, batch_size=batch_size, precision=precision, progress=False,
                     device=device)
    estimate = estimate_memory(model, batch_size, data.tensors[0].shape[1],
                                  activation_bytes=2 if precision in ("bf16", "fp16") else None)
    return estimate.training_overhead / history.peak_memory_bytes


def ideal(base, config, costs):
    model = configure(fresh_copy(base), config)
    return step_seconds(model, costs), step_seconds(model, costs, cache_prefix=True)


def mean_batch_width(data, batch_size, steps) -> float:
    """The mean width of the batches ``fit`` trains on here (each cut after its widest row): with the batch size,
    the tokens a step processes."""
    subset = data.tensors[1][: steps * batch_size]
    lengths = real_lengths(subset)
    batches = list(index_batches(len(lengths), batch_size, shuffle=True))
    return sum(int(lengths[index].max()) for index in batches) / len(batches)


def throughput(row, base, config, plan, width, peak):
    """Tokens per second and the fraction of the device's peak FLOP/s for each loop, from its median step time
    and the step's arithmetic (:func:`layerfreeze.study.timing.step_flops`)."""
    model = configure(fresh_copy(base), config)
    flops = step_flops(model, plan["batch_size"], round(width))
    fields = {"tokens/step": plan["batch_size"] * width, "GFLOP/step": flops / 1e9}
    for name in LOOPS:
        seconds = row[f"{name} s/step"]
        fields[f"{name} tokens/s"] = fields["tokens/step"] / seconds
        fields[f"{name} of peak"] = flops / seconds / peak if peak else None
    return fields


def spread_fields(name, spread, noisy=None):
    fields = {name: spread.median, f"{name} low": spread.low, f"{name} high": spread.high}
    return fields if noisy is None else {**fields, f"{name} noisy": noisy}


def verdicts(row, cuda):
    """Each goal: 'holds', 'does not hold', 'noisy' (kept out) or absent where it does not apply."""
    def judge(ratio, holds):
        return "noisy" if row[f"{ratio} noisy"] else "holds" if holds else "does not hold"

    goals = {"fit <= 1.05x hand-written": judge("fit / hand-written", row["fit / hand-written"] <= 1.05)}
    if "cache speed-up" in row:
        goals["cache >= 90% of ideal"] = judge("cache speed-up", row["cache speed-up / ideal"] >= 0.9)
    if cuda and row["configuration"] in ("head only", "top 1 block"):
        goals["Trainer / fit >= 1.5"] = judge("Trainer / fit", row["Trainer / fit"] >= 1.5)
    if row.get("estimate / measured memory") is not None:
        goals["memory estimate within 10%"] = ("holds" if 0.9 <= row["estimate / measured memory"] <= 1.1
                                               else "does not hold")
    return goals


def measure(base, config, data, plan, lr, precision, device, costs, clock, peak=None):
    names = ["fit", "hand-written", "Trainer"] + (["fit cached"] if config != "full" else [])
    runs = {name: timed_run(RUNNERS[name], base, config, data, plan, lr, precision, device, clock) for name in names}
    pairs = {label: pair for label, pair in PAIRS.items() if set(pair) <= set(names)}
    result = interleave(runs, list(pairs.values()), warmup=plan["warmup"], min_rounds=plan["min_rounds"],
                           max_rounds=plan["max_rounds"], max_seconds=plan["max_seconds"], tolerance=TOLERANCE)
    row = {"configuration": config, "rounds": result.rounds, "seconds": result.seconds}
    for name in names:
        row.update(spread_fields(f"{name} s/step", result.step(name)))
    for label, pair in pairs.items():
        row.update(spread_fields(label, result.ratios[pair], result.noisy[pair]))
    ideal_uncached, ideal_cached = ideal(base, config, costs)
    row.update({"ideal s/step": ideal_uncached, "fit / ideal": row["fit s/step"] / ideal_uncached})
    if "fit cached" in names:
        row.update({"ideal cached s/step": ideal_cached, "ideal cache speed-up": ideal_uncached / ideal_cached})
        row["cache speed-up / ideal"] = row["cache speed-up"] / row["ideal cache speed-up"]
    row.update(throughput(row, base, config, plan, mean_batch_width(data, plan["batch_size"], plan["steps"]), peak))
    row["estimate / measured memory"] = memory(base, config, data, plan["batch_size"], lr, precision, device)
    row["goals"] = verdicts(row, device.type == "cuda")
    return row


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--decoder", default="kit-decoder", help="the causal LM of the decoder row")
    parser.add_argument("--size", choices=["auto", *PLANS], default="auto",
                        help="auto: full on a GPU, cpu otherwise; smoke: a few steps, for the test suite")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: under load, OpenMP threads that spin-wait for a core "
                             "another job holds make a step several times slower and erratic)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                        help="on the CPU, time steps by this process's CPU time (default: other jobs barely change "
                             "it) or by the wall clock")
    parser.add_argument("--max-seconds", type=float,
                        help="cap on each strategy's timed rounds, in seconds, after its minimum rounds (default: the "
                             "size's; the GPU run's window 2 shares its time among the five strategies this way)")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="print whether two runs' ratios agree within their ranges, and run nothing")
    return parser


def chosen_plan(size, max_seconds, parser):
    """The size's plan, with its per-strategy cap on timed rounds replaced by ``--max-seconds`` when given."""
    if max_seconds is None:
        return PLANS[size]
    if not max_seconds > 0:
        parser.error(f"--max-seconds {max_seconds}: it must be a positive number of seconds")
    return {**PLANS[size], "max_seconds": max_seconds}


def main(argv=None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*(json.loads(Path(p).read_text()) for p in args.compare)))
        return 0

    device = pick_device()
    apply_thread_policy()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)  # the timer's own choice, after the policy: see --threads
    size = args.size if args.size != "auto" else ("full" if device.type == "cuda" else "cpu")
    plan = chosen_plan(size, args.max_seconds, parser)
    precision = resolve_precision("auto", device)
    lr = 1e-4
    load_before = os.getloadavg()
    base, tokenizer = load_model(args.model, num_labels=2)
    base.to(device)
    task = load_task("a", limit={"train": plan["examples"]})
    data = encode(task["train"], tokenizer, max_length=plan["seq_len"])
    device_name = describe_device(device)
    print(f"benchmarks on {device_name}, precision {precision}, size {size}: batch {plan['batch_size']}, "
          f"{data.tensors[0].shape[1]} tokens, {plan['steps']} steps per run ({plan['warmup']} dropped), "
          f"{torch.get_num_threads()} CPU threads, {args.clock if device.type == 'cpu' else 'CUDA events'} time, "
          f"load average {load_before[0]:.2f}", flush=True)
    clock = CLOCKS[args.clock]
    costs = profile_groups(base, tuple(t[: plan["batch_size"]] for t in data.tensors), precision=precision,
                              clock=clock)
    peak, peak_source = device_peak(device, clock)
    print(f"peak for the fraction of peak: {peak_source}", flush=True)

    stem = device_name.split(":")[0] if device.type == "cpu" else torch.cuda.get_device_name().replace(" ", "-")
    payload = {"device": device_name, "precision": precision, "size": size, "plan": plan, "tolerance": TOLERANCE,
               "cpu_threads": torch.get_num_threads(), "clock": args.clock if device.type == "cpu" else "cuda events",
               "load_average": {"start": load_before, "end": load_before},
               "memory_kind": PeakMemory(device).kind if device.type == "cuda" else "not measured on the CPU",
               "group_costs_ms": costs.table().round(3).to_dict(), "optimizer_ms_all_parameters": costs.optimizer * 1e3,
               "peak_flops": peak, "peak_source": peak_source,
               "environment": environment(), "rows": []}
    for config, model, config_data, config_costs in [*((c, base, data, costs) for c in CONFIGURATIONS),
                                                     *decoder_configurations(args.decoder, plan, precision, device,
                                                                             clock)]:
        row = measure(model, config, config_data, plan, lr, precision, device, config_costs, clock, peak)
        print(f"  {config}: {row['rounds']} rounds, fit/hand {row['fit / hand-written']:.3f}, "
              f"Trainer/fit {row['Trainer / fit']:.2f}, fit {row['fit tokens/s']:.0f} tokens/s"
              + (f", cache {row['cache speed-up']:.2f}x (ideal {row['ideal cache speed-up']:.2f}x)"
                 if "cache speed-up" in row else "") + f"; {row['goals']}", flush=True)
        payload["rows"].append(row)
        payload["load_average"]["end"] = os.getloadavg()
        write_results(payload, Path(args.out), stem)  # after each strategy: a run cut short keeps what finished
    print("\n" + markdown_tables(payload))
    print(f"written: {Path(args.out) / (stem + '.json')}, {Path(args.out) / (stem + '.md')}")
    return 0


def decoder_configurations(name, plan, precision, device, clock):
    """The decoder row's model, data (held-out general text, one label per token) and group costs, loaded when the
    encoder rows are done."""
    decoder, tokenizer = load_model(name, task="causal-lm")
    decoder.to(device)
    data = encode_lm(held_out_general(plan["examples"], 30_000), tokenizer, plan["seq_len"])
    costs = profile_groups(decoder, tuple(t[: plan["batch_size"]] for t in data.tensors), precision=precision,
                           clock=clock)
    return [(config, decoder, data, costs) for config in DECODER_CONFIGURATIONS]


def write_results(payload, out, stem):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown_tables(payload))


def cell(row, column):
    value = row.get(column)
    if value is None:
        return "-"
    if column.endswith("tokens/s") or column == "tokens/step":  # before s/step, which "tokens/step" ends with
        return f"{value:,.0f}"
    if column.endswith("s/step"):
        return f"{value * 1000:.1f} ms"
    if column.endswith("of peak"):
        return f"{value:.2%}"
    if f"{column} low" in row:
        text = f"{Spread(value, row[f'{column} low'], row[f'{column} high'], row['rounds']):.2f}"
        return text + (" (noisy)" if row.get(f"{column} noisy") else "")
    return f"{value:.2f}"


def markdown_tables(payload):
    rows, cuda = payload["rows"], payload["device"].startswith("cuda")
    speed = ["configuration", "rounds", "fit s/step", "hand-written s/step", "Trainer s/step", "ideal s/step",
             "fit / ideal", "fit / hand-written", "Trainer / fit", "cache speed-up", "ideal cache speed-up",
             "cache speed-up / ideal"] + (["estimate / measured memory"] if cuda else [])
    goals = list(dict.fromkeys(goal for row in rows for goal in row["goals"]))
    load = payload["load_average"]
    lines = [f"Benchmarks on {payload['device']} ({payload['precision']}, size {payload['size']}, "
             f"{payload['cpu_threads']} CPU threads, {payload['clock']} time); load average "
             f"{load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end. Times are medians over rounds; "
             f"ratios are medians of per-round ratios with a {CONFIDENCE:.0%} confidence interval for the median "
             f"[low-high] (order statistics; below 5 rounds the full range, which covers less), noisy when that "
             f"interval is wider than {payload['tolerance']:.0%} of the median. Memory: "
             + ("estimate / CUDA peak allocated." if cuda else "not measured on the CPU.") + "", "",
             "| " + " | ".join(speed) + " |", "|" + " --- |" * len(speed)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, c) if c not in ("configuration", "rounds") else str(row[c])
                                       for c in speed) + " |")
    lines += ["", "| configuration | " + " | ".join(goals) + " |", "|" + " --- |" * (len(goals) + 1)]
    lines += ["| " + row["configuration"] + " | " + " | ".join(row["goals"].get(g, "-") for g in goals) + " |"
              for row in rows]
    return "\n".join(lines + throughput_table(payload)) + "\n"


def throughput_table(payload) -> list[str]:
    """Tokens per second and the fraction of the peak per loop (absent from runs made before they were measured)."""
    rows = [row for row in payload["rows"] if "tokens/step" in row]
    if not rows:
        return []
    columns = ["configuration", "tokens/step", "GFLOP/step", *(f"{n} tokens/s" for n in LOOPS),
               *(f"{n} of peak" for n in LOOPS)]
    lines = ["", f"Throughput: tokens a step processes (batch x the mean width of its batches, each cut after its "
                 f"widest row) over the median step time; the fraction of peak is the step's matrix arithmetic "
                 f"(6 x weights x tokens for what trains, less for what is frozen: `step_flops`) per second over "
                 f"the peak, {payload.get('peak_source', 'not known')}.", "",
             "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row["configuration"] if c == "configuration" else cell(row, c) for c in columns) + " |"
              for row in rows]
    return lines


def _load_range(payload) -> str:
    """The one-minute load average at the start and at the end of a run (it lags: a job started just before the
    run shows at its end)."""
    load = payload["load_average"]
    return f"{load['start'][0]:.1f} to {load['end'][0]:.1f}"


def compare(first, second):
    """A table of each ratio in two runs, and whether their confidence intervals overlap."""
    lines = [f"| configuration | ratio | run 1 (load {_load_range(first)}) | run 2 (load {_load_range(second)}) "
             "| agree |", "| --- | --- | --- | --- | --- |"]
    agree = total = 0
    for a, b in zip(first["rows"], second["rows"]):
        for label in PAIRS:
            if label not in a or label not in b:
                continue
            spreads = [Spread(r[label], r[f"{label} low"], r[f"{label} high"], r["rounds"]) for r in (a, b)]
            ok = spreads[0].overlaps(spreads[1])
            agree, total = agree + ok, total + 1
            lines.append(f"| {a['configuration']} | {label} | {cell(a, label)} | {cell(b, label)} | "
                         f"{'yes' if ok else 'no'} |")
    return "\n".join(lines) + f"\n\n{agree} of {total} ratios agree within their confidence intervals.\n"


if __name__ == "__main__":
    sys.exit(main())
