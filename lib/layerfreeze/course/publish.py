"""The course's results page: one course run (``build/``) as ``docs/results.md`` and ``docs/figures/``, with each
notebook's time, key tables and key figures. A run of some notebooks only (``course --only 06``) is published the same
way, to a page of its own (``--page``), and says which it ran.
``python -m layerfreeze publish`` runs :func:`publish_results`.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    stems = sorted({*timing["seconds"], *(p.stem for p in (build / "results").glob("[0-9][0-9]_*.json"))})
    metrics = {stem: json.loads((build / "results" / f"{stem}.json").read_text()) for stem in stems}
    _copy_key_figures(build, docs / figures, metrics, max_figure_bytes)
    course_stems = {path.stem for path in notebook_dir.glob("[0-9][0-9]_*.ipynb")}
    ran = sorted(timing["seconds"])
    partial = bool(course_stems) and set(ran) < course_stems
    what = f"notebook{'s' if len(ran) > 1 else ''} {', '.join(ran)}" if partial else "the whole course"
    lines = [
        "# Course results" + (f": {', '.join(ran)}" if partial else ""),
        "",
        f"One run of {what} ({_command(timing, ran if partial else None)}, profile `{timing['profile']}`, which ran "
        f"`{timing['resolved_profile']}`) on **{env['device']}**, {env['date']}: torch {env['torch']}, "
        f"transformers {env['transformers']}, Python {env['python']}. Written from that run's `results/*.json` and "
        "`figures/`; every number below is the run's own.",
        "",
        "## Time per notebook",
        "",
        *_time_table(timing, partial),
    ]
    for stem, m in metrics.items():
        lines += ["", f"## {_notebook_title(notebook_dir, stem)}", "",
                  f"`{stem}`: {_seconds_note(timing, stem, m)}, model `{m.get('model_name')}`, seed {m.get('seed')}."]
        for table in m.get("key_tables", []):
            lines += ["", f"**{table['title']}**", ""] + _markdown_table(table["columns"], table["rows"])
        for name in m.get("key_figures", []):
            lines += ["", f"![{name}]({figures}/{name}.png)"]
    path = docs / page
    path.write_text("\n".join(lines) + "\n")
    return path


def _command(timing: dict, only: list[str] | None) -> str:
    windows = timing.get("gpu_windows")
    if windows is None and only:
        return (f"`python -m layerfreeze course --profile {timing['profile']} --only "
                f"{' '.join(stem[:2] for stem in only)}`")
    if windows is None:
        return "`make course`"
    return f"`python -m layerfreeze gpu-run`, in {windows} window{'s' if windows > 1 else ''} of the GPU machine"


def _seconds_note(timing: dict, stem: str, metrics: dict) -> str:
    if stem in timing["seconds"]:
        return f"{timing['seconds'][stem]:.0f} s"
    return f"run afterwards on {metrics['environment']['device']}, over the results above"


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


def _time_table(timing: dict, partial: bool = False) -> list[str]:
    """Each notebook's seconds, as Markdown lines. No other card's time is scaled from it: on a GPU these runs are
    bound by Python and kernel launches, not by the card's datasheet (docs/gpu_runs.md, "A Colab T4")."""
    total = ("these notebooks" if partial else "whole course", timing["total_seconds"])
    rows = [[stem, round(seconds, 1)] for stem, seconds in [*timing["seconds"].items(), total]]
    return _markdown_table(["notebook", "seconds"], rows)
