"""The course's notebook contract and its runner: profiles, the set-up cell, metrics and figures on disk.

The notebook contract: a cell tagged ``parameters`` sets ``profile``, ``model_name``, ``seed`` and ``output_dir``;
the set-up cell calls :func:`start` with the notebook's settings per profile; the notebook writes its metrics to
``output_dir/<notebook stem>.json`` (:func:`save_metrics`). :func:`run_course` runs every notebook in order;
:mod:`layerfreeze.course.publish` turns one run into the results page. The top layer: nothing in the library's core
imports it.

>>> resolve_profile("smoke")
'smoke'
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .colab import on_colab
from ..base.runtime import describe_device, pick_device, seed_everything

if TYPE_CHECKING:
    import torch

PROFILES = ("auto", "smoke", "cpu", "full")
# No cell of any profile needs this long on a 2-core CPU; a cell that does has hung (see nbclient issue 312).
DEFAULT_CELL_TIMEOUT = 1800


# ``course --real``: the lessons where real data changes what they show, on Hub datasets and a Hub model. DistilBERT
# has MiniLM's six blocks, so the notebooks' block counts read the same; it needs the Hub (Colab), never ``make``.
REAL_MODEL = "distilbert/distilbert-base-uncased"
REAL_NOTEBOOKS = {"02": {"task_a": "sst2"},
                  "04": {"task_a": "sst2", "task_b": "ag_news", "decoder_name": "openai-community/gpt2"}}


def real_parameters(only: list[str] | None = None, environ=None) -> dict[str, dict]:
    """Each notebook's papermill parameters for ``course --real`` (by number prefix), restricted to ``only``;
    refused, before anything runs, where the Hub is switched off.

    >>> real_parameters(["02"], environ={})["02"]["task_a"]
    'sst2'
    """
    environ = os.environ if environ is None else environ
    if environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError("--real downloads SST-2, AG News and the model from the Hub, but HF_HUB_OFFLINE=1 (make sets "
                         "it): run it where the Hub is reachable, e.g. on Colab, or as HF_HUB_OFFLINE=0 make course ...")
    chosen = {prefix: params for prefix, params in REAL_NOTEBOOKS.items()
              if not only or any(prefix.startswith(o) or o.startswith(prefix) for o in only)}
    if not chosen:
        raise ValueError(f"--real runs notebooks {', '.join(REAL_NOTEBOOKS)}; --only {' '.join(only)} names none of them")
    return {prefix: {"model_name": REAL_MODEL, **params} for prefix, params in chosen.items()}


def resolve_profile(profile: str) -> str:
    """``auto`` becomes ``full`` on a GPU and ``cpu`` otherwise; other profiles stay as they are."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    import torch  # here, not at the top: the command line's --help imports this module and must stay fast

    if profile == "auto":
        return "full" if torch.cuda.is_available() else "cpu"
    return profile


class Start(NamedTuple):
    """What a notebook's set-up cell hands on: the resolved profile, the device, and this profile's settings."""

    profile: str
    device: torch.device
    settings: dict | None


def start(profile: str, seed: int, settings: dict[str, dict] | None = None, cpu_threads: int | None = None) -> Start:
    """Every notebook's set-up cell: resolve the profile, pick the device, seed everything (before any model loads:
    a new classification head is initialised at random), and print where it runs. ``settings`` maps each profile
    (``smoke``, ``cpu``, ``full``) to the notebook's sizes; the resolved profile's come back. ``cpu_threads`` caps
    torch's threads on a CPU.

    >>> profile, device, settings = start("smoke", 0, {"smoke": {"train": 8}, "cpu": {}, "full": {}})
    profile=smoke, device=cpu: ..., settings={'train': 8}
    >>> profile, settings
    ('smoke', {'train': 8})
    """
    import torch

    profile = resolve_profile(profile)
    if settings is not None and profile not in settings:
        raise ValueError(f"settings has no entry for profile {profile!r}; it needs one per profile: "
                         f"{', '.join(PROFILES[1:])}")
    chosen = settings[profile] if settings is not None else None
    device = pick_device()
    if cpu_threads is not None and device.type == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), cpu_threads))
    seed_everything(seed)
    print(f"profile={profile}, device={describe_device(device)}" + (f", settings={chosen}" if chosen else ""))
    return Start(profile, device, chosen)


def environment() -> dict:
    """Library versions and the device, recorded beside every notebook's metrics."""
    import platform

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


def results_folder(folder: str | Path) -> Path:
    """Where a notebook's ``output_dir`` or ``figure_dir`` lands. The defaults (``../build/results``) are relative to
    ``notebooks/`` in a checkout; on Colab a notebook runs in ``/content``, where ``..`` would leave the file
    browser, so there a relative path that climbs out keeps its part below the climb, under the working folder.

    >>> str(results_folder("../build/results"))
    '../build/results'
    """
    path = Path(folder)
    if on_colab() and not path.is_absolute() and ".." in path.parts:
        return Path.cwd() / Path(*[part for part in path.parts if part != ".."])
    return path


def save_metrics(metrics: dict, output_dir: str | Path, notebook: str, key_tables: dict | None = None,
                 key_figures: tuple[str, ...] | list[str] = ()) -> Path:
    """Write ``metrics`` (plus the environment) to ``output_dir/<notebook>.json`` and return the path.

    ``key_tables`` (title -> DataFrame or list of records) and ``key_figures`` (names given to :func:`save_figure`)
    are what the course's results page shows for this notebook (:func:`publish_results`)."""
    path = results_folder(output_dir) / f"{notebook}.json"
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
    path = results_folder(figure_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
