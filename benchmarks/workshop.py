"""Workshop rehearsal: several learners' courses started together on one machine, as on a shared server.

Each learner is ``python -m layerfreeze course --profile P`` in its own build folder, all started at once under the
kit's thread policy. It records each course's wall time and exit status, the load average at the start and end,
and the machine's memory in use at its highest (``MemTotal - MemAvailable`` from ``/proc/meminfo``, sampled every
second; other jobs on the machine count too, which is why the memory in use before the start is recorded).

    python benchmarks/workshop.py                                  # 3 learners, cpu profile: the whole machine
    python benchmarks/workshop.py --learners 2 --profile smoke --only 01   # a dry run of the tooling
    python benchmarks/workshop.py --keep /tmp/workshop                     # keep each learner's build folder

Writes ``benchmarks/results/workshop-<learners>x<profile>.json`` and ``.md``; ``docs/instructor_guide.md`` derives
its sizing rule from them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 2 ** 20


def memory_in_use() -> int:
    """Bytes in use on the whole machine: MemTotal - MemAvailable."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    kib = {name: int(fields[name].split()[0]) for name in ("MemTotal", "MemAvailable")}
    return (kib["MemTotal"] - kib["MemAvailable"]) * 1024


def start_learners(count: int, profile: str, only: list[str], folder: Path) -> list[subprocess.Popen]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")])))
    learners = []
    for i in range(count):
        command = [sys.executable, "-m", "layerfreeze", "course", "--profile", profile,
                   "--build-dir", str(folder / f"learner{i}")] + (["--only", *only] if only else [])
        log = open(folder / f"learner{i}.log", "w")
        learners.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return learners


def watch(learners: list[subprocess.Popen], started: float) -> tuple[list[float | None], int]:
    """Wait for every learner; returns each one's wall seconds and the highest memory in use meanwhile."""
    finished: list[float | None] = [None] * len(learners)
    peak = memory_in_use()
    while any(f is None for f in finished):
        for i, learner in enumerate(learners):
            if finished[i] is None and learner.poll() is not None:
                finished[i] = time.monotonic() - started
        peak = max(peak, memory_in_use())
        time.sleep(1)
    return finished, peak


def rehearse(learners: int, profile: str, only: list[str], keep: str | None = None) -> dict:
    """Start the learners together and watch them; ``keep``: a folder for their build folders and logs, which are
    otherwise deleted (each ``learner<i>/`` is a whole course's ``build/``: its results can be published)."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(keep) if keep is not None else tempfile.TemporaryDirectory()) as folder:
        load_start, memory_before = os.getloadavg(), memory_in_use()
        started, started_at = time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        processes = start_learners(learners, profile, only, Path(folder))
        seconds, peak = watch(processes, started)
        tails = [(Path(folder) / f"learner{i}.log").read_text()[-600:] for i in range(learners)]
    return dict(learners=learners, profile=profile, only=only, cores=os.cpu_count(),
                started=started_at,
                load_average={"start": load_start, "end": os.getloadavg()},
                seconds=[round(s, 1) for s in seconds], exit_codes=[p.returncode for p in processes],
                memory_mib={"before": round(memory_before / MiB), "peak": round(peak / MiB),
                            "added_per_learner": round((peak - memory_before) / MiB / learners)},
                output_tails=tails)


def markdown(result: dict) -> str:
    ok = all(code == 0 for code in result["exit_codes"])
    load = result["load_average"]
    memory = result["memory_mib"]
    return "\n".join([
        f"# Workshop rehearsal: {result['learners']} learners, profile {result['profile']}, "
        f"{result['cores']} cores", "",
        f"Started {result['started']}; {'every course finished' if ok else 'NOT every course finished'} "
        f"(exit codes {result['exit_codes']}).", "",
        "| learner | wall time |", "|---|---|",
        *[f"| {i} | {s / 60:.1f} min |" if s is not None else f"| {i} | n/a |"
          for i, s in enumerate(result["seconds"])], "",
        f"Memory in use on the machine: {memory['before']} MiB before, {memory['peak']} MiB at the highest "
        f"({memory['added_per_learner']} MiB more per learner; other jobs on the machine count too). "
        f"Load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end.", ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=3)
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu"])
    parser.add_argument("--only", nargs="+", default=[], metavar="PREFIX", help="notebook prefixes (a dry run)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--keep", metavar="DIR", help="keep each learner's build folder and log in DIR")
    args = parser.parse_args(argv)
    if args.learners < 1:
        parser.error(f"--learners must be at least 1, got {args.learners}")
    result = rehearse(args.learners, args.profile, args.only, args.keep)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"workshop-{args.learners}x{args.profile}{'-only-' + '-'.join(args.only) if args.only else ''}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(code == 0 for code in result["exit_codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
