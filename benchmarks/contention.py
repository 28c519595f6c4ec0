"""Contention: how much slower the course gets beside other equal jobs, under each thread policy.

Two levels, each quiet and beside one and two **equal jobs** (the same work under the same policy, as in a
workshop where every learner runs the kit):

* ``step``: one MiniLM training step (batch 16 x 32 tokens, AdamW). Every worker is its own process, started
  with the candidate's environment (``OMP_WAIT_POLICY`` must be set before libgomp starts, i.e. before torch is
  imported) and training in a loop; the load workers are paused (SIGSTOP) and resumed (SIGCONT) to switch
  between quiet and loaded phases, so a round takes seconds. Each phase's step time is the median of the
  measured worker's steps that lie wholly inside it.
* ``notebook``: one whole notebook (02, ``--profile``) run by the course runner, beside one and two loops of the
  same notebook.

Each round measures quiet, beside one and beside two; each ratio (loaded / quiet) is the median of the per-round
ratios with a 90% confidence interval for that median (``Spread``: 5 rounds or more for 90%). The machine is
rarely truly quiet: every measurement records the load average at its start and end.

    python benchmarks/contention.py                      # step level, every candidate: a few minutes
    python benchmarks/contention.py --level notebook     # the whole machine for 20-40 minutes
    python benchmarks/contention.py --level notebook --profile smoke --rounds 1   # a dry run of the tooling

Writes ``benchmarks/results/contention-<level>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from layerfreeze.base.runtime import THREAD_POLICY_VARIABLE, thread_policy_env  # noqa: E402
from layerfreeze.study.timing import Spread  # noqa: E402

OFF = {THREAD_POLICY_VARIABLE: "off"}  # the kit's policy switched off: torch's own defaults
CANDIDATES = {
    "default": dict(OFF),
    "passive": dict(OFF, OMP_WAIT_POLICY="PASSIVE"),
    "one thread": dict(OFF, OMP_NUM_THREADS="1"),
    "one thread, passive": dict(OFF, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"),
    "kit policy": {},  # whatever layerfreeze.base.runtime chooses, as the course runs it
}
LEVELS = ("step", "notebook")
GOALS = {1: 2.5, 2: 4.0}  # loaded / quiet, at most (issue 23)
POLICY_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", THREAD_POLICY_VARIABLE)


def candidate_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment a candidate's processes start with: the caller's, without its thread settings, plus the
    candidate's; the kit's policy fills in what the candidate leaves open (unless it is switched off)."""
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}
    env.update(overrides, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "lib"), env.get("PYTHONPATH")])))
    return {**env, **thread_policy_env(env)}


def step_worker(log_path: str) -> None:
    """Train MiniLM one step at a time forever, appending each step's start and end (monotonic clock) to a file."""
    import torch

    from layerfreeze.base.models import load_model

    model, _ = load_model("minilm", num_labels=2)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 20000, (16, 32), generator=generator)
    mask, labels = torch.ones_like(input_ids), torch.randint(0, 2, (16,), generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    with open(log_path, "a") as log:
        while True:
            start = time.monotonic()
            model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            log.write(f"{start} {time.monotonic()} {torch.get_num_threads()}\n")
            log.flush()


def read_steps(log_path: Path) -> list[tuple[float, float]]:
    lines = log_path.read_text().split("\n") if log_path.exists() else []
    return [(float(a), float(b)) for a, b, *_ in (line.split() for line in lines if line.strip())]


def start_step_workers(env: dict[str, str], count: int, folder: Path) -> list[tuple[subprocess.Popen, Path]]:
    workers = []
    for i in range(count):
        log = folder / f"worker{i}.log"
        process = subprocess.Popen([sys.executable, __file__, "--worker", str(log)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        workers.append((process, log))
    return workers


def wait_until_training(workers, steps: int = 3, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while any(len(read_steps(log)) < steps for _, log in workers):
        for process, _ in workers:
            if process.poll() is not None:
                raise RuntimeError(f"a step worker ended early: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the step workers did not start training within {timeout:.0f} s")
        time.sleep(0.5)


def wait_for_steps(log: Path, start: float, steps: int, cap: float) -> float:
    """Wait until the measured worker has run ``steps`` whole steps since ``start``, or ``cap`` seconds passed."""
    while time.monotonic() - start < cap:
        if sum(a >= start for a, _ in read_steps(log)) > steps:  # the last one counted has ended: a step began after
            break
        time.sleep(0.2)
    return time.monotonic()


def run_step_phases(workers, rounds: int, seconds: float, loads: tuple[int, ...], steps: int) -> list[dict]:
    """Rounds of phases: for each load, resume that many load workers, measure, pause them again."""
    measured, loaders = workers[0], [process for process, _ in workers[1:]]
    for process in loaders:
        process.send_signal(signal.SIGSTOP)
    windows = []
    for round_index in range(rounds):
        for load in loads:
            for process in loaders[:load]:
                process.send_signal(signal.SIGCONT)
            time.sleep(0.5)  # the resumed workers finish the step they were paused in
            start = time.monotonic()
            end = wait_for_steps(measured[1], start, steps, cap=seconds * (1 + load))
            windows.append(dict(round=round_index, load=load, start=start, end=end))
            for process in loaders[:load]:
                process.send_signal(signal.SIGSTOP)
    measured_steps = read_steps(measured[1])
    for window in windows:
        inside = [b - a for a, b in measured_steps if a >= window["start"] and b <= window["end"]]
        window.update(steps=len(inside), seconds=statistics.median(inside) if len(inside) >= 2 else None)
    return windows


def stop_workers(workers) -> None:
    for process, _ in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()


def measure_steps(env: dict[str, str], rounds: int, seconds: float, loads: tuple[int, ...],
                  steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        workers = start_step_workers(env, 1 + max(loads), Path(folder))
        try:
            wait_until_training(workers)
            return run_step_phases(workers, rounds, seconds, loads, steps)
        finally:
            stop_workers(workers)


def run_notebook_once(env: dict[str, str], build_dir: Path, profile: str, notebook: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "layerfreeze", "course", "--profile", profile, "--only", notebook,
                    "--build-dir", str(build_dir)], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def start_notebook_loops(env, count: int, folder: Path, profile: str, notebook: str) -> list[subprocess.Popen]:
    command = (f"while true; do {sys.executable} -m layerfreeze course --profile {profile} --only {notebook} "
               "--build-dir \"$BUILD\" >/dev/null 2>&1; done")
    return [subprocess.Popen(["bash", "-c", command], env=dict(env, BUILD=str(folder / f"load{i}")), cwd=ROOT,
                             start_new_session=True) for i in range(count)]


def measure_notebook(env, rounds: int, loads: tuple[int, ...], profile: str, notebook: str) -> list[dict]:
    """Each phase: start ``load`` loops of the notebook, run it once beside them, stop them."""
    windows = []
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(rounds):
            for load in loads:
                loops = start_notebook_loops(env, load, Path(folder), profile, notebook)
                try:
                    seconds = run_notebook_once(env, Path(folder) / "measured", profile, notebook)
                finally:
                    for loop in loops:
                        os.killpg(loop.pid, signal.SIGKILL)
                        loop.wait()
                windows.append(dict(round=round_index, load=load, seconds=seconds))
    return windows


def summarise(windows: list[dict], loads: tuple[int, ...]) -> dict:
    """Quiet seconds and each load's ratio to quiet: per-round values, then their median and 90% interval."""
    by_round: dict[int, dict[int, float]] = {}
    for window in windows:
        if window["seconds"] is not None:
            by_round.setdefault(window["round"], {})[window["load"]] = window["seconds"]
    quiet = [r[0] for r in by_round.values() if 0 in r]
    summary = {"quiet_seconds": _spread(quiet)}
    for load in loads[1:]:
        ratios = [r[load] / r[0] for r in by_round.values() if 0 in r and load in r]
        summary[f"beside_{load}"] = _spread(ratios)
        summary[f"beside_{load}_seconds"] = _spread([r[load] for r in by_round.values() if load in r])
    return summary


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    spread = Spread.of(values)
    return dict(median=spread.median, low=spread.low, high=spread.high, count=spread.count,
                coverage=round(spread.coverage, 3))


def measure_candidate(name: str, args) -> dict:
    env = candidate_environment(CANDIDATES[name])
    load_start = os.getloadavg()
    started = time.time()
    if args.level == "step":
        windows = measure_steps(env, args.rounds, args.seconds, args.loads, args.steps)
    else:
        windows = measure_notebook(env, args.rounds, args.loads, args.profile, args.notebook)
    settings = {k: env[k] for k in POLICY_VARIABLES if k in env}
    return dict(candidate=name, settings=settings, started=time.strftime("%H:%M:%S", time.gmtime(started)),
                wall_seconds=round(time.time() - started, 1), load_average={"start": load_start,
                                                                           "end": os.getloadavg()},
                windows=windows, summary=summarise(windows, args.loads))


def _cell(spread: dict | None, unit: str = "x") -> str:
    if spread is None:
        return "n/a"
    return f"{spread['median']:.2f}{unit} [{spread['low']:.2f}-{spread['high']:.2f}]"


def _load_range(row: dict) -> tuple[float, float]:
    start, end = row["load_average"]["start"][0], row["load_average"]["end"][0]
    return min(start, end), max(start, end)


def _quiet_cost(row: dict, default: dict | None) -> str:
    """This row's quiet step against the default's, where their load averages overlapped (else the other jobs on
    the machine, not the settings, would make most of the difference)."""
    quiet = row["summary"]["quiet_seconds"]
    if not quiet or not default or not default["summary"]["quiet_seconds"]:
        return "n/a"
    (low, high), (default_low, default_high) = _load_range(row), _load_range(default)
    if low > default_high or default_low > high:
        return "n/a (other load)"
    return f"{quiet['median'] / default['summary']['quiet_seconds']['median']:.2f}x"


def markdown(payload: dict) -> str:
    loads = payload["loads"][1:]
    default = next((r for r in payload["results"] if r["candidate"].split(" (")[0] == "default"
                    and r["summary"]["quiet_seconds"]), None)
    header = ("| candidate | settings | quiet s | quiet cost vs default | "
              + " | ".join(f"beside {n} (goal <= {GOALS.get(n, '-')}x)" for n in loads) + " | load avg start-end |")
    lines = [f"# Contention ({payload['level']} level, {payload['machine']})", "",
             f"{payload['what']}. Ratios are loaded / quiet time: the median of {payload['rounds']} per-round "
             "ratios [90% confidence interval; with fewer than 5 rounds, the full range]. The quiet cost is shown "
             "where the load average overlapped the default run's. " + payload["note"], "",
             header, "|" + "---|" * (5 + len(loads))]
    for row in payload["results"]:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "-"
        load = row["load_average"]
        lines.append(f"| {row['candidate']} | {settings} | {_cell(row['summary']['quiet_seconds'], ' s')} | "
                     f"{_quiet_cost(row, default)} | "
                     + " | ".join(_cell(row["summary"].get(f"beside_{n}")) for n in loads)
                     + f" | {load['start'][0]:.1f}-{load['end'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=LEVELS, default="step")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=None,
                        help="default: every candidate at the step level; default and kit policy for notebooks")
    parser.add_argument("--rounds", type=int, default=None, help="default: 5 (step), 3 (notebook)")
    parser.add_argument("--steps", type=int, default=5, help="step level: whole steps timed in each phase")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="step level: a quiet phase's cap in seconds (x2 beside one job, x3 beside two)")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="cpu", help="notebook level: the course profile")
    parser.add_argument("--notebook", default="02", help="notebook level: which notebook")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--stem", default=None, help="file name without suffix (default: contention-<level>)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.steps < 2:
        parser.error(f"--steps must be at least 2, got {args.steps}")
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    if args.loads[0] != 0 or sorted(set(args.loads)) != args.loads:
        parser.error(f"--loads must start with 0 (quiet) and rise, got {args.loads}")
    args.loads = tuple(args.loads)
    args.rounds = args.rounds or (5 if args.level == "step" else 3)
    args.candidates = args.candidates or (list(CANDIDATES) if args.level == "step" else ["default", "kit policy"])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped, it still stops its workers (finally blocks)
    if args.worker:
        step_worker(args.worker)
        return 0
    what = ("One MiniLM training step (batch 16 x 32 tokens, AdamW), median of the steps in each phase"
            if args.level == "step" else f"Notebook {args.notebook} (profile {args.profile}), whole run")
    payload = dict(level=args.level, machine=f"{os.cpu_count()} cores", rounds=args.rounds, loads=args.loads,
                   what=what, results=[],
                   note="The machine is shared: the load average at each candidate's start and end is shown.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or f"contention-{args.level}"
    for name in args.candidates:
        print(f"{name} ...", flush=True)
        payload["results"].append(measure_candidate(name, args))
        (out / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")  # a run cut short keeps its rows
        (out / f"{stem}.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
