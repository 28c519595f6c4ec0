"""Where and how code runs: seeding, the device, mixed precision, the distributed context, and eval mode.

The lowest layer of the library: it imports nothing else from it, and torch only inside its functions, so that the
command line can read :data:`PRECISIONS` before torch loads.

Mixed precision: bf16 on CUDA cards that support it, fp16 with a gradient scaler on older ones, fp32 on the CPU.
``auto`` follows the environment variable ``LAYERFREEZE_PRECISION`` when it is set: the GPU rehearsal
(``python -m layerfreeze gpu-run --precision fp16``) uses it to try the GPU's bf16 and fp16 paths on the CPU.

>>> resolve_precision("auto", pick_device()) in PRECISIONS
True
"""

from __future__ import annotations

import os
import platform
import random
import sys
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Iterator, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
THREAD_POLICY_VARIABLE = "LAYERFREEZE_THREAD_POLICY"  # "off": torch's own thread defaults
THREAD_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}  # and OMP_NUM_THREADS from policy_threads()
LATE_THREADS = 1  # torch's threads where the policy comes after torch started (see apply_thread_policy)
MiB = 2 ** 20  # bytes
FORCE_VARIABLE = "LAYERFREEZE_PRECISION"


# --- seeding and the device ----------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (when installed) and torch, on every device."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2 ** 32)
    except ImportError:
        pass


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device(device: torch.device | None = None) -> str:
    """A one-line description of where the notebook runs, e.g. ``'cuda: NVIDIA H100 80GB HBM3'``."""
    import torch

    device = device or pick_device()
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block and give every module back the mode it had (train or eval):
    a model in train mode whose frozen groups ``eval_frozen=True`` holds in eval mode comes back that way.

    >>> from torch import nn
    >>> layer = nn.Dropout().train()
    >>> with eval_mode(layer):
    ...     layer.training
    False
    >>> layer.training
    True
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


# --- mixed precision -----------------------------------------------------------------------------------------------

def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA card that supports it, fp16 on older cards (Colab's T4), fp32 on the CPU.

    >>> import torch
    >>> resolve_precision("auto", torch.device("cpu"))
    'fp32'
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    forced = os.environ.get(FORCE_VARIABLE, "auto")
    if forced != "auto" and precision in ("auto", forced):  # also when fit hands its resolved choice on
        if forced not in PRECISIONS:
            raise ValueError(f"{FORCE_VARIABLE}={forced!r}; valid: {', '.join(PRECISIONS)}")
        return forced
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"precision={precision!r} is for CUDA; on {device.type} use 'fp32' or 'auto'")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision (none for fp32)."""
    import torch

    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs its loss scaled so small gradients do not underflow; bf16 and fp32 do not."""
    import torch

    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


# --- several processes ---------------------------------------------------------------------------------------------

def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group when launched by ``torchrun`` / ``accelerate launch``.

    >>> distributed_context()  # one process
    (0, 1)
    """
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def process_device(rank: int) -> torch.device:
    """The device of process ``rank``: its own GPU in turn where there are GPUs, else the CPU."""
    import torch

    return torch.device(f"cuda:{rank % torch.cuda.device_count()}") if torch.cuda.is_available() else \
        torch.device("cpu")


def check_fsdp(fsdp, world_size: int) -> None:
    """FSDP needs several processes: refuse ``fsdp=True`` in one, naming the launchers that start more.

    >>> check_fsdp(False, 1)
    """
    import torch

    if not isinstance(fsdp, bool):
        raise ValueError(f"fsdp must be True or False; got {fsdp!r}")
    if fsdp and not fsdp_available():
        raise ValueError(f"fsdp=True needs FSDP2 (torch.distributed.fsdp.fully_shard, torch 2.6 or later); this is "
                         f"torch {torch.__version__}: upgrade torch, or train without fsdp (DDP)")
    if fsdp and world_size == 1:
        raise ValueError("fsdp=True shards the model over several processes, but this is one: launch with "
                         "torchrun --nproc_per_node N (or accelerate launch --multi_gpu --num_processes N)")


def fsdp_available() -> bool:
    """Whether this torch has FSDP2's public ``torch.distributed.fsdp.fully_shard`` (torch 2.6 and later)."""
    import torch.distributed as dist

    if not dist.is_available():
        return False
    import torch.distributed.fsdp as fsdp

    return hasattr(fsdp, "fully_shard")


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 (``torch.distributed.fsdp.fully_shard``) has sharded ``model``: its parameters are then
    DTensors, each rank holding a slice of every tensor.

    >>> from torch import nn
    >>> is_sharded(nn.Linear(2, 2))
    False
    """
    return any(hasattr(p, "placements") for p in model.parameters())  # a DTensor's; no import on older torch


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a sharded one (a DTensor under FSDP2) gathered from every rank, a plain one as it is.
    Gathering is a collective: under FSDP2 every rank must call it, in the same order.

    >>> import torch
    >>> full_tensor(torch.ones(2)).tolist()
    [1.0, 1.0]
    """
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor`` this rank holds: its own slice of a DTensor, all of a plain tensor.

    >>> import torch
    >>> local_bytes(torch.ones(3))
    12
    """
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


# --- threads beside other jobs -------------------------------------------------------------------------------------

def policy_threads(cpu_count: int | None = None) -> int:
    """How many threads torch runs under the kit's policy: one per core this process may use (``taskset`` and
    cpusets count; a container's CPU quota does not, which is why a JupyterHub sets ``OMP_NUM_THREADS`` itself).

    >>> policy_threads(4)
    4
    """
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpu_count or 1)


def thread_policy_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread settings the kit adds to an environment in which torch will start: only those the user has not
    set (their own ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` win), none when ``LAYERFREEZE_THREAD_POLICY=off``.

    OpenMP threads that wait for a core another process holds spin by default, and a training step beside one
    equal job took several times its quiet time; ``benchmarks/results/contention-step.md`` has the measurements
    behind the choice.

    >>> thread_policy_env({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "4"})
    {}
    >>> thread_policy_env({"LAYERFREEZE_THREAD_POLICY": "off"})
    {}
    """
    environ = os.environ if environ is None else environ
    switch = environ.get(THREAD_POLICY_VARIABLE, "on")
    if switch not in ("on", "off"):
        raise ValueError(f"{THREAD_POLICY_VARIABLE}={switch!r}; valid: on, off")
    if switch == "off":
        return {}
    policy = {**THREAD_POLICY, "OMP_NUM_THREADS": str(policy_threads())}
    return {name: value for name, value in policy.items() if name not in environ}


def apply_thread_policy() -> dict[str, str]:
    """Apply the kit's thread policy to this process and the processes it starts; returns what it set.

    The variables go into ``os.environ``: child processes (notebook kernels) inherit them, and this process's
    OpenMP reads them if torch is not imported yet. If it is, OpenMP has read its wait policy already, and threads
    that spin while another job holds a core are what the policy avoids: this process then runs torch on
    :data:`LATE_THREADS` thread (unless the user set ``OMP_NUM_THREADS``).

    >>> import os
    >>> if os.environ.get(THREAD_POLICY_VARIABLE) != "off":
    ...     _ = apply_thread_policy()
    ...     assert os.environ["OMP_WAIT_POLICY"] and os.environ["OMP_NUM_THREADS"]
    """
    added = thread_policy_env()
    os.environ.update(added)
    if "torch" in sys.modules and "OMP_NUM_THREADS" in added:
        late = "OMP_WAIT_POLICY" in added  # set only now: this process's threads still spin while they wait
        sys.modules["torch"].set_num_threads(LATE_THREADS if late else int(added["OMP_NUM_THREADS"]))
    return added


def launch_with_thread_policy(argv: list[str]) -> None:
    """Replace this process with ``python -m MODULE ARGS...`` (``argv = [MODULE, *ARGS]``) under the thread
    policy: what the notebook kernel's spec runs (``python runtime.py --launch ipykernel_launcher -f ...``),
    as a file, so that the policy is in the environment before anything imports torch."""
    if not argv:
        raise ValueError("launch_with_thread_policy needs the module to run, e.g. ['ipykernel_launcher', '-f', ...]")
    os.environ.update(thread_policy_env())
    options = sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv)]  # the interpreter's own, e.g. -Xfrozen_modules=off
    os.execv(sys.executable, [sys.executable, *options, "-m", *argv])


if __name__ == "__main__" and sys.argv[1:2] == ["--launch"]:
    launch_with_thread_policy(sys.argv[2:])
