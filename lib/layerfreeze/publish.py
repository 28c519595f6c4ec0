"""The course's results page: one run of the whole course (``build/``) as ``docs/results.md`` and ``docs/figures/``,
with each notebook's time (and, from a GPU run, a Colab T4 estimate), key tables and key figures.
``python -m layerfreeze publish`` runs :func:`publish_results`.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    :func:`~layerfreeze.course.save_metrics`). Figures from an earlier run are removed, so the page shows one run
    only. A figure over ``max_figure_bytes`` is an error, not a silent omission. ``python -m layerfreeze publish``
    runs this."""
    build, docs, notebook_dir = Path(build_dir), Path(docs_dir), Path(notebook_dir)
    timing_path = build / "results" / "course_timing.json"
    if not timing_path.exists():
        raise FileNotFoundError(f"{timing_path} not found: run the whole course first (make course)")
    timing = json.loads(timing_path.read_text())
    env = timing["environment"]
    metrics = {stem: json.loads((build / "results" / f"{stem}.json").read_text()) for stem in timing["seconds"]}
    _copy_key_figures(build, docs / figures, metrics, max_figure_bytes)
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
        *_time_table(timing),
    ]
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


def _copy_key_figures(build: Path, figure_dir: Path, metrics: dict, max_figure_bytes: int) -> None:
    """Check every key figure the notebooks named, then replace the page's figures with them."""
    import shutil

    key_figures = [(stem, name) for stem, m in metrics.items() for name in m.get("key_figures", [])]
    for stem, name in key_figures:
        source = build / "figures" / f"{name}.png"
        if not source.exists():
            raise FileNotFoundError(f"{stem} names key figure {name!r}, but {source} does not exist")
        if source.stat().st_size > max_figure_bytes:
            raise ValueError(f"{source} is {source.stat().st_size:,} bytes; figures on the results page must stay "
                             f"under {max_figure_bytes:,}: save it smaller (fewer points, lower dpi)")
    figure_dir.mkdir(parents=True, exist_ok=True)
    for old in figure_dir.glob("*.png"):
        old.unlink()
    for _, name in key_figures:
        shutil.copyfile(build / "figures" / f"{name}.png", figure_dir / f"{name}.png")


def _time_table(timing: dict) -> list[str]:
    """Each notebook's seconds, and from a GPU on the datasheets a Colab T4 estimate, as Markdown lines."""
    device = timing["environment"]["device"]
    estimate = estimate_seconds_on(1, device, "T4") is not None
    columns = ["notebook", "seconds"] + (["Colab T4, estimated s"] if estimate else [])
    rows = []
    for stem, seconds in [*timing["seconds"].items(), ("whole course", timing["total_seconds"])]:
        row = [stem, round(seconds, 1)]
        if estimate:
            low, high = estimate_seconds_on(seconds, device, "T4")
            row.append(f"{low:.0f} to {high:.0f}")
        rows.append(row)
    lines = _markdown_table(columns, rows)
    if estimate:
        lines += ["", "The T4 column scales the measured time by the two cards' datasheets (memory bandwidth for the "
                  "low end, fp16 tensor throughput for the high end; `layerfreeze.publish.estimate_seconds_on`). It is "
                  "an estimate, not a measurement, and it leans long: loading and tokenising do not slow down."]
    return lines
