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

import torch

PROFILES = ("auto", "smoke", "cpu", "full")


def resolve_profile(profile: str) -> str:
    """``auto`` becomes ``full`` on a GPU and ``cpu`` otherwise; other profiles stay as they are."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    if profile == "auto":
        return "full" if torch.cuda.is_available() else "cpu"
    return profile


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (when installed) and torch, on every device."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2 ** 32)
    except ImportError:
        pass


def describe_device(device: torch.device | None = None) -> str:
    """A one-line description of where the notebook runs, e.g. ``'cuda: NVIDIA H100 80GB HBM3'``."""
    device = device or pick_device()
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"


def environment() -> dict:
    """Library versions and the device, recorded beside every notebook's metrics."""
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


def save_metrics(metrics: dict, output_dir: str | Path, notebook: str) -> Path:
    """Write ``metrics`` (plus the environment) to ``output_dir/<notebook>.json`` and return the path."""
    path = Path(output_dir) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"notebook": notebook, "environment": environment(), **_clean(metrics)}
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
               only: list[str] | None = None) -> dict[str, float]:
    """Run every notebook in order into ``build_dir``: executed notebooks in ``notebooks/``, metrics in
    ``results/``, figures in ``figures/``. Prints each notebook's time and where the output is."""
    build = Path(build_dir)
    paths = [p for p in notebook_paths(notebook_dir) if not only or any(p.name.startswith(o) for o in only)]
    if not paths:
        raise ValueError(f"no notebooks to run in {notebook_dir!r} (only={only})")
    print(f"Running {len(paths)} notebooks with profile={profile} ({resolve_profile(profile)} here) "
          f"on {describe_device()}")
    timings = {}
    for path in paths:
        print(f"  {path.name} ...", end=" ", flush=True)
        timings[path.stem] = run_notebook(path, build / "notebooks", build / "results", build / "figures", profile)
        print(f"{timings[path.stem]:.0f} s", flush=True)
    total = sum(timings.values())
    (build / "results").mkdir(parents=True, exist_ok=True)
    (build / "results" / "course_timing.json").write_text(json.dumps(
        {"profile": profile, "resolved_profile": resolve_profile(profile), "seconds": timings, "total_seconds": total,
         "environment": environment()}, indent=2) + "\n")
    print(f"Done in {total / 60:.1f} min.\n  executed notebooks: {build / 'notebooks'}\n"
          f"  metrics (JSON):     {build / 'results'}\n  figures (PNG):      {build / 'figures'}")
    return timings
