"""Command line.

``python -m layerfreeze course``  runs every notebook in order into ``build/`` (what ``make course`` calls).
``python -m layerfreeze publish`` writes ``docs/results.md`` and ``docs/figures/`` from that run.
``python -m layerfreeze train``   fine-tunes with a freezing plan or an unfreezing schedule. It runs unchanged
under ``torchrun --nproc_per_node N`` or ``accelerate launch``: each process trains on its shard with
DistributedDataParallel, re-wrapped whenever the trainable set changes, and rank 0 writes the metrics, including
whether every parameter ended identical on all ranks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .course import PROFILES, publish_results, run_course


def _course(args) -> None:
    run_course(args.profile, args.build_dir, args.notebook_dir, args.only)


def _publish(args) -> None:
    path = publish_results(args.build_dir, args.docs_dir, args.notebook_dir)
    print(f"written: {path} and {path.parent / 'figures'}")


def _train(args) -> None:
    import torch
    import torch.distributed as dist

    import layerfreeze as lf
    from .training import distributed_context

    _check_plan_flags(args)
    rank, world_size = distributed_context()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}") if torch.cuda.is_available() else \
        torch.device("cpu")
    lf.seed_everything(args.seed)
    splits = lf.load_task(args.task, limit={"train": args.train_limit, "validation": args.eval_limit})
    model, tokenizer = lf.load_model(args.model, num_labels=lf.num_labels(splits))
    model.to(device)
    train = lf.encode(splits["train"], tokenizer, args.max_length)
    validation = lf.encode(splits["validation"], tokenizer, args.max_length)
    names = [g.name for g in lf.layer_groups(model)]
    rates = (lf.discriminative_lrs(names, args.lr, args.discriminative) if args.discriminative else args.lr)
    steps = args.epochs * -(-(-(-len(train) // world_size)) // args.batch_size)
    if args.schedule == "gradual":
        plan = lf.gradual_unfreezing(names, args.every, steps, rates, curve=args.curve)
    elif args.schedule == "chain-thaw":
        plan = lf.chain_thaw(names, args.every, steps, rates, curve=args.curve)
    elif args.trainable_layers is not None:
        from .plans import apply_plan, factory_plan
        apply_plan(model, factory_plan(model, args.trainable_layers, args.trainable_modules, args.extra_modules))
        plan = args.curve
    else:
        preset, _, k = args.plan.partition(":")
        lf.apply_preset(model, preset, int(k) if k else None)
        plan = args.curve
    history = lf.fit(model, train, validation, epochs=args.epochs, lr=rates, batch_size=args.batch_size,
                     schedule=plan, seed=args.seed, device=device, progress=rank == 0)
    digests = lf.fingerprint(model)
    everyone = [digests]
    if world_size > 1:
        everyone = [None] * world_size
        dist.all_gather_object(everyone, digests)
    if rank == 0:
        differing = sorted(n for n in digests if any(other[n] != digests[n] for other in everyone))
        metrics = {"model": args.model, "task": args.task, "world_size": world_size,
                   "replicas_identical": not differing, "differing_parameters": differing,
                   "parameters_compared": len(digests), **history.summary()}
        print(f"world size {world_size}: final validation accuracy {history.final_accuracy:.3f}; "
              f"{len(digests)} parameters {'identical' if not differing else 'DIFFER'} across ranks")
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    if world_size > 1:
        dist.destroy_process_group()


def _nonzero_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-zero integer (positive: the last n blocks, "
                                         "negative: the first n)")
    return value


def add_factory_plan_flags(train: argparse.ArgumentParser) -> None:
    """LLaMA-Factory's freeze fine-tuning flags (``layerfreeze.plans.factory_plan``); they replace ``--plan``."""
    group = train.add_argument_group("LLaMA-Factory-style plan (replaces --plan)")
    group.add_argument("--trainable-layers", type=_nonzero_int, default=None,
                       help="positive n: train the last n blocks; negative n: the first n")
    group.add_argument("--trainable-modules", default="all",
                       help="inside those blocks: all, attention, mlp, or comma-separated globs on parameter names "
                            "inside a block (e.g. 'attention.*')")
    group.add_argument("--extra-modules", nargs="*", default=[],
                       help="more groups or parameter globs to train, e.g. embeddings '*LayerNorm*'")


def _check_plan_flags(args) -> None:
    """Refuse contradictory flags before any model or data loads."""
    if args.trainable_layers is None:
        if args.trainable_modules != "all" or args.extra_modules:
            raise SystemExit("--trainable-modules and --extra-modules need --trainable-layers N (got "
                             f"--trainable-modules {args.trainable_modules!r}, --extra-modules {args.extra_modules})")
        return
    if args.schedule != "none":
        raise SystemExit(f"--trainable-layers {args.trainable_layers} is a fixed plan; it cannot be combined with "
                         f"--schedule {args.schedule!r} (use --schedule none)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layerfreeze")
    commands = parser.add_subparsers(dest="command", required=True)
    course = commands.add_parser("course", help="run every notebook in order (papermill) into a build folder")
    course.add_argument("--profile", default="auto", choices=PROFILES)
    course.add_argument("--build-dir", default="build")
    course.add_argument("--notebook-dir", default="notebooks")
    course.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 01 03")
    course.set_defaults(run=_course)

    publish = commands.add_parser("publish", help="write docs/results.md and docs/figures/ from a course run")
    publish.add_argument("--build-dir", default="build")
    publish.add_argument("--docs-dir", default="docs")
    publish.add_argument("--notebook-dir", default="notebooks")
    publish.set_defaults(run=_publish)

    train = commands.add_parser("train", help="fine-tune with a freezing plan or an unfreezing schedule")
    train.add_argument("--model", default="minilm", help="minilm, a Hub id, a local directory, or tiny:bert")
    train.add_argument("--task", default="a", help="a, b, sst2, ag_news or imdb")
    train.add_argument("--plan", default="top:2", help="what trains without a schedule: head, top:K, bottom:K, all, "
                                                     "bitfit")
    train.add_argument("--schedule", default="none", choices=["none", "gradual", "chain-thaw"])
    train.add_argument("--every", type=int, default=50, help="steps between unfreezing steps of a schedule")
    train.add_argument("--lr", type=float, default=1e-4, help="the top group's learning rate")
    train.add_argument("--discriminative", type=float, default=0.0,
                       help="divide the rate by this factor per group down (ULMFiT: 2.6); 0 for one rate")
    train.add_argument("--curve", default="linear", help="linear, cosine, constant, stlr or one-cycle")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--train-limit", type=int, default=4000)
    train.add_argument("--eval-limit", type=int, default=500)
    train.add_argument("--max-length", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--output", help="write the metrics JSON here (rank 0)")
    add_factory_plan_flags(train)
    train.set_defaults(run=_train)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
