"""The course on a GPU in one short window, and its rehearsal on the CPU.

The project's GPU machine is lent rarely and briefly, so the GPU run is prepared commands that cannot waste their
window, in two parts (``part``): window 1 (``course``, the default) runs the notebooks, window 2 (``bench``) the
benchmarks alone; ``all`` runs both in one command, the notebooks first. The course part runs the notebooks most
valuable first (04, the forgetting run, whose lessons need a GPU), each under a
time limit; skips a notebook that no longer fits, and says so; kills one that runs past its limit instead of
hanging; after *each* notebook, rewrites one archive of everything finished so far, so a run cut short still
returns what it did. The benchmark part writes each strategy's results into the returned folder as soon as it
finishes, so a command killed mid-way still returns them. ``docs/gpu_runs.md`` shows the sizing. The
takeaways notebook (07) trains nothing and reads every other notebook's results, so it does not spend GPU time:
it runs here, at import, over everything that came back.

    python -m layerfreeze gpu-run --out $OUT                     # window 1 on the GPU machine: the notebooks
    python -m layerfreeze gpu-run --out $OUT --part bench --budget 200   # window 2: the benchmarks alone
    python -m layerfreeze gpu-run --out build/rehearsal --profile smoke --precision bf16,fp16   # rehearsal (CPU)

Back here, :func:`import_gpu_run` unpacks what came back (from one window, or several that each finished part of
the course) and publishes it as its own results page.

>>> run_order(["01_a.ipynb", "02_b.ipynb", "04_c.ipynb", "06_d.ipynb"])
['04_c.ipynb', '02_b.ipynb', '01_a.ipynb', '06_d.ipynb']
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .contract import environment
from .runner import notebook_paths, write_course_timing
from .publish import publish_results
from ..base.runtime import FORCE_VARIABLE, PRECISIONS, MiB, apply_thread_policy

PRIORITY = ("04", "02", "03", "05")  # window 1; 01, then 06, run in what is left (docs/gpu_runs.md)
TAKEAWAYS = "07"  # run at import, over the results of every window
# Seconds each notebook is expected to take: `full` on one GPU, from the H200 run of 2026-11-27 scaled to the sizes
# cut after it and to 5 seeds in 04 and 06 (docs/gpu_runs.md). A notebook that no longer fits is skipped. Other
# profiles (the rehearsal's `smoke`, on a CPU that may be busy) get a bound on a hang instead: a smoke notebook takes
# well under a minute on a quiet 2-core machine, and up to about ten beside another job (02 took 630 s in bf16
# beside a second `make test`).
# 03 and 06 grew after that (03: one group thawed per epoch and two layer-wise decay rows; 06: notebook 04's protocol
# and the oracle sweep), and every rate became a line search (05's picker too): each is scaled by the change its
# notebook measured on the CPU (docs/gpu_runs.md), and 06 no longer fits window 1 beside the others.
EXPECTED_SECONDS = {"full": {"04": 170, "02": 53, "03": 84, "05": 100, "01": 27, "06": 205}}
BUDGET_SECONDS = COURSE_BUDGET_SECONDS = 480  # window 1: 8 minutes of notebooks; the benchmarks get window 2
PARTS = ("course", "bench", "all")  # window 1, window 2, or both in one command (the notebooks first)
BENCH_STRATEGIES = 5  # benchmarks/run.py's configurations: window 2's time is shared among them
BENCH_SETUP_SECONDS = 40  # loading the model and profiling the layer groups, before the first strategy
DEFAULT_EXPECTED_SECONDS = {"full": 60}
HANG_BOUND_SECONDS = 600
ARCHIVE, SUMMARY, LOG = "gpu_run.tar.gz", "gpu_run.json", "gpu_run.log"
CELL_TIMEOUT_EXIT = 124  # what `timeout` returns: a cell ran past its limit
ERROR_TAIL = 2000  # characters of a failed notebook's output kept in the summary
CARRY_LIMIT = 64 * MiB  # what goes along with a device command: the working tree plus .carry/


def run_order(names: list) -> list:
    """Notebooks in the order the GPU run takes them: :data:`PRIORITY` first, then the rest in course order."""
    rank = {prefix: i for i, prefix in enumerate(PRIORITY)}
    return sorted(names, key=lambda n: (rank.get(Path(n).name[:2], len(rank)), Path(n).name))


def expected_seconds(stem: str, profile: str) -> float:
    return EXPECTED_SECONDS.get(profile, {}).get(stem[:2], DEFAULT_EXPECTED_SECONDS.get(profile, HANG_BOUND_SECONDS))


def time_limit(expected: float, seconds_left: float) -> float:
    """A notebook may take twice its expected time (at least a minute more), but never past the deadline.

    >>> time_limit(100, 600), time_limit(20, 600), time_limit(100, 150)
    (200, 80, 150)
    """
    return min(seconds_left, max(2 * expected, expected + 60))


def precisions(precision: str) -> list[str]:
    """A list such as ``"bf16,fp16"`` is cycled over the notebooks, so one run can try both of the GPU's paths (the
    rehearsal forces ``bf16`` alone: fp16 is emulated on the CPU, too slow for the notebooks).

    >>> precisions("bf16,fp16")
    ['bf16', 'fp16']
    """
    chosen = [p.strip() for p in precision.split(",")]
    for p in chosen:
        if p not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; valid: one of {', '.join(PRECISIONS)}, or several "
                             "separated by commas (cycled over the notebooks)")
    return chosen


def check_arguments(profile: str, budget: float, course_budget: float | None, precision: str,
                    part: str = "course") -> None:
    """Refuse bad arguments before anything runs."""
    from .contract import PROFILES
    if part not in PARTS:
        raise ValueError(f"part={part!r}; valid: {', '.join(PARTS)} (window 1, window 2, or both)")
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}; valid: {', '.join(PROFILES)}")
    precisions(precision)
    if not budget > 0:
        raise ValueError(f"budget={budget!r} seconds; it must be a positive number")
    if course_budget is not None and not 0 < course_budget <= budget:
        raise ValueError(f"course_budget={course_budget!r} seconds; it must be positive and at most budget={budget}")


def run_limited(command: list[str], limit: float, log, env: dict | None = None) -> tuple[str, float]:
    """Run ``command`` in its own process group, its output appended to ``log``; kill the whole group after
    ``limit`` seconds. Returns ``("ok" | "failed" | "timed out", seconds)``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code = CELL_TIMEOUT_EXIT
    status = {0: "ok", CELL_TIMEOUT_EXIT: "timed out"}.get(code, "failed")
    return status, time.perf_counter() - start


def _notebook_command(path: Path, build: Path, profile: str, cell_timeout: float) -> list[str]:
    """One notebook in a fresh Python process: :func:`run_one_notebook` (this module run as a script)."""
    return [sys.executable, "-m", "layerfreeze.course.gpu_run", str(path), str(build), profile, str(int(cell_timeout))]


def run_one_notebook(path: str, build: str, profile: str, cell_timeout: str) -> int:
    """Execute one notebook into ``build``; the exit code says how it ended (0, 1, or 124 for a cell timeout)."""
    from nbclient.exceptions import CellTimeoutError

    from .runner import run_notebook
    build = Path(build)
    try:
        run_notebook(path, build / "notebooks", build / "results", build / "figures", profile, int(cell_timeout))
    except CellTimeoutError as error:
        print(f"cell timeout: {error}", flush=True)
        return CELL_TIMEOUT_EXIT
    return 0


def write_archive(build: Path, out: Path) -> Path:
    """Everything finished so far in one archive, replaced atomically (a run killed mid-write keeps the last)."""
    partial = out / (ARCHIVE + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for part in ("results", "figures", "notebooks", "bench"):
            if (build / part).exists():
                tar.add(build / part, arcname=part)
    return partial.replace(out / ARCHIVE)


def _save_progress(summary: dict, build: Path, out: Path, started: float) -> None:
    summary["seconds"] = round(time.perf_counter() - started, 1)
    finished = {n["stem"]: n["seconds"] for n in summary["notebooks"] if n["status"] == "ok"}
    write_course_timing(build, summary["profile"], finished)
    write_archive(build, out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def _run_course_part(paths, build, out, log, summary, deadline, started) -> None:
    profile, cycle = summary["profile"], precisions(summary["precision"])
    for i, path in enumerate(paths):
        expected, left = expected_seconds(path.stem, profile), deadline - time.perf_counter()
        entry = {"stem": path.stem, "precision": cycle[i % len(cycle)], "expected_seconds": expected}
        env = _environment(entry["precision"])
        if left < expected:
            entry.update(status="skipped", seconds=0.0, reason=f"needs about {expected:.0f} s, {left:.0f} s left")
        else:
            limit = time_limit(expected, left)
            print(f"  {path.name} ({entry['precision']}): up to {limit:.0f} s ...", end=" ", flush=True)
            log.write(f"\n===== {path.name} (limit {limit:.0f} s) =====\n".encode()); log.flush()
            # papermill stops a cell at the limit; the process-group kill 30 s later catches everything else
            begins = log.tell()
            status, seconds = run_limited(_notebook_command(path, build, profile, limit), limit + 30, log, env)
            entry.update(status=status, seconds=round(seconds, 1), limit_seconds=round(limit))
            if status != "ok":  # the summary comes back even when the log is cut short: keep why it ended
                entry["error"] = _tail_since(log, begins)
        print(f"{entry['status']} ({entry['seconds']:.0f} s) {entry.get('reason', '')}", flush=True)
        summary["notebooks"].append(entry)
        _save_progress(summary, build, out, started)


def _tail_since(log, begins: int, characters: int = ERROR_TAIL) -> str:
    """The last ``characters`` of what the log received after byte ``begins``, without terminal colour codes
    (some papermill versions colour their tracebacks)."""
    log.flush()
    with open(log.name, "rb") as written:
        written.seek(max(begins, log.tell() - 8 * characters))
        text = re.sub(r"\x1b\[[0-9;]*m", "", written.read().decode(errors="replace"))
    return text[-characters:]


def _environment(precision: str) -> dict:
    """The child's environment: ``auto`` leaves the choice to the device, anything else forces it."""
    env = {k: v for k, v in os.environ.items() if k != FORCE_VARIABLE}
    return env if precision == "auto" else {**env, FORCE_VARIABLE: precision}


def strategy_seconds(left: float) -> float:
    """The cap on each benchmark strategy's timed rounds, so that all :data:`BENCH_STRATEGIES` fit in ``left``
    seconds after the set-up (at least 10 s: the minimum rounds run whatever the cap).

    >>> strategy_seconds(240), strategy_seconds(30)
    (40.0, 10.0)
    """
    return max(10.0, (left - BENCH_SETUP_SECONDS) / BENCH_STRATEGIES)


def _run_benchmarks(build, out, log, summary, deadline, started, minimum: float = 60) -> None:
    """benchmarks/run.py writing straight into ``out/bench`` (each strategy as it finishes comes back even if the
    command is killed), then copied into the archive."""
    left = deadline - time.perf_counter()
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "run.py"
    if left < minimum or not script.exists():
        why = f"{left:.0f} s left, needs {minimum:.0f}" if script.exists() else f"{script} not found"
        summary["bench"] = {"status": "skipped", "reason": why}
    else:
        print(f"  benchmarks: up to {left:.0f} s ...", end=" ", flush=True)
        log.write(b"\n===== benchmarks =====\n"); log.flush()
        size = "smoke" if summary["profile"] == "smoke" else "auto"
        command = [sys.executable, str(script), "--size", size, "--out", str(out / "bench"),
                   "--max-seconds", f"{strategy_seconds(left):.0f}"]
        status, seconds = run_limited(command, left, log, _environment("auto"))
        summary["bench"] = {"status": status, "seconds": round(seconds, 1)}
        if (out / "bench").exists():
            shutil.copytree(out / "bench", build / "bench", dirs_exist_ok=True)
    print(f"benchmarks: {summary['bench']['status']}", flush=True)
    _save_progress(summary, build, out, started)


def gpu_run(out_dir: str | Path, profile: str = "full", budget: float = BUDGET_SECONDS,
            course_budget: float | None = None, precision: str = "auto", notebook_dir: str | Path = "notebooks",
            build_dir: str | Path = "build", part: str = "course") -> dict:
    """Run one ``part`` within ``budget`` seconds: ``course``, the notebooks (most valuable first, within
    ``course_budget``, by default the whole budget); ``bench``, the benchmarks alone; ``all``, the notebooks and
    then the benchmarks on what they leave. ``out_dir`` receives :data:`ARCHIVE`, :data:`SUMMARY` and
    :data:`LOG`, updated after every notebook (and ``bench/``, each strategy as it finishes). ``precision`` other
    than ``auto`` forces that precision (a list such as ``"bf16,fp16"`` is cycled over the notebooks), on the CPU
    too: the rehearsal tries the GPU's paths that way. Returns the summary."""
    check_arguments(profile, budget, course_budget, precision, part)
    out, build = Path(out_dir), Path(build_dir)
    paths = run_order([p for p in notebook_paths(notebook_dir) if not p.name.startswith(TAKEAWAYS)])
    if not paths:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {Path(notebook_dir).resolve()}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(build, ignore_errors=True)
    apply_thread_policy()  # each notebook and the benchmarks run in a child process, which inherits it
    started = time.perf_counter()
    summary = {"profile": profile, "part": part, "precision": precision, "budget_seconds": budget,
               "course_budget_seconds": course_budget or budget, "environment": environment(), "notebooks": []}
    what = "the benchmarks" if part == "bench" else f"{len(paths)} notebooks"
    print(f"GPU run, part {part}: {what}, profile {profile}, precision {precision}, budget {budget:.0f} s, on "
          f"{summary['environment']['device']}", flush=True)
    with open(out / LOG, "ab") as log:
        if part != "bench":
            _run_course_part(paths, build, out, log, summary, started + (course_budget or budget), started)
        if part == "course":
            summary["bench"] = {"status": "skipped", "reason": "part course: the benchmarks run in window 2"}
            _save_progress(summary, build, out, started)
        else:
            _run_benchmarks(build, out, log, summary, started + budget, started)
    print(f"Done in {summary['seconds']:.0f} s: {out / ARCHIVE}, {out / SUMMARY}, {out / LOG}", flush=True)
    return summary


def import_gpu_run(out_dirs, build_dir: str | Path = "build-gpu", docs_dir: str | Path = "docs",
                   bench_dir: str | Path | None = "benchmarks/results", notebook_dir: str | Path = "notebooks",
                   page: str = "results-gpu.md", figures: str = "figures-gpu") -> Path:
    """Unpack what one GPU run returned, or several runs on the same device that each finished part of the course
    (a later one's notebooks replace an earlier one's), into ``build_dir``; run the takeaways notebook over it all;
    publish it as ``docs_dir/page`` with its figures in ``docs_dir/figures``, the CPU page untouched; and copy
    the benchmark results into ``bench_dir``."""
    outs = [Path(out_dirs)] if isinstance(out_dirs, (str, Path)) else [Path(o) for o in out_dirs]
    build = Path(build_dir)
    archives = _archives(outs)
    shutil.rmtree(build, ignore_errors=True)
    timing = _unpack_all(archives, build)
    for out in outs:  # what the benchmarks wrote before a command was killed, beside the archive
        if (out / "bench").is_dir():
            shutil.copytree(out / "bench", build / "bench", dirs_exist_ok=True)
    _run_takeaways(Path(notebook_dir), build, timing)
    (build / "results" / "course_timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    if bench_dir is not None and (build / "bench").exists():
        Path(bench_dir).mkdir(parents=True, exist_ok=True)
        for result in (build / "bench").iterdir():
            shutil.copyfile(result, Path(bench_dir) / result.name)
    return publish_results(build, docs_dir, notebook_dir, page=page, figures=figures)


def _archives(outs: list[Path]) -> list[Path]:
    missing = [str(o / ARCHIVE) for o in outs if not (o / ARCHIVE).exists()]
    if not outs or missing:
        raise FileNotFoundError(f"{', '.join(missing) or 'no folder'}: pass the folder(s) a GPU run wrote ($OUT)")
    return [o / ARCHIVE for o in outs]


def _unpack_all(archives: list[Path], build: Path) -> dict:
    """Extract the archives in order into ``build``; return their course timings merged. Runs on different devices
    are refused: one page shows one device."""
    timing = None
    for archive in archives:
        with tarfile.open(archive) as tar:
            tar.extractall(build, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        part = json.loads((build / "results" / "course_timing.json").read_text())
        if timing is None:
            timing = part
        elif part["environment"]["device"] != timing["environment"]["device"]:
            raise ValueError(f"{archive} ran on {part['environment']['device']}, an earlier folder on "
                             f"{timing['environment']['device']}: import one device's runs at a time")
        else:
            timing["seconds"].update(part["seconds"])
    timing["total_seconds"] = round(sum(timing["seconds"].values()), 1)
    timing["gpu_windows"] = len(archives)
    return timing


def _run_takeaways(notebook_dir: Path, build: Path, timing: dict) -> None:
    """The takeaways notebook over every result that came back. It measures nothing, so its own time is left out
    of the device's time table."""
    from .runner import run_notebook
    for path in notebook_paths(notebook_dir):
        if path.name.startswith(TAKEAWAYS):
            run_notebook(path, build / "notebooks", build / "results", build / "figures", timing["profile"])
            timing["seconds"].pop(path.stem, None)


def carry_bytes(root: str | Path = ".") -> int:
    """What a device command carries: the working tree (tracked files and untracked ones git does not ignore)
    plus ``.carry/``. It must stay under :data:`CARRY_LIMIT`."""
    root = Path(root)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum((root / name).stat().st_size for name in listed if name and (root / name).is_file())
    carry = sum(p.stat().st_size for p in (root / ".carry").rglob("*") if p.is_file())
    return tree + carry


def check_carry(root: str | Path = ".") -> int:
    """Raise when the carry is over the limit; return its size in bytes."""
    size = carry_bytes(root)
    if size >= CARRY_LIMIT:
        raise ValueError(f"the working tree plus .carry/ is {size / MiB:.1f} MiB; a device command carries at "
                         f"most {CARRY_LIMIT / MiB:.0f} MiB: remove large untracked files or shrink .carry/")
    return size


if __name__ == "__main__":
    sys.exit(run_one_notebook(*sys.argv[1:]))
