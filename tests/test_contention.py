"""The contention benchmark and the workshop rehearsal (issue 23): their arithmetic and tables on made-up phases.
The measurements themselves take minutes of the whole machine: `make bench` runs them, never the tests."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


contention, workshop = load("contention"), load("workshop")


def windows(quiet, beside_1, beside_2):
    return [dict(round=r, load=load, seconds=s) for r, row in enumerate(zip(quiet, beside_1, beside_2))
            for load, s in enumerate(row)]


def test_ratios_are_per_round_then_their_median_and_interval():
    summary = contention.summarise(windows([1.0, 2.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.5, 3.0, 2.0],
                                           [4.0, 8.0, 3.0, 3.5, 5.0]), (0, 1, 2))
    assert summary["quiet_seconds"]["median"] == 1.0
    assert summary["beside_1"]["median"] == 2.0  # ratios 2, 1, 2.5, 3, 2
    assert (summary["beside_1"]["low"], summary["beside_1"]["high"]) == (1.0, 3.0)
    assert summary["beside_2"]["median"] == 4.0 and summary["beside_2"]["coverage"] >= 0.9


def test_a_phase_without_steps_leaves_its_round_out():
    phases = windows([1.0, 1.0], [2.0, None], [3.0, 3.0])
    assert contention.summarise(phases, (0, 1, 2))["beside_1"]["count"] == 1


def test_the_table_shows_the_quiet_cost_the_goals_and_the_load():
    row = dict(candidate="default", settings={}, load_average={"start": [9.5], "end": [11.0]},
               summary=contention.summarise(windows([1.0] * 3, [2.0] * 3, [5.0] * 3), (0, 1, 2)))
    passive = dict(row, candidate="passive", settings={"OMP_WAIT_POLICY": "PASSIVE"},
                   summary=contention.summarise(windows([1.2] * 3, [1.2] * 3, [2.4] * 3), (0, 1, 2)))
    table = contention.markdown(dict(level="step", machine="2 cores", rounds=3, loads=(0, 1, 2), what="A step",
                                     note="", results=[row, passive]))
    assert "beside 1 (goal <= 2.5x)" in table and "beside 2 (goal <= 4.0x)" in table
    assert "| passive | OMP_WAIT_POLICY=PASSIVE | 1.20 s [1.20-1.20] | 1.20x | 1.00x [1.00-1.00] | 2.00x" in table
    assert "| 9.5-11.0 |" in table


@pytest.mark.parametrize("argv, message", [(["--rounds", "0"], "--rounds must be at least 1"),
                                           (["--loads", "1", "2"], "--loads must start with 0"),
                                           (["--steps", "1"], "--steps must be at least 2")])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        contention.parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_notebook_level_compares_before_and_after_the_policy_by_default():
    args = contention.parse_args(["--level", "notebook"])
    assert args.candidates == ["default", "kit policy"] and args.rounds == 3 and args.profile == "cpu"
    assert contention.candidate_environment(contention.CANDIDATES["default"])["LAYERFREEZE_THREAD_POLICY"] == "off"
    assert "OMP_WAIT_POLICY" in contention.candidate_environment(contention.CANDIDATES["kit policy"])


def test_the_workshop_table_says_whether_every_course_finished():
    result = dict(learners=2, profile="smoke", only=["01"], cores=2, started="now", seconds=[60.0, 90.0],
                  exit_codes=[0, 1], load_average={"start": [1.0], "end": [2.0]},
                  memory_mib={"before": 1000, "peak": 3000, "added_per_learner": 1000})
    table = workshop.markdown(result)
    assert "NOT every course finished (exit codes [0, 1])" in table and "| 1 | 1.5 min |" in table
    assert "1000 MiB more per learner" in table
    assert workshop.memory_in_use() > 0


def test_the_workshop_keeps_each_learners_folder_when_asked(tmp_path, monkeypatch):
    import subprocess
    import sys

    def start(count, profile, only, folder):  # stand-ins for the courses: each writes its build folder and a log
        return [subprocess.Popen([sys.executable, "-c", f"import pathlib; p = pathlib.Path({str(folder)!r}) / "
                                  f"'learner{i}'; p.mkdir(); (p / 'done').write_text('{profile}')"],
                                 stdout=open(folder / f"learner{i}.log", "w")) for i in range(count)]

    monkeypatch.setattr(workshop, "start_learners", start)
    result = workshop.rehearse(2, "smoke", [], keep=str(tmp_path / "kept"))
    assert result["exit_codes"] == [0, 0] and len(result["seconds"]) == 2
    assert (tmp_path / "kept" / "learner1" / "done").read_text() == "smoke"
    assert (tmp_path / "kept" / "learner0.log").exists()
