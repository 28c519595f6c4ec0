"""Estimating the memory of one training step: weights, gradients, optimizer state and activations.

The estimate (:func:`estimate_memory`) is a formula; :class:`PeakMemory` is the measurement that
:func:`~layerfreeze.fit` records beside it, and ``benchmarks/`` sets the two side by side.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
counted for the tensors that autograd keeps per block: the block input, Q, K, V, the attention output, the
two norm inputs, the MLP input, the two MLP intermediates and two dropout masks (1 byte each). With eager
attention the attention probabilities (and their dropout mask) are kept too; fused attention (SDPA on CUDA) keeps
none.

Sharded (``world_size=N``, FSDP2's ``fully_shard``): each rank holds ``ceil(rows / N)`` rows of every tensor (FSDP2
splits dimension 0 and pads it to a multiple of N), so weights, gradients and optimizer state shrink about N-fold;
activations do not, since every rank runs whole layers on its own batch.

Why frozen blocks *below* the lowest trainable layer keep no activations: nothing under them needs a gradient,
so autograd records nothing there. Frozen blocks *above* it still keep theirs: the gradient has to flow back
through them to reach the trainable layer below.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

from .freezing import frozen_prefix
from .layers import LayerGroup, layer_groups
from ..base.runtime import MiB

OPTIMIZER_STATES_PER_PARAM = {"adamw": 2, "adam": 2, "sgd-momentum": 1, "sgd": 0}


@dataclass
class MemoryEstimate:
    """Bytes for one training step, split by component and by frozen/trainable."""

    weights_frozen: int
    weights_trainable: int
    gradients: int
    optimizer_state: int
    activations_frozen: int  # kept by frozen blocks above the lowest trainable layer
    activations_trainable: int

    @property
    def activations(self) -> int:
        return self.activations_frozen + self.activations_trainable

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    @property
    def training_overhead(self) -> int:
        """What training adds on top of the loaded weights: gradients, optimizer state and activations."""
        return self.gradients + self.optimizer_state + self.activations

    def table(self, unit: int = MiB) -> pd.DataFrame:
        """Components x (frozen, trainable, total), in MiB by default."""
        rows = {
            "weights": (self.weights_frozen, self.weights_trainable),
            "gradients": (0, self.gradients),
            "optimizer state": (0, self.optimizer_state),
            "activations": (self.activations_frozen, self.activations_trainable),
        }
        frame = pd.DataFrame(rows, index=["frozen", "trainable"]).T / unit
        frame["total"] = frame.sum(axis=1)
        frame.loc["total"] = frame.sum()
        return frame.round(2)

    def __repr__(self) -> str:
        return (f"MemoryEstimate(total={self.total / MiB:.1f} MiB: weights {(self.weights_frozen + self.weights_trainable) / MiB:.1f}, "
                f"gradients {self.gradients / MiB:.1f}, optimizer {self.optimizer_state / MiB:.1f}, "
                f"activations {self.activations / MiB:.1f})")


def _config_sizes(model: nn.Module) -> tuple[int, int, int]:
    config = model.config
    hidden = next(getattr(config, k) for k in ("hidden_size", "n_embd", "dim", "d_model") if hasattr(config, k))
    heads = next(getattr(config, k) for k in ("num_attention_heads", "n_head", "n_heads") if hasattr(config, k))
    inner = next((getattr(config, k) for k in ("intermediate_size", "n_inner", "hidden_dim")
                  if getattr(config, k, None)), 4 * hidden)
    return hidden, inner, heads


def block_activation_bytes(model: nn.Module, batch_size: int, seq_len: int, bytes_per_value: int = 4,
                           attention_matrices: bool | None = None) -> int:
    """Bytes one transformer block keeps for backward at this batch size and sequence length."""
    hidden, inner, heads = _config_sizes(model)
    if attention_matrices is None:
        # Eager attention keeps its probabilities; so does SDPA on the CPU, whose kernel with dropout is the
        # composite "math" one. On CUDA, SDPA's fused kernels keep none.
        on_cpu = next(model.parameters()).device.type == "cpu"
        attention_matrices = on_cpu or getattr(model.config, "_attn_implementation", "eager") == "eager"
    tokens = batch_size * seq_len
    # 8 hidden-sized tensors and 2 MLP intermediates per token, as counted above; the extra 1.5 hidden-sized
    # values and the third attention matrix were calibrated on what autograd saves for transformers' BERT
    # (tests/test_inspection.py measures it with saved_tensors_hooks).
    values = tokens * (19 * hidden // 2 + 2 * inner)
    masks = 2 * tokens * hidden
    if attention_matrices:
        values += 3 * batch_size * heads * seq_len * seq_len
        masks += batch_size * heads * seq_len * seq_len
    return values * bytes_per_value + masks


def estimate_memory(model: nn.Module, batch_size: int = 32, seq_len: int = 128, optimizer: str = "adamw",
                    activation_bytes: int | None = None, attention_matrices: bool | None = None,
                    groups: list[LayerGroup] | None = None, world_size: int = 1) -> MemoryEstimate:
    """Estimate the memory of one training step with the model's current trainable set.

    ``activation_bytes`` is 2 under bf16/fp16 autocast; by default it is the parameters' element size.
    ``world_size=N`` gives one rank's share when FSDP2 shards the model over N ranks (weights, gradients and
    optimizer state about 1/N each; activations whole); the model may be sharded already or not.

    >>> from layerfreeze import tiny_model, freeze_to
    >>> model = tiny_model("bert")
    >>> full = estimate_memory(model, batch_size=8, seq_len=64)
    >>> _ = freeze_to(model, -1)
    >>> head_only = estimate_memory(model, batch_size=8, seq_len=64)
    >>> head_only.total < full.total and head_only.activations < full.activations / 10
    True
    >>> estimate_memory(model, 8, 64, world_size=2).optimizer_state * 2 == head_only.optimizer_state  # per rank
    True
    """
    if optimizer not in OPTIMIZER_STATES_PER_PARAM:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZER_STATES_PER_PARAM)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a whole number of ranks, at least 1 (1: not sharded); "
                         f"got {world_size!r}")
    groups = groups if groups is not None else layer_groups(model)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights_trainable = sharded_bytes(trainable, world_size)
    weights_frozen = sharded_bytes([p for p in params if not p.requires_grad], world_size)
    optimizer_state = OPTIMIZER_STATES_PER_PARAM[optimizer] * weights_trainable
    element = activation_bytes or (params[0].element_size() if params else 4)

    lowest = frozen_prefix(groups)
    per_block = block_activation_bytes(model, batch_size, seq_len, element, attention_matrices)
    hidden, _, _ = _config_sizes(model)
    acts_frozen = acts_trainable = 0
    if lowest < len(groups):
        for group in groups[lowest:]:
            if group.kind == "block":
                size = per_block
            elif group.kind == "embeddings":
                size = batch_size * seq_len * (hidden * element + hidden)  # norm input + dropout mask
            else:
                size = _head_activation_bytes(model, batch_size, seq_len, element)
            if any(p.requires_grad for p in group.parameters.values()):
                acts_trainable += size
            else:
                acts_frozen += size
    return MemoryEstimate(weights_frozen, weights_trainable, weights_trainable, optimizer_state,
                          acts_frozen, acts_trainable)


def sharded_bytes(tensors, world_size: int = 1) -> int:
    """Bytes one rank holds of ``tensors`` when FSDP2 shards each over ``world_size`` ranks: ``ceil(rows / N)`` rows
    of each (dimension 0, padded to a multiple of N); all of them when ``world_size`` is 1.

    >>> sharded_bytes([torch.zeros(5, 2)], world_size=2)  # 3 rows of 2 float32 values
    24
    """
    total = 0
    for tensor in tensors:
        rows = tensor.shape[0] if tensor.dim() else 1
        total += -(-rows // world_size) * (tensor.numel() // max(rows, 1)) * tensor.element_size()
    return total


def _head_activation_bytes(model: nn.Module, batch_size: int, seq_len: int, element: int) -> int:
    hidden, _, _ = _config_sizes(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:  # language-model head: logits over the vocabulary, plus their fp32 copy in the loss
        return batch_size * seq_len * (hidden * element + output.weight.shape[0] * (element + 4))
    return batch_size * seq_len * hidden * element


# --- measured ------------------------------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory a block adds to what was there at its start: on CUDA, PyTorch's peak allocated bytes less those
    allocated at the start; on the CPU, the process's resident set size sampled every few milliseconds by a
    thread, less the RSS at the start. Weights loaded before the block are therefore not counted, which makes the
    figure comparable with :attr:`MemoryEstimate.training_overhead`.

    >>> with PeakMemory(torch.device("cpu")) as peak:
    ...     block = torch.ones(2 ** 18)
    >>> peak.kind, peak.peak_bytes >= 0
    ('cpu rss above start', True)
    """

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.kind = "cuda allocated above start" if device.type == "cuda" else "cpu rss above start"
        self._stop = threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak is the best available
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self, start: int) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes() - start)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, args=(self.rss_bytes(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()


# --- what LISA's memory argument looks like at real sizes, from configs alone ------------------------------------

# Shapes of real models, copied from the config.json files their authors publish on the Hub (no weights are read):
# (transformers config class, keyword arguments, the model it describes).
REAL_CONFIGS = {
    "MiniLM-L6 (this course)": ("BertConfig", dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                                   num_attention_heads=12, intermediate_size=1536)),
    "SmolLM2-135M": ("LlamaConfig", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                         tie_word_embeddings=True)),
    "Qwen2.5-0.5B": ("Qwen2Config", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                         tie_word_embeddings=True)),
    "Qwen2.5-1.5B": ("Qwen2Config", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                         tie_word_embeddings=True)),
    "Llama-3-8B": ("LlamaConfig", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                       tie_word_embeddings=False)),
}


def meta_model(config_class: str, **values) -> nn.Module:
    """A model built from a config on the meta device: every shape, no weights, no memory, no download."""
    import transformers

    config = getattr(transformers, config_class)(**values)
    auto = transformers.AutoModel if config.model_type == "bert" else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def lisa_shares(model: nn.Module, gamma: int = 2) -> dict:
    """Parameter shares that decide LISA's memory: the embeddings' (input and, if untied, output), one block's,
    and what LISA trains at once (embeddings, head and ``gamma`` blocks) against full fine-tuning. Adam keeps two
    fp32 values per trainable parameter, so its state shrinks by the same share.

    >>> from ..base.models import tiny_model
    >>> shares = lisa_shares(tiny_model("llama", num_layers=4), gamma=1)
    >>> 0 < shares["one block"] < shares["LISA trains"] < 1
    True
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a meta model cannot be traced: registration order is the run order here
        groups = layer_groups(model)
    unique = lambda tensors: sum(t.numel() for t in {id(t): t for t in tensors}.values())
    total = unique(model.parameters())
    outside = unique(p for g in groups if g.kind != "block" for p in g.parameters.values())
    block = max(unique(g.parameters.values()) for g in groups if g.kind == "block")
    blocks = sum(g.kind == "block" for g in groups)
    lisa = outside + min(gamma, blocks) * block
    return {"parameters (M)": total / 1e6, "blocks": blocks, "embeddings and head": outside / total,
            "one block": block / total, "LISA trains": lisa / total,
            "Adam state, full (GiB)": 8 * total / 2**30, "Adam state, LISA (GiB)": 8 * lisa / 2**30}


def real_size_table(gamma: int = 2) -> pd.DataFrame:
    """:func:`lisa_shares` for each of :data:`REAL_CONFIGS`, built on the meta device."""
    return pd.DataFrame({name: lisa_shares(meta_model(cls, **values), gamma)
                         for name, (cls, values) in REAL_CONFIGS.items()}).T
