"""The command line (``python -m layerfreeze``).

``python -m layerfreeze course``  runs every notebook in order into ``build/`` (what ``make course`` calls).
``python -m layerfreeze publish`` writes ``docs/results.md`` and ``docs/figures/`` from that run.
``python -m layerfreeze gpu-run``  the course and the benchmarks on a GPU in one short window (docs/gpu_runs.md);
``python -m layerfreeze gpu-import`` publishes what such a run returned as ``docs/results-gpu.md``.
``python -m layerfreeze train``   fine-tunes with a freezing plan or an unfreezing schedule. It runs unchanged
under ``torchrun --nproc_per_node N`` or ``accelerate launch``: each process trains on its shard with
DistributedDataParallel, re-wrapped whenever the trainable set changes, and rank 0 writes the metrics, including
whether every parameter ended identical on all ranks.

Every argument is checked before any model or data loads; a bad one ends the command with one line on stderr that
names it, the value and what is valid (exit status 2), never a traceback. Building the parser imports no torch, and
the package parses the command line before it imports its API (:func:`check_before_import`), so ``--help`` and a
bad flag answer at once; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .contract import DEFAULT_CELL_TIMEOUT, PROFILES
from .gpu_run import BUDGET_SECONDS, COURSE_BUDGET_SECONDS
from .runner import CourseFailed
from ..core.data import TASK_NAMES
from ..core.schedules import CURVES

# strategies.PRESETS, which imports torch; tests/test_cli.py keeps the two in step.
PRESETS_WITH_K, PRESETS_WITHOUT_K = ("top", "bottom"), ("head", "all", "bitfit")
PLANS = "head, top:K, bottom:K, all or bitfit"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the valid options)\n")


def _number(kind, valid: str, accept):
    """An argparse type: ``kind(text)`` when ``accept`` holds for it, else an error that says what is valid."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {valid}")
        return value
    return convert


positive_int = _number(int, "a whole number of at least 1", lambda v: v >= 1)
natural_int = _number(int, "a whole number of at least 0", lambda v: v >= 0)
positive_float = _number(float, "a finite number above 0", lambda v: math.isfinite(v) and v > 0)
factor = _number(float, "0 (one rate) or a finite number above 0", lambda v: math.isfinite(v) and v >= 0)
nonzero_int = _number(int, "a whole number other than 0 (positive: the last n blocks; negative: the first n)",
                      lambda v: v != 0)


def plan(text: str) -> tuple[str, int | None]:
    """``--plan``: ``head``, ``all``, ``bitfit``, ``top:K`` or ``bottom:K`` as ``(preset, k)``.

    >>> plan("top:2"), plan("head")
    (('top', 2), ('head', None))
    """
    preset, colon, k = text.partition(":")
    takes_k = preset in PRESETS_WITH_K
    if preset not in PRESETS_WITH_K + PRESETS_WITHOUT_K or takes_k != bool(colon) or \
            (takes_k and not (k.isdigit() and int(k) >= 1)):
        raise argparse.ArgumentTypeError(f"invalid plan {text!r}: expected {PLANS} (K a whole number of at least 1)")
    return preset, int(k) if takes_k else None


def output_file(text: str) -> Path:
    """``--output``: a file that can be written (its folder may not exist yet), checked before any training."""
    path = Path(text).expanduser()
    if path.is_dir() or not path.name:
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: give a file name, e.g. {Path(text) / 'metrics.json'}")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if existing != path.absolute() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no permission to write in {existing}")
    return path


# --- course and publish --------------------------------------------------------------------------------------------

def _checkout_notebooks() -> Path:
    """``notebooks/`` here, else the checkout's (an editable install); an installed wheel has none."""
    here = Path("notebooks")
    beside_package = Path(__file__).resolve().parents[3] / "notebooks"
    return here if here.is_dir() or not beside_package.is_dir() else beside_package


def _notebooks_missing(notebook_dir: Path) -> str:
    return (f"no course notebooks (NN_name.ipynb) in {notebook_dir.absolute()}. The installed package holds the "
            "library only; the notebooks come with the kit's folder (notebooks/, beside lib/ and the README). Run "
            "this command inside that folder, or pass --notebook-dir PATH/TO/KIT/notebooks; to get them, copy or "
            "unzip the whole kit (on Colab, upload it to /content/layerfreeze).")


def _course(args) -> None:
    from .runner import notebook_paths, run_course

    if not notebook_paths(args.notebook_dir):
        raise FileNotFoundError(_notebooks_missing(args.notebook_dir))
    run_course(args.profile, str(args.build_dir), str(args.notebook_dir), args.only, args.cell_timeout)


def _publish(args) -> None:
    from .publish import publish_results

    path = publish_results(args.build_dir, args.docs_dir, args.notebook_dir)
    print(f"written: {path} and {path.parent / 'figures'}")


def add_course_parser(commands) -> None:
    course = commands.add_parser("course", help="run every notebook in order (papermill) into a build folder")
    course.add_argument("--profile", default="auto", choices=PROFILES,
                        help="auto runs full on a GPU and cpu otherwise; smoke is the quick test run")
    course.add_argument("--build-dir", type=Path, default=Path("build"), help="where results and figures go")
    course.add_argument("--notebook-dir", type=Path, default=_checkout_notebooks(), help="the course's notebooks")
    course.add_argument("--only", nargs="+", metavar="PREFIX", help="notebook prefixes to run, e.g. 01 03")
    course.add_argument("--cell-timeout", type=positive_int, default=None,
                        help="stop a cell that runs longer than this many seconds (default: from the profile and "
                             f"this machine's measured speed; {DEFAULT_CELL_TIMEOUT} for full)")
    course.set_defaults(run=_course)


def add_publish_parser(commands) -> None:
    publish = commands.add_parser("publish", help="write docs/results.md and docs/figures/ from a course run")
    publish.add_argument("--build-dir", type=Path, default=Path("build"), help="the course run to publish")
    publish.add_argument("--docs-dir", type=Path, default=Path("docs"), help="where results.md and figures/ go")
    publish.add_argument("--notebook-dir", type=Path, default=_checkout_notebooks(),
                         help="the notebooks, for their titles")
    publish.set_defaults(run=_publish)


# --- the GPU run ---------------------------------------------------------------------------------------------------

def precision_list(text: str) -> str:
    """``--precision``: one precision, or several separated by commas (cycled over the notebooks)."""
    from .gpu_run import precisions
    try:
        precisions(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_gpu_parsers(commands) -> None:
    gpu = commands.add_parser("gpu-run", help="the course, most valuable notebook first, then the benchmarks, "
                                              "within a time budget; archived after every notebook")
    gpu.add_argument("--out", type=Path, required=True, help="folder for gpu_run.tar.gz, gpu_run.json, gpu_run.log")
    gpu.add_argument("--profile", default="full", choices=PROFILES)
    gpu.add_argument("--budget", type=positive_float, default=BUDGET_SECONDS, help="seconds for everything")
    gpu.add_argument("--course-budget", type=positive_float, default=COURSE_BUDGET_SECONDS,
                     help="seconds for the notebooks; the benchmarks get what is left")
    gpu.add_argument("--precision", type=precision_list, default="auto",
                     help="auto, fp32, bf16 or fp16, forced in every notebook, on the CPU too; several, separated "
                          "by commas, are cycled over the notebooks (the rehearsal: bf16,fp16)")
    gpu.add_argument("--build-dir", type=Path, default=Path("build-gpu"))
    gpu.add_argument("--notebook-dir", type=Path, default=_checkout_notebooks())
    gpu.set_defaults(run=_gpu_run)

    back = commands.add_parser("gpu-import", help="publish a GPU run's archive as docs/results-gpu.md")
    back.add_argument("out", type=Path, nargs="+",
                      help="the folder the GPU run wrote (its $OUT); several, in order, when each window ran part")
    back.add_argument("--build-dir", type=Path, default=Path("build-gpu"))
    back.add_argument("--docs-dir", type=Path, default=Path("docs"))
    back.add_argument("--bench-dir", type=Path, default=Path("benchmarks/results"))
    back.set_defaults(run=_gpu_import)


def _gpu_run(args) -> None:
    from .gpu_run import gpu_run
    gpu_run(args.out, args.profile, args.budget, args.course_budget, args.precision, args.notebook_dir,
            args.build_dir)


def _gpu_import(args) -> None:
    from .gpu_run import import_gpu_run
    path = import_gpu_run(args.out, args.build_dir, args.docs_dir, args.bench_dir)
    print(f"written: {path} and its figures; benchmark results copied to {args.bench_dir}")


# --- train ---------------------------------------------------------------------------------------------------------

def add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="fine-tune with a freezing plan or an unfreezing schedule")
    train.add_argument("--model", default="minilm", help="minilm, a Hub id, a local directory, or tiny:FAMILY")
    train.add_argument("--task", default="a", choices=TASK_NAMES, help="the task to fine-tune on")
    train.add_argument("--plan", type=plan, default="top:2", help=f"what trains without a schedule: {PLANS}")
    train.add_argument("--schedule", default="none", choices=["none", "gradual", "chain-thaw"],
                       help="an unfreezing schedule instead of a fixed plan")
    train.add_argument("--every", type=positive_int, default=50, help="steps between unfreezing steps of a schedule")
    train.add_argument("--lr", type=positive_float, default=1e-4, help="the top group's learning rate")
    train.add_argument("--discriminative", type=factor, default=0.0,
                       help="divide the rate by this factor per group down (ULMFiT: 2.6); 0 for one rate")
    train.add_argument("--curve", default="linear", choices=CURVES, help="the learning-rate curve")
    train.add_argument("--epochs", type=positive_int, default=3, help="passes over the training data")
    train.add_argument("--batch-size", type=positive_int, default=32, help="examples per step and process")
    train.add_argument("--train-limit", type=positive_int, default=4000, help="training examples to use")
    train.add_argument("--eval-limit", type=positive_int, default=500, help="validation examples to use")
    train.add_argument("--max-length", type=positive_int, default=64, help="tokens per text, at most")
    train.add_argument("--seed", type=natural_int, default=0, help="seeds the data order and the new head")
    train.add_argument("--output", type=output_file, help="write the metrics JSON here (rank 0)")
    add_factory_plan_flags(train)
    train.set_defaults(run=_train)


def add_factory_plan_flags(train: argparse.ArgumentParser) -> None:
    """LLaMA-Factory's freeze fine-tuning flags (:func:`layerfreeze.plans.factory_plan`); they replace ``--plan``."""
    group = train.add_argument_group("LLaMA-Factory-style plan (replaces --plan)")
    group.add_argument("--trainable-layers", type=nonzero_int, default=None,
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
            raise ValueError("--trainable-modules and --extra-modules need --trainable-layers N (got "
                             f"--trainable-modules {args.trainable_modules!r}, --extra-modules {args.extra_modules})")
    elif args.schedule != "none":
        raise ValueError(f"--trainable-layers {args.trainable_layers} is a fixed plan; it cannot be combined with "
                         f"--schedule {args.schedule!r} (use --schedule none)")


def _train(args) -> None:
    from ..core.models import check_model_arguments
    from ..core.runtime import distributed_context

    check_model_arguments(args.model)  # before the data loads
    _check_plan_flags(args)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    rank, world_size = distributed_context()
    _train_and_report(args, rank, world_size)
    if world_size > 1:
        _leave_process_group()


def _leave_process_group() -> None:
    """Free what still holds the process group, wait for every rank, then destroy the group. A gloo group that
    is still held (by a DDP wrapper awaiting collection) when the interpreter exits can abort the process with
    'terminate called without an active exception', after a run that succeeded."""
    import gc

    import torch.distributed as dist

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _train_and_report(args, rank: int, world_size: int) -> None:
    import torch.distributed as dist

    from ..core.data import batches_per_epoch, encode, load_task, num_labels
    from ..core.freezing import fingerprint
    from ..core.layers import layer_groups
    from ..core.models import load_model
    from ..core.plans import factory_plan
    from ..core.runtime import process_device, seed_everything
    from ..core.schedules import chain_thaw, discriminative_lrs, gradual_unfreezing
    from ..core.training import fit
    from ..study.strategies import Strategy, apply_strategy

    device = process_device(rank)
    seed_everything(args.seed)
    splits = load_task(args.task, limit={"train": args.train_limit, "validation": args.eval_limit})
    model, tokenizer = load_model(args.model, num_labels=num_labels(splits))
    model.to(device)
    train = encode(splits["train"], tokenizer, args.max_length)
    validation = encode(splits["validation"], tokenizer, args.max_length)
    names = [g.name for g in layer_groups(model)]
    rates = (discriminative_lrs(names, args.lr, args.discriminative) if args.discriminative else args.lr)
    steps = args.epochs * batches_per_epoch(len(train), args.batch_size, world_size)
    schedule = None
    if args.schedule != "none":
        unfreezing = gradual_unfreezing if args.schedule == "gradual" else chain_thaw
        schedule = unfreezing(names, args.every, steps, rates, curve=args.curve)
    else:
        plan = None if args.trainable_layers is None else factory_plan(
            model, args.trainable_layers, args.trainable_modules, args.extra_modules)
        apply_strategy(model, Strategy("command line", *args.plan, plan=plan))
    history = fit(model, train, validation, epochs=args.epochs, lr=rates, batch_size=args.batch_size,
                curve=args.curve, schedule=schedule, seed=args.seed, device=device, progress=rank == 0)
    _report(args, history, fingerprint(model), rank, world_size, dist)


def _report(args, history, digests: dict, rank: int, world_size: int, dist) -> None:
    """Rank 0 prints the result and writes the metrics, with whether every parameter is identical on all ranks."""
    everyone = [digests]
    if world_size > 1:
        everyone = [None] * world_size
        dist.all_gather_object(everyone, digests)
    if rank != 0:
        return
    differing = sorted(n for n in digests if any(other[n] != digests[n] for other in everyone))
    metrics = {"model": args.model, "task": args.task, "world_size": world_size,
               "replicas_identical": not differing, "differing_parameters": differing,
               "parameters_compared": len(digests), **history.summary()}
    print(f"world size {world_size}: final validation accuracy {history.final_accuracy:.3f}; "
          f"{len(digests)} parameters {'identical' if not differing else 'DIFFER'} across ranks")
    if args.output:
        args.output.write_text(json.dumps(metrics, indent=2, default=str) + "\n")


# --- main ----------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The command line: one small ``add_*_parser`` function per command."""
    parser = _Parser(prog="python -m layerfreeze", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                     description="The layerfreeze course kit: run the course, publish its results, or fine-tune.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser = _with_defaults_shown(commands.add_parser)
    add_course_parser(commands)
    add_publish_parser(commands)
    add_train_parser(commands)
    add_gpu_parsers(commands)
    return parser


def _with_defaults_shown(add_parser):
    def add(name, **options):
        options.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        options.setdefault("description", options.get("help"))
        return add_parser(name, **options)
    return add


def main(argv: list[str] | None = None) -> None:
    from ..core.runtime import apply_thread_policy

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        apply_thread_policy()  # after torch loaded: its thread count; the notebooks' kernels: the whole policy
        args.run(args)
    except (ValueError, FileNotFoundError, CourseFailed) as error:  # one line: what failed and what to do
        parser.exit(2, f"python -m layerfreeze {args.command}: error: {error}\n")


def check_before_import() -> None:
    """Under ``python -m layerfreeze ...``, parse the command line before the package imports its API (and torch).
    ``layerfreeze/__init__.py`` calls this first; with any other use of the package it does nothing.

    While Python looks for the module to run, ``sys.argv[0]`` is ``"-m"`` (the Python docs, "-m"), and
    ``sys.orig_argv`` holds the whole command."""
    command = getattr(sys, "orig_argv", [])
    if sys.argv[:1] == ["-m"] and "-m" in command:
        module = command.index("-m") + 1
        if command[module:module + 1] == [__package__.split(".")[0]]:
            build_parser().parse_args(command[module + 1:])
            from ..core.runtime import apply_thread_policy
            try:
                apply_thread_policy()  # before the package imports torch: OpenMP reads the wait policy at its start
            except ValueError:
                pass  # a bad LAYERFREEZE_THREAD_POLICY: main() says so in one line, after the package has loaded
