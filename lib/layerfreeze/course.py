"""What every notebook of the course does the same way: profiles, the device, metrics and figures on disk.

The notebook contract: a cell tagged ``parameters`` sets ``profile``, ``model_name``, ``seed`` and ``output_dir``;
the notebook writes its metrics to ``output_dir/<notebook stem>.json``.

>>> resolve_profile("smoke")
'smoke'
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from pathlib import Path

PROFILES = ("auto", "smoke", "cpu", "full")
# No cell of any profile needs this long on a 2-core CPU; a cell that does has hung (see nbclient issue 312).
DEFAULT_CELL_TIMEOUT = 1800


def resolve_profile(profile: str) -> str:
    """``auto`` becomes ``full`` on a GPU and ``cpu`` otherwise; other profiles stay as they are."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    import torch  # here, not at the top: the command line's --help imports this module and must stay fast

    if profile == "auto":
        return "full" if torch.cuda.is_available() else "cpu"
    return profile


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (when installed) and torch, on every device."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2 ** 32)
    except ImportError:
        pass


def describe_device(device: torch.device | None = None) -> str:
    """A one-line description of where the notebook runs, e.g. ``'cuda: NVIDIA H100 80GB HBM3'``."""
    import torch

    device = device or pick_device()
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"


def environment() -> dict:
    """Library versions and the device, recorded beside every notebook's metrics."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "device": describe_device(), "date": time.strftime("%Y-%m-%d")}


def _clean(value):
    """Make metrics JSON-safe: numbers stay numbers, NaN becomes None, tensors and numpy values become Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _table(frame) -> dict:
    """A DataFrame (or a list of records) as ``{"columns": [...], "rows": [[...], ...]}``, its index first when
    the index carries names rather than 0, 1, 2..."""
    import pandas as pd

    frame = pd.DataFrame(frame)
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.rename_axis(frame.index.name or "").reset_index()
    return {"columns": [str(c) for c in frame.columns], "rows": _clean(frame.values.tolist())}


def save_metrics(metrics: dict, output_dir: str | Path, notebook: str, key_tables: dict | None = None,
                 key_figures: tuple[str, ...] | list[str] = ()) -> Path:
    """Write ``metrics`` (plus the environment) to ``output_dir/<notebook>.json`` and return the path.

    ``key_tables`` (title -> DataFrame or list of records) and ``key_figures`` (names given to :func:`save_figure`)
    are what the course's results page shows for this notebook (:func:`publish_results`)."""
    path = Path(output_dir) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"notebook": notebook, "environment": environment(), **_clean(metrics)}
    if key_tables:
        payload["key_tables"] = [{"title": title, **_table(frame)} for title, frame in key_tables.items()]
    if key_figures:
        payload["key_figures"] = list(key_figures)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def save_figure(figure, name: str, figure_dir: str | Path) -> Path:
    """Save a matplotlib figure as ``figure_dir/<name>.png`` (at 110 dpi, small enough for a README)."""
    path = Path(figure_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


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


# Datasheet figures (NVIDIA): dense bf16/fp16 tensor TFLOPS and memory GB/s, used only to scale a measured time to
# another card. The more specific name comes first.
GPU_DATASHEETS = {"H100 PCIe": (756, 2000), "H100": (989, 3350), "H200": (989, 4800), "A100": (312, 2039),
                  "L4": (121, 300), "T4": (65, 320)}


def _datasheet(device: str) -> tuple[float, float] | None:
    return next((spec for name, spec in GPU_DATASHEETS.items() if name in device), None)


def estimate_seconds_on(seconds: float, measured_on: str, target: str = "T4") -> tuple[float, float] | None:
    """Scale a time measured on one GPU to another by their datasheets: the low end if the work is bound by memory
    bandwidth, the high end if by tensor throughput. Fixed costs (loading, tokenising, Python) are scaled too,
    so the range leans long. ``None`` when either card is not in :data:`GPU_DATASHEETS`.

    >>> estimate_seconds_on(60, "cuda: NVIDIA H100 80GB HBM3", "T4")
    (628.1..., 912.9...)
    >>> estimate_seconds_on(60, "cpu: 2 cores, x86_64") is None
    True
    """
    source, goal = _datasheet(measured_on), _datasheet(target)
    if source is None or goal is None:
        return None
    ratios = sorted((source[0] / goal[0], source[1] / goal[1]))
    return seconds * ratios[0], seconds * ratios[1]


def _notebook_title(notebook_dir: Path, stem: str) -> str:
    import nbformat

    path = notebook_dir / f"{stem}.ipynb"
    if not path.exists():
        return stem
    first = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0]
    return first.lstrip("# ").strip()


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(columns: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows])


def publish_results(build_dir: str | Path = "build", docs_dir: str | Path = "docs",
                    notebook_dir: str | Path = "notebooks", max_figure_bytes: int = 300_000,
                    page: str = "results.md", figures: str = "figures") -> Path:
    """Write ``docs_dir/<page>`` and ``docs_dir/<figures>/`` from one course run in ``build_dir``: the device, library
    versions and date, each notebook's time, key tables and key figures (as each notebook declared them to
    :func:`save_metrics`). Figures from an earlier run are removed, so the page shows one run only. A figure over
    ``max_figure_bytes`` is an error, not a silent omission. ``python -m layerfreeze publish`` runs this."""
    import shutil

    build, docs, notebook_dir = Path(build_dir), Path(docs_dir), Path(notebook_dir)
    timing_path = build / "results" / "course_timing.json"
    if not timing_path.exists():
        raise FileNotFoundError(f"{timing_path} not found: run the whole course first (make course)")
    timing = json.loads(timing_path.read_text())
    env = timing["environment"]
    metrics = {stem: json.loads((build / "results" / f"{stem}.json").read_text()) for stem in timing["seconds"]}

    key_figures = [(stem, name) for stem, m in metrics.items() for name in m.get("key_figures", [])]
    for stem, name in key_figures:
        source = build / "figures" / f"{name}.png"
        if not source.exists():
            raise FileNotFoundError(f"{stem} names key figure {name!r}, but {source} does not exist")
        if source.stat().st_size > max_figure_bytes:
            raise ValueError(f"{source} is {source.stat().st_size:,} bytes; figures on the results page must stay "
                             f"under {max_figure_bytes:,}: save it smaller (fewer points, lower dpi)")
    figure_dir = docs / figures
    figure_dir.mkdir(parents=True, exist_ok=True)
    for old in figure_dir.glob("*.png"):
        old.unlink()
    for _, name in key_figures:
        shutil.copyfile(build / "figures" / f"{name}.png", figure_dir / f"{name}.png")

    estimate = estimate_seconds_on(1, env["device"], "T4") is not None
    lines = [
        "# Course results",
        "",
        f"One run of the whole course (`make course`, profile `{timing['profile']}`, which ran "
        f"`{timing['resolved_profile']}`) on **{env['device']}**, {env['date']}: torch {env['torch']}, "
        f"transformers {env['transformers']}, Python {env['python']}. Written by `python -m layerfreeze publish` from "
        "that run's `build/results/*.json` and `build/figures/`; every number below is the run's own.",
        "",
        "## Time per notebook",
        "",
    ]
    columns = ["notebook", "seconds"] + (["Colab T4, estimated s"] if estimate else [])
    rows = []
    for stem, seconds in [*timing["seconds"].items(), ("whole course", timing["total_seconds"])]:
        row = [stem, round(seconds, 1)]
        if estimate:
            low, high = estimate_seconds_on(seconds, env["device"], "T4")
            row.append(f"{low:.0f} to {high:.0f}")
        rows.append(row)
    lines += _markdown_table(columns, rows)
    if estimate:
        lines += ["", "The T4 column scales the measured time by the two cards' datasheets (memory bandwidth for the "
                  "low end, fp16 tensor throughput for the high end; `layerfreeze.course.estimate_seconds_on`). It is "
                  "an estimate, not a measurement, and it leans long: loading and tokenising do not slow down."]
    for stem, m in metrics.items():
        lines += ["", f"## {_notebook_title(notebook_dir, stem)}", "",
                  f"`{stem}`: {timing['seconds'][stem]:.0f} s, model `{m.get('model_name')}`, seed {m.get('seed')}."]
        for table in m.get("key_tables", []):
            lines += ["", f"**{table['title']}**", ""] + _markdown_table(table["columns"], table["rows"])
        for name in m.get("key_figures", []):
            lines += ["", f"![{name}]({figures}/{name}.png)"]
    path = docs / page
    path.write_text("\n".join(lines) + "\n")
    return path
