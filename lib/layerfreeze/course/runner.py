"""The course runner: every notebook in order, under papermill, into ``build/``.

A cell that runs past its limit stops the course. The limit follows the profile and this machine's speed
(:func:`profile_cell_timeout`): the longest cell of the profile on the reference machine, scaled by how fast this
machine's cores are, times an allowance for other jobs beside it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .contract import DEFAULT_CELL_TIMEOUT, environment, resolve_profile
from ..base.runtime import apply_thread_policy, describe_device

# The longest cell of each profile, in seconds, on the reference machine (the 2-core CPU of docs/results.md): cpu's
# is notebook 06's cell that trains every plan and method (445 s on 2026-12-05, with small test runs beside it; 02's
# strategy cell took 259 s, 03's ULMFiT rows about 190 s), smoke notebooks take well under a minute each; full's is
# the same cell of 06 at the full sizes (3,714 s on 2026-12-05, alone: docs/results-06-full.md). On a
# GPU the full profile keeps the fixed bound: the calibration below measures CPU cores, not a card.
LONGEST_CELL_SECONDS = {"smoke": 60, "cpu": 445, "full": 3714}
# CPU seconds of calibration_seconds() on the reference machine: 0.190-0.195 in 5 runs, at load average 11.6-12.2
# (CPU time: other jobs barely change it).
REFERENCE_CALIBRATION_SECONDS = 0.19
# Beside two equal jobs the goal is at most 4x the quiet time (benchmarks/contention.py); 25% more before a cell
# counts as hung.
CONTENTION_ALLOWANCE = 5
MINIMUM_CELL_TIMEOUT = 120


class CourseFailed(RuntimeError):
    """A notebook of the course failed or ran out of time; the message is one line that says what to do."""


def calibration_seconds(repeats: int = 3) -> float:
    """The CPU seconds of a fixed single-thread workload (160 products of 384 x 384 matrices, MiniLM's width), the
    fastest of ``repeats``: how fast this machine's cores are. CPU time, not wall time, so that other jobs barely
    change it."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(384, 384, generator=generator), torch.randn(384, 384, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = math.inf
    try:
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(160):
                torch.mm(a, b)
            best = min(best, time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return best


def profile_cell_timeout(profile: str, calibration: float | None = None, on_gpu: bool | None = None) -> int:
    """Seconds a cell of ``profile`` may run here: its longest cell on the reference machine, times this machine's
    slowness (``calibration`` CPU seconds, measured when not given, against the reference's), times
    :data:`CONTENTION_ALLOWANCE`; at least :data:`MINIMUM_CELL_TIMEOUT`. The full profile on a GPU (``on_gpu``,
    by default whether CUDA is available) keeps :data:`DEFAULT_CELL_TIMEOUT`.

    >>> [profile_cell_timeout(p, calibration=c) for p, c in [("cpu", 0.19), ("cpu", 0.38), ("smoke", 0.19)]]
    [2225, 4450, 300]
    >>> profile_cell_timeout("full", on_gpu=True)
    1800
    """
    import torch

    resolved = resolve_profile(profile)
    if resolved == "full" and (torch.cuda.is_available() if on_gpu is None else on_gpu):
        return DEFAULT_CELL_TIMEOUT
    slowness = (calibration_seconds() if calibration is None else calibration) / REFERENCE_CALIBRATION_SECONDS
    return max(MINIMUM_CELL_TIMEOUT, math.ceil(LONGEST_CELL_SECONDS[resolved] * slowness * CONTENTION_ALLOWANCE))


def notebook_paths(notebook_dir: str | Path = "notebooks") -> list[Path]:
    """The course's notebooks, in order (``NN_name.ipynb``)."""
    return sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


def run_notebook(notebook: str | Path, executed_dir: str | Path, results_dir: str | Path,
                 figure_dir: str | Path, profile: str = "auto", cell_timeout: int | None = None,
                 progress: bool = False, **parameters) -> float:
    """Execute one notebook with papermill (in its own folder) and return the seconds it took. A cell that runs
    longer than ``cell_timeout`` seconds fails the run instead of hanging it; ``progress`` shows papermill's bar
    (cells done out of cells, elapsed time) on standard error."""
    import papermill

    notebook = Path(notebook).resolve()
    Path(executed_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(notebook), str(Path(executed_dir).resolve() / notebook.name), kernel_name="python3",
        cwd=str(notebook.parent), progress_bar=progress, execution_timeout=cell_timeout,
        parameters=dict(profile=profile, output_dir=str(Path(results_dir).resolve()),
                        figure_dir=str(Path(figure_dir).resolve()), **parameters))
    return time.perf_counter() - start


def run_course(profile: str = "auto", build_dir: str | Path = "build", notebook_dir: str | Path = "notebooks",
               only: list[str] | None = None, cell_timeout: int | None = None,
               parameters: dict[str, dict] | None = None) -> dict[str, float]:
    """Run every notebook in order into ``build_dir``: executed notebooks in ``notebooks/``, metrics in
    ``results/``, figures in ``figures/``. ``parameters`` maps a notebook's number prefix to papermill parameters
    of its own (then only those notebooks run, e.g. :func:`~layerfreeze.course.contract.real_parameters`).
    Prints each notebook's time and where the output is. A cell that runs
    past ``cell_timeout`` seconds (by default :func:`profile_cell_timeout` for the profile on this machine) stops
    the course with :class:`CourseFailed`, whose one-line message says which notebook and what to do."""
    if cell_timeout is not None and (isinstance(cell_timeout, bool) or not isinstance(cell_timeout, int)
                                     or cell_timeout < 1):
        raise ValueError(f"cell_timeout must be a whole number of seconds of at least 1, or None, got {cell_timeout!r}")
    build = Path(build_dir)
    paths = [p for p in notebook_paths(notebook_dir) if not only or any(p.name.startswith(o) for o in only)]
    if parameters is not None:
        paths = [p for p in paths if p.name[:2] in parameters]
    if not paths:
        raise ValueError(f"no notebooks to run in {notebook_dir!r} (only={only})")
    apply_thread_policy()  # the kernels inherit it
    limit = cell_timeout or profile_cell_timeout(profile)
    print(f"Running {len(paths)} notebooks with profile={profile} ({resolve_profile(profile)} here) "
          f"on {describe_device()}; a cell may run {limit} s")
    timings = {}
    for number, path in enumerate(paths, 1):
        print(f"  [{number}/{len(paths)}] {path.name}", flush=True)  # papermill's bar follows: cells done, elapsed
        timings[path.stem] = _run_course_notebook(path, build, profile, limit, (parameters or {}).get(path.name[:2], {}))
        print(f"  [{number}/{len(paths)}] {path.name}: {timings[path.stem]:.0f} s", flush=True)
    write_course_timing(build, profile, timings)
    print(f"Done in {sum(timings.values()) / 60:.1f} min.\n  executed notebooks: {build / 'notebooks'}\n"
          f"  metrics (JSON):     {build / 'results'}\n  figures (PNG):      {build / 'figures'}")
    return timings


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send the standard error of the processes this one starts (the notebook's kernel) to a file; this process's
    ``sys.stderr`` (papermill's progress bar) stays where it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved, before = os.dup(2), sys.stderr
    try:
        with open(path, "ab") as log, open(os.dup(saved), "w", buffering=1, closefd=True) as terminal:
            os.dup2(log.fileno(), 2)
            sys.stderr = terminal
            yield
    finally:
        sys.stderr = before
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _run_course_notebook(path: Path, build: Path, profile: str, limit: int, parameters: dict) -> float:
    """One notebook of the course; a timeout or a failing cell becomes :class:`CourseFailed`, in one line."""
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    executed = build / "notebooks" / path.name
    try:
        with _stderr_to(executed.with_suffix(".log")):  # the kernel's own messages, e.g. its traceback when stopped
            return run_notebook(path, build / "notebooks", build / "results", build / "figures", profile, limit,
                                progress=True, **parameters)
    except CellTimeoutError:
        raise CourseFailed(f"{path.name}: a cell ran for more than {limit} s and was stopped (the notebook up to "
                           f"that cell: {executed}; the kernel's messages: {executed.with_suffix('.log')}). The "
                           "machine is slower or busier than this limit allows: run again when fewer jobs run beside "
                           "it, or allow more with --cell-timeout SECONDS.") from None
    except PapermillExecutionError as error:
        raise CourseFailed(f"{path.name}: cell {error.exec_count} failed with {error.ename}: "
                           f"{' '.join(str(error.evalue).split())[:300]} (the notebook up to that cell: {executed}). "
                           "Open it to see the traceback; fix the cause and run the course again.") from None


def write_course_timing(build_dir: str | Path, profile: str, seconds: dict[str, float]) -> Path:
    """``build_dir/results/course_timing.json``: each notebook's seconds, what :func:`publish_results` reads."""
    path = Path(build_dir) / "results" / "course_timing.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"profile": profile, "resolved_profile": resolve_profile(profile), "seconds": seconds,
         "total_seconds": sum(seconds.values()), "environment": environment()}, indent=2) + "\n")
    return path
