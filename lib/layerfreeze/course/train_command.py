"""``python -m layerfreeze train``: fine-tune with a freezing plan or an unfreezing schedule, from flags or a YAML
config (LLaMA-Factory's ``freeze_*`` keys included). It runs unchanged under ``torchrun --nproc_per_node N`` or
``accelerate launch``: each process trains on its shard with DistributedDataParallel, re-wrapped whenever the
trainable set changes (or, with ``--fsdp``, on its slice of a model sharded by FSDP2), and rank 0 writes the metrics,
including whether every parameter ended identical on all ranks.

Contradicting flags are refused before anything loads (:func:`conflicting_flags`); what needs the model's layers
(``--preset top:99``, ``--trainable-layers 99``) is checked right after the model loads, before any training.

``--task lm`` fine-tunes a causal LM (by default the kit's pretrained decoder, ``kit-decoder``) on plain text, or on
prompt/response pairs with the prompt masked out of the loss (supervised fine-tuning, LLaMA-Factory's use of its
freeze mode); without ``--data`` it trains on the kit's generated domain instructions. Its trainable set defaults
to the last two blocks (``--trainable-layers 2``), the pretrained head frozen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .arguments import (config_file, factor, natural_int, nonzero_int, output_file, output_folder, positive_float,
                        positive_int)
from ..base.data import TASK_NAMES
from ..core.schedules import CURVES

# core.strategy.PRESETS, which imports torch; tests/test_cli.py keeps the two in step.
PRESETS_WITH_K, PRESETS_WITHOUT_K = ("top", "bottom"), ("head", "all", "bitfit")
PRESET_CHOICES = "head, top:K, bottom:K, all or bitfit"
LM_TASK = "lm"
LM_DEFAULT_LAYERS = 2  # --task lm without a plan: the last two blocks train


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


def add_train_parser(commands) -> argparse.ArgumentParser:
    train = commands.add_parser("train", help="fine-tune with a freezing plan or an unfreezing schedule")
    train.add_argument("--config", type=config_file, help="a YAML file of these options (underscored, e.g. "
                       "learning_rate: 1.0e-4), LLaMA-Factory's freeze_* keys included; flags given here win")
    train.add_argument("--model", default=None,
                       help="minilm (the default), kit-decoder (the default for --task lm), a Hub id, a local "
                            "directory, or tiny:FAMILY")
    train.add_argument("--task", default="a", choices=TASK_NAMES + (LM_TASK,),
                       help="the task to fine-tune on; lm: a causal LM on text (--data), the kit's domain without it")
    train.add_argument("--data", default=None, metavar="PATH_OR_HUB_ID",
                       help="your own task instead of --task: a CSV/JSONL/Parquet file, a folder, or a Hub dataset id")
    train.add_argument("--text-column", default="text", help="the text column of --data")
    train.add_argument("--label-column", default="label", help="the label column of --data (strings or numbers)")
    train.add_argument("--prompt-column", default=None,
                       help="--task lm: the prompt column of --data (with --response-column: supervised fine-tuning)")
    train.add_argument("--response-column", default=None,
                       help="--task lm: the response column of --data; only its tokens count in the loss")
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

    >>> from layerfreeze.course.cli import build_parser
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
    if args.data is not None and args.task not in ("a", LM_TASK):
        return f"--data {args.data!r} and --task {args.task!r} both name the task: give one"
    return _language_model_conflicts(args)


def _language_model_conflicts(args) -> str | None:
    """What ``--task lm`` cannot combine with, and the columns that belong to it alone."""
    columns = [f"--{name.replace('_', '-')} {getattr(args, name)!r}" for name in ("prompt_column", "response_column")
               if getattr(args, name) is not None]
    if args.task != LM_TASK:
        if columns:
            return (f"{' and '.join(columns)}: prompt and response columns are for --task lm (a causal LM); "
                    f"--task {args.task} is classification, which reads --text-column and --label-column")
        return None
    if columns and args.data is None:
        return f"{' and '.join(columns)} name columns of --data: give --data FILE (without it, the kit's domain trains)"
    if args.schedule != "none":
        return (f"--schedule {args.schedule} unfreezes down from a new task head, and a causal LM has none: with "
                "--task lm give --trainable-layers N (LLaMA-Factory's freeze tuning) or --preset")
    return None


def _train(args) -> None:
    from ..base.models import DEFAULT_MODEL, KIT_DECODER, check_model_arguments
    from ..base.runtime import check_fsdp, distributed_context

    language_model = args.task == LM_TASK
    args.model = args.model or (KIT_DECODER if language_model else DEFAULT_MODEL)
    check_model_arguments(args.model, "causal-lm" if language_model else "classification")  # before the data loads
    if language_model:  # the file read and checked before the model loads
        args.lm_rows = _language_model_rows(args)
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

    >>> from layerfreeze.course.cli import build_parser
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


def _language_model_rows(args) -> dict[str, list[dict]]:
    """``--task lm``'s training and validation rows: ``--data``'s (its last tenth, at least one row and at most
    ``--eval-limit``, held out), or the kit's generated domain instructions."""
    from ..base.corpus import domain_instructions
    from ..base.text import read_lm_file

    if args.data is None:
        rows = domain_instructions(args.train_limit + args.eval_limit, args.seed)
        return {"train": rows[:args.train_limit], "validation": rows[args.train_limit:]}
    rows = read_lm_file(args.data, args.text_column, args.prompt_column, args.response_column)
    if len(rows) < 2:
        raise ValueError(f"--data {args.data!r} holds {len(rows)} row(s); training and validation need at least 2")
    held_out = min(args.eval_limit, max(1, len(rows) // 10))
    return {"train": rows[:-held_out][:args.train_limit], "validation": rows[-held_out:]}


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
    if args.task == LM_TASK:
        return _train_language_model(args, rank, world_size, device)
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


def _train_language_model(args, rank: int, world_size: int, device) -> None:
    """``--task lm``: a causal LM fine-tuned on ``args.lm_rows`` with the plan the flags give (by default the last
    :data:`LM_DEFAULT_LAYERS` blocks), scored by perplexity on the held-out rows."""
    import torch.distributed as dist

    from ..base.data import batches_per_epoch
    from ..base.models import load_model
    from ..base.text import encode_lm_rows
    from ..core.freezing import fingerprint
    from ..core.layers import layer_groups, num_blocks
    from ..core.training import fit

    rows = args.lm_rows
    epochs, examples = epochs_and_examples(args, len(rows["train"]), world_size)
    model, tokenizer = load_model(args.model, task="causal-lm")
    if args.trainable_layers is None and not given(args.preset):
        args.trainable_layers = min(LM_DEFAULT_LAYERS, num_blocks(model))
    steps = epochs * batches_per_epoch(examples, args.batch_size, world_size)
    rates, schedule, trains = _training_setup(args, model, [g.name for g in layer_groups(model)], steps)
    max_length = args.max_length or min(256, tokenizer.model_max_length)
    model.to(device)
    train = encode_lm_rows(rows["train"][:examples], tokenizer, max_length)
    validation = encode_lm_rows(rows["validation"], tokenizer, max_length)
    if rank == 0:
        kind = "prompt/response pairs" if "response" in rows["train"][0] else "plain texts"
        print(f"{args.model}: {trains}; {len(train)} {kind}; {steps} step{'s' * (steps != 1)}", flush=True)
    history = fit(model, train, validation, epochs=epochs, lr=rates, batch_size=args.batch_size, curve=args.curve,
                  seed=args.seed, device=device, progress=rank == 0 and sys.stderr.isatty(), fsdp=args.fsdp)
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
    perplexity = history.epochs[-1].get("eval_perplexity")
    score = f"perplexity {perplexity:.2f}, next-token accuracy" if perplexity is not None else "accuracy"
    print(f"world size {world_size}: final validation {score} {history.final_accuracy:.3f}; "
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
