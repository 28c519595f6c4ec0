"""The thread policy (issue 23): where torch starts, OpenMP threads wait passively for a core; a user's own settings
win; the notebook kernel's spec starts it under the policy. And the course's cell limit and failures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerfreeze.base import runtime
from layerfreeze.base.runtime import THREAD_POLICY_VARIABLE, policy_threads, thread_policy_env
from layerfreeze.course.kernelspec import use_thread_policy
from layerfreeze.course.runner import (CONTENTION_ALLOWANCE, DEFAULT_CELL_TIMEOUT, LONGEST_CELL_SECONDS,
                                       profile_cell_timeout)

ROOT = Path(__file__).resolve().parents[1]
REPORT = "import os, torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'), " \
         "torch.get_num_threads())"


def clean_environment(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                            THREAD_POLICY_VARIABLE)}
    return {**env, "PYTHONPATH": str(ROOT / "lib"), **extra}


def test_the_policy_fills_in_only_what_the_user_left_open():
    policy = thread_policy_env({})
    assert policy == {**runtime.THREAD_POLICY, "OMP_NUM_THREADS": str(policy_threads())}
    assert "OMP_WAIT_POLICY" not in thread_policy_env({"OMP_WAIT_POLICY": "ACTIVE"})
    assert "OMP_NUM_THREADS" not in thread_policy_env({"OMP_NUM_THREADS": "3"})
    assert thread_policy_env({THREAD_POLICY_VARIABLE: "off"}) == {}


def test_a_bad_switch_is_a_clear_error():
    with pytest.raises(ValueError, match="LAYERFREEZE_THREAD_POLICY='passive'; valid: on, off"):
        thread_policy_env({THREAD_POLICY_VARIABLE: "passive"})


def test_the_kernel_spec_starts_the_kernel_under_the_policy(tmp_path):
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (tmp_path / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3"}))
    spec = json.loads(use_thread_policy(tmp_path).read_text())
    assert spec["argv"] == [sys.executable, "-Xfrozen_modules=off", str(Path(runtime.__file__).resolve()),
                            "--launch", "ipykernel_launcher", "-f", "{connection_file}"]
    assert json.loads(use_thread_policy(tmp_path).read_text()) == spec  # twice changes nothing
    (tmp_path / "report.py").write_text(REPORT)
    launch = spec["argv"][:4] + ["report"]  # the same launcher, with a module that reports instead of a kernel
    quiet = subprocess.run(launch, env=clean_environment(PYTHONPATH=str(tmp_path)), capture_output=True,
                           text=True, timeout=300)
    expected = thread_policy_env({})
    assert quiet.stdout.split() == [expected["OMP_WAIT_POLICY"], expected["OMP_NUM_THREADS"],
                                    expected["OMP_NUM_THREADS"]], quiet.stderr[-2000:]
    own = subprocess.run(launch, env=clean_environment(PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1",
                                                       OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True, timeout=300)
    assert own.stdout.split() == ["ACTIVE", "1", "1"], own.stderr[-2000:]


def test_a_kernel_spec_of_another_kind_is_refused(tmp_path):
    (tmp_path / "kernel.json").write_text(json.dumps({"argv": ["R", "--slave", "-f", "{connection_file}"]}))
    with pytest.raises(ValueError, match="does not start `-m ipykernel_launcher`"):
        use_thread_policy(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no kernel.json"):
        use_thread_policy(tmp_path / "missing")


def test_python_m_layerfreeze_sets_the_policy_before_torch_starts():
    code = ("import sys; sys.argv = ['-m']; sys.orig_argv = [sys.executable, '-m', 'layerfreeze', 'course', "
            "'--profile', 'smoke']; import layerfreeze; " + REPORT)
    result = subprocess.run([sys.executable, "-c", code], env=clean_environment(), capture_output=True, text=True,
                            timeout=300)
    threads = str(policy_threads())
    assert result.stdout.split() == [runtime.THREAD_POLICY["OMP_WAIT_POLICY"], threads, threads], result.stderr


def test_the_cell_limit_follows_the_profile_and_the_machine():
    assert profile_cell_timeout("cpu", calibration=0.19) == 2225
    assert profile_cell_timeout("cpu", calibration=0.38) == 2 * 2225
    assert profile_cell_timeout("smoke", calibration=0.01) == 120  # never below two minutes
    assert profile_cell_timeout("full", on_gpu=True) == DEFAULT_CELL_TIMEOUT
    on_cpu = profile_cell_timeout("full", calibration=0.19, on_gpu=False)  # 06's training cell, measured on a CPU
    assert on_cpu == LONGEST_CELL_SECONDS["full"] * CONTENTION_ALLOWANCE > DEFAULT_CELL_TIMEOUT
    assert 120 <= profile_cell_timeout("smoke") < DEFAULT_CELL_TIMEOUT  # measured here: a few seconds
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profile_cell_timeout("fast")


def notebook(folder: Path, name: str, source: str) -> None:
    cells = [{"id": "parameters", "cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None,
              "outputs": [], "source": "profile = 'smoke'\noutput_dir = '.'\nfigure_dir = '.'"},
             {"id": "work", "cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": source}]
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))


@pytest.mark.parametrize("source, flags, message", [
    ("import time\ntime.sleep(60)", ["--cell-timeout", "3"],
     "01_cell.ipynb: a cell ran for more than 3 s and was stopped"),
    ("raise KeyError('no such column')", [], "01_cell.ipynb: cell 3 failed with KeyError: 'no such column'"),
], ids=["timeout", "error"])
def test_a_failing_course_is_one_line_with_what_to_do(tmp_path, source, flags, message):
    notebook(tmp_path / "notebooks", "01_cell.ipynb", source)
    result = subprocess.run([sys.executable, "-m", "layerfreeze", "course", "--profile", "smoke", "--notebook-dir",
                             str(tmp_path / "notebooks"), "--build-dir", str(tmp_path / "build"), *flags],
                            env=clean_environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1  # a run that failed, not a bad argument, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]  # before it: the kernel's own warnings, as in every course run
    assert last.startswith("python -m layerfreeze course: error: ") and message in last, result.stderr[-3000:]
    assert ("--cell-timeout SECONDS" if flags else "Open it to see the traceback") in last


def test_a_policy_that_comes_after_torch_runs_one_thread_in_that_process():
    code = "import torch; from layerfreeze.base.runtime import apply_thread_policy; apply_thread_policy(); " + REPORT
    late = subprocess.run([sys.executable, "-c", code], env=clean_environment(), capture_output=True, text=True,
                          timeout=300)
    assert late.stdout.split() == [runtime.THREAD_POLICY["OMP_WAIT_POLICY"], str(policy_threads()),
                                   str(runtime.LATE_THREADS)], late.stderr[-2000:]
    own = subprocess.run([sys.executable, "-c", code], env=clean_environment(OMP_NUM_THREADS="2"),
                         capture_output=True, text=True, timeout=300)
    assert own.stdout.split()[1:] == ["2", "2"], own.stderr[-2000:]


def test_a_kernel_started_from_the_rewritten_spec_runs_a_notebook_under_the_policy(tmp_path, monkeypatch):
    import shutil

    from jupyter_client.kernelspec import KernelSpecManager

    from layerfreeze.course.runner import run_notebook

    installed = KernelSpecManager().get_kernel_spec("python3").resource_dir
    shutil.copytree(installed, tmp_path / "jupyter" / "kernels" / "python3")
    use_thread_policy(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):  # what the launcher, and nothing else, sets
        monkeypatch.delenv(name, raising=False)
    report = tmp_path / "threads.txt"
    notebook(tmp_path / "notebooks", "01_threads.ipynb",
             f"import os\nopen({str(report)!r}, 'w').write(os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    run_notebook(tmp_path / "notebooks" / "01_threads.ipynb", tmp_path / "out", tmp_path, tmp_path, "smoke", 600)
    assert report.read_text() == runtime.THREAD_POLICY["OMP_WAIT_POLICY"]


def test_the_course_shows_each_notebooks_progress_while_it_runs(tmp_path):
    """Issue 40: cells done out of cells and the elapsed time, on the console, while the kernel's own messages go to
    the notebook's log."""
    notebook(tmp_path / "notebooks", "01_cell.ipynb", "import sys; print('kernel says', file=sys.stderr)")
    result = subprocess.run([sys.executable, "-m", "layerfreeze", "course", "--profile", "smoke", "--notebook-dir",
                             str(tmp_path / "notebooks"), "--build-dir", str(tmp_path / "build")],
                            env=clean_environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/1] 01_cell.ipynb" in result.stdout
    assert "3/3 [" in result.stderr, result.stderr[-2000:]  # the parameters, papermill's injected ones, the work
    assert "kernel says" not in result.stderr
