"""The course runner: every notebook in order, under papermill, into ``build/``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .contract import DEFAULT_CELL_TIMEOUT, environment, resolve_profile
from ..base.runtime import describe_device


def notebook_paths(notebook_dir: str | Path = "notebooks") -> list[Path]:
    """The course's notebooks, in order (``NN_name.ipynb``)."""
    return sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


def run_notebook(notebook: str | Path, executed_dir: str | Path, results_dir: str | Path,
                 figure_dir: str | Path, profile: str = "auto", cell_timeout: int | None = None,
                 **parameters) -> float:
    """Execute one notebook with papermill (in its own folder) and return the seconds it took. A cell that runs
    longer than ``cell_timeout`` seconds fails the run instead of hanging it."""
    import papermill

    notebook = Path(notebook).resolve()
    Path(executed_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(notebook), str(Path(executed_dir).resolve() / notebook.name), kernel_name="python3",
        cwd=str(notebook.parent), progress_bar=False, execution_timeout=cell_timeout,
        parameters=dict(profile=profile, output_dir=str(Path(results_dir).resolve()),
                        figure_dir=str(Path(figure_dir).resolve()), **parameters))
    return time.perf_counter() - start


def run_course(profile: str = "auto", build_dir: str | Path = "build", notebook_dir: str | Path = "notebooks",
               only: list[str] | None = None, cell_timeout: int | None = DEFAULT_CELL_TIMEOUT) -> dict[str, float]:
    """Run every notebook in order into ``build_dir``: executed notebooks in ``notebooks/``, metrics in
    ``results/``, figures in ``figures/``. Prints each notebook's time and where the output is. A cell that runs
    past ``cell_timeout`` seconds stops the course with a message that says which, instead of hanging it."""
    from nbclient.exceptions import CellTimeoutError

    build = Path(build_dir)
    paths = [p for p in notebook_paths(notebook_dir) if not only or any(p.name.startswith(o) for o in only)]
    if not paths:
        raise ValueError(f"no notebooks to run in {notebook_dir!r} (only={only})")
    print(f"Running {len(paths)} notebooks with profile={profile} ({resolve_profile(profile)} here) "
          f"on {describe_device()}")
    timings = {}
    for path in paths:
        print(f"  {path.name} ...", end=" ", flush=True)
        try:
            timings[path.stem] = run_notebook(path, build / "notebooks", build / "results", build / "figures",
                                              profile, cell_timeout)
        except CellTimeoutError:
            raise TimeoutError(f"{path.name}: a cell ran for more than {cell_timeout} s and was stopped (the "
                               f"executed notebook, up to that cell: {build / 'notebooks' / path.name}). On a slow "
                               f"or busy machine, allow more with --cell-timeout.") from None
        print(f"{timings[path.stem]:.0f} s", flush=True)
    write_course_timing(build, profile, timings)
    print(f"Done in {sum(timings.values()) / 60:.1f} min.\n  executed notebooks: {build / 'notebooks'}\n"
          f"  metrics (JSON):     {build / 'results'}\n  figures (PNG):      {build / 'figures'}")
    return timings


def write_course_timing(build_dir: str | Path, profile: str, seconds: dict[str, float]) -> Path:
    """``build_dir/results/course_timing.json``: each notebook's seconds, what :func:`publish_results` reads."""
    path = Path(build_dir) / "results" / "course_timing.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"profile": profile, "resolved_profile": resolve_profile(profile), "seconds": seconds,
         "total_seconds": sum(seconds.values()), "environment": environment()}, indent=2) + "\n")
    return path
