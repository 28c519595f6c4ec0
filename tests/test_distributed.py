"""Two CPU processes (gloo) under torchrun or accelerate: the command line fine-tunes with gradual unfreezing, and
every parameter must end identical on both ranks; under FSDP2 (``--fsdp``, ``fit(fsdp=True)``) gradual unfreezing
and LISA must also leave frozen parameters bit-identical to their start, keep optimizer state for trainable tensors
only, and hold per rank the bytes that ``estimate_memory(world_size=2)`` predicts."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layerfreeze.core.memory import estimate_memory, sharded_bytes
from layerfreeze.base.models import tiny_model
from layerfreeze.base.runtime import fsdp_available
from layerfreeze.core.training import fit

HERE = Path(__file__).resolve().parent
ARGS = ["train", "--model", "tiny:bert", "--schedule", "gradual", "--every", "2", "--train-limit", "64",
        "--eval-limit", "32", "--epochs", "2", "--batch-size", "8", "--discriminative", "2.6", "--lr", "1e-3"]
needs_fsdp2 = pytest.mark.skipif(not fsdp_available(), reason="FSDP2's fully_shard needs torch 2.6 or later")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def launch(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if result.returncode != 0:  # a launch can fail on a busy machine (seen rarely here); one more try, then report
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # the progress bars fill stderr: show the other lines, where an error would be
    assert result.returncode == 0, "\n".join(l for l in result.stderr.splitlines() if "it/s" not in l)[-4000:]


def torchrun(target, output, tmp_path):
    launch([*TORCHRUN, *target, *ARGS, "--output", str(output)], tmp_path)
    return json.loads(output.read_text())


@pytest.mark.slow
def test_unfreezing_under_ddp_keeps_replicas_identical(tmp_path):
    metrics = torchrun(["-m", "layerfreeze"], tmp_path / "ddp.json", tmp_path)
    assert metrics["world_size"] == 2
    assert [groups for _, groups in metrics["phases"]][-1] == ["block.1", "block.2", "block.3", "head"]
    assert metrics["parameters_compared"] > 50
    assert metrics["replicas_identical"], metrics["differing_parameters"]


@pytest.mark.slow
def test_the_check_catches_ddp_wrapped_only_once(tmp_path):
    """DDP registers only the parameters that need gradients when it is built: without re-wrapping, groups that
    unfreeze later are never all-reduced and the ranks drift apart."""
    metrics = torchrun([str(HERE / "ddp_wrap_once.py")], tmp_path / "once.json", tmp_path)
    assert not metrics["replicas_identical"]
    assert any(name.startswith("bert.encoder.layer.1") for name in metrics["differing_parameters"])


# --- FSDP2 ---------------------------------------------------------------------------------------------------------

def rank_reports(tmp_path: Path, name: str = "report") -> list[dict]:
    """What each rank of tests/fsdp_run.py wrote, after the checks that both ranks agree."""
    reports = [json.loads((tmp_path / f"{name}.rank{rank}.json").read_text()) for rank in (0, 1)]
    first, second = reports
    assert first["world_size"] == 2 and first["sharded"] and second["sharded"]
    for key in ("digests", "phases", "trainable", "optimizer_state", "norms"):
        assert first[key] == second[key], f"the ranks differ in {key}"
    return reports


def check_fsdp_run(report: dict) -> None:
    """Frozen parameters bit-identical to their start (and every trained one moved), optimizer state and gradient
    reduction for the trainable tensors only, and the bytes this rank holds within 10% of the sharded estimate."""
    ever_trained = {group for _, groups in report["phases"] for group in groups}
    trained = {name for name, group in report["groups"].items() if group in ever_trained}
    never_trained = set(report["groups"]) - trained
    assert never_trained, "the run should leave some group frozen throughout"
    assert set(report["moved"]) == trained, (sorted(set(report["moved"]) ^ trained))
    assert report["optimizer_state"] == report["trainable"]
    assert never_trained.isdisjoint(report["optimizer_state"])
    # a backward pass reduce-scatters the trainable tensors' gradients (padded to a multiple of the ranks), no others
    assert report["trainable_elements"] <= report["reduced_elements"] <= 1.01 * report["trainable_elements"]
    for kind, held in report["held"].items():
        assert held > 0 and abs(report["estimated"][kind] - held) <= 0.1 * held, (kind, held, report["estimated"])


@pytest.mark.slow
@needs_fsdp2
def test_gradual_unfreezing_under_fsdp2(tmp_path):
    launch([*TORCHRUN, str(HERE / "fsdp_run.py"), str(tmp_path / "report"), *ARGS, "--fsdp",
            "--output", str(tmp_path / "fsdp.json")], tmp_path)
    reports = rank_reports(tmp_path)
    assert [groups for _, groups in reports[0]["phases"]][-1] == ["block.1", "block.2", "block.3", "head"]
    for report in reports:
        check_fsdp_run(report)
    metrics = json.loads((tmp_path / "fsdp.json").read_text())
    assert metrics["world_size"] == 2 and metrics["replicas_identical"]


@pytest.mark.slow
@needs_fsdp2
def test_lisa_and_adaptive_freezing_under_fsdp2_release_the_state_of_what_stops_training(tmp_path):
    launch([*TORCHRUN, str(HERE / "fsdp_run.py"), str(tmp_path / "report"), "schedules"], tmp_path)
    for name in ("report-lisa", "report-adaptive"):
        reports = rank_reports(tmp_path, name)
        phases = [tuple(groups) for _, groups in reports[0]["phases"]]
        assert len(set(phases)) > 1, f"{name}: the trainable set should change during the run"
        for report in reports:
            check_fsdp_run(report)
    assert phases[0] == ("block.1", "block.2", "block.3", "head") and "block.1" not in phases[-1]  # adaptive froze
    assert reports[0]["norms"]["block.1"]  # measured on the DTensors: the whole tensor's norm, the same on each rank


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@needs_fsdp2
def test_accelerate_launch_runs_the_same_fsdp2_command(tmp_path):
    """``accelerate launch --multi_gpu`` starts two processes through torchrun, on the CPU too (gloo); with
    ``--cpu`` it would start only one."""
    launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(HERE / "fsdp_run.py"), str(tmp_path / "report"), *ARGS,
            "--fsdp"], tmp_path)
    for report in rank_reports(tmp_path):
        check_fsdp_run(report)


# --- one process: the checks and the estimate ----------------------------------------------------------------------

@needs_fsdp2
def test_fit_refuses_fsdp_in_one_process():
    data = (torch.randint(5, 99, (8, 6)), torch.ones(8, 6, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="fsdp=True shards the model over several processes.*torchrun"):
        fit(tiny_model("bert"), data, epochs=1, batch_size=4, fsdp=True, progress=False)
    with pytest.raises(ValueError, match="fsdp must be True or False"):
        fit(tiny_model("bert"), data, epochs=1, batch_size=4, fsdp="yes", progress=False)


@needs_fsdp2
def test_the_command_refuses_fsdp_in_one_process_before_loading(tmp_path):
    command = [sys.executable, "-m", "layerfreeze", "train", "--model", "tiny:bert", "--fsdp"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "fsdp=True shards the model" in result.stderr, result.stderr[-2000:]


def test_the_sharded_estimate_divides_weights_gradients_and_state_but_not_activations():
    model = tiny_model("bert")
    whole, halves = estimate_memory(model, 8, 16), estimate_memory(model, 8, 16, world_size=2)
    assert halves.activations == whole.activations
    for kind in ("weights_trainable", "gradients", "optimizer_state"):
        assert whole.__dict__[kind] / 2 <= halves.__dict__[kind] <= whole.__dict__[kind] / 2 * 1.01
    assert sharded_bytes([torch.zeros(5, 3)], 2) == 3 * 3 * 4  # FSDP2 pads 5 rows to 6: 3 per rank
    with pytest.raises(ValueError, match="world_size must be a whole number of ranks"):
        estimate_memory(model, world_size=0)
