"""Layer groups: a model seen as ``embeddings -> block.0 ... block.n-1 -> head``.

Every freezing, inspection and schedule function in the kit works on these groups. Discovery finds the lists of
repeated transformer blocks, then places every other module by **where it runs**, traced in one forward pass on a
tiny dummy batch (forward hooks; no weight changes, dropout off, the random state restored):

* modules that run before the first block form ``embeddings``; those that run after the last block form ``head``;
* a module that runs between two blocks joins the block after it (it prepares that block's input);
* a module registered outside the blocks but used inside them (a position table every block reads) runs "before"
  the blocks and belongs with ``embeddings``: its group says so in :attr:`LayerGroup.note`;
* a module or parameter that never runs on token ids (ESM's contact head, XLNet's ``mask_emb``) goes where it is
  registered, before the first block's parameters (``embeddings``) or after them (``head``), and its group's note
  says that it did not run.

Three special cases (``docs/layer_groups.md`` explains them):

* **encoder-decoders** (T5, BART): both stacks are blocks, in the order they run: ``encoder.0`` ...
  ``decoder.0`` ...; the decoder's token embedding, tied to the encoder's, stays in ``embeddings``;
* **shared blocks** (ALBERT runs one block for every layer): one group per *distinct* block, a warning, and a note;
* **tied weights** (a causal LM's ``lm_head`` is its input embedding): the tensor sits in ``embeddings`` and in
  ``head``; :func:`tied_weights` lists such ties, counts never include them twice, and freezing refuses to train
  one side silently (see :mod:`layerfreeze.core.freezing`).

What "head" means, family by family:

============  ==========================  ====================================================================
family        blocks                      head
============  ==========================  ====================================================================
BERT          ``bert.encoder.layer``      ``bert.pooler`` (pretrained dense+tanh on [CLS]) and ``classifier``
RoBERTa       ``roberta.encoder.layer``   ``classifier`` (dense+tanh+out_proj on <s>; no pooler)
DistilBERT    ``distilbert.transformer``  ``pre_classifier`` and ``classifier``
              ``.layer``
GPT-2         ``transformer.h``           final norm ``transformer.ln_f`` and ``score`` / ``lm_head``
Llama-style   ``model.layers``            final norm ``model.norm`` and ``score`` / ``lm_head``
============  ==========================  ====================================================================

The block list is the longest ``nn.ModuleList`` whose children all have one class (one per stack for an
encoder-decoder). When that fails, pass ``blocks="path.to.modulelist"``. A model whose forward cannot run on
``input_ids`` falls back to registration order: modules registered before the blocks are ``embeddings``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

TRACE_SEQ_LEN = 8
# Tensor methods that read what a parameter is, not its values (transformers' ``model.dtype`` calls the first two on
# the first parameter in every forward pass): they do not count as a use.
_METADATA_READS = frozenset({"__get__", "is_floating_point", "is_complex", "dim", "size", "numel", "stride",
                             "element_size", "data_ptr", "is_contiguous", "get_device"})
_LAYOUT_ATTR = "_layerfreeze_layout"


@dataclass
class LayerGroup:
    """One group of layers: its name (``embeddings``, ``block.3``, ``head``), kind and modules.

    ``modules`` maps qualified module names to modules, in the order they run; ``parameters`` maps qualified
    parameter names to parameters, each tensor once (a tied twin that lives in another group is listed there too).
    ``note`` says what is special about the group (a block run several times, a table every block reads);
    ``runs`` is how many times a block runs per forward pass (more than 1 for a shared block).
    """

    name: str
    kind: str  # "embeddings", "block" or "head"
    modules: dict[str, nn.Module] = field(repr=False)
    parameters: dict[str, nn.Parameter] = field(repr=False)
    note: str = ""
    runs: int = 1

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters.values())

    @property
    def trainable(self) -> bool | None:
        """True if every parameter trains, False if none does, None if mixed or the group has no parameters."""
        flags = {p.requires_grad for p in self.parameters.values()}
        return flags.pop() if len(flags) == 1 else None


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _is_block_list(module: nn.Module | None) -> bool:
    """Same-class children that run (a list of lists, Funnel's stages, never runs itself: see :func:`_stage_lists`)."""
    return (isinstance(module, nn.ModuleList) and len(module) > 0
            and len({type(child) for child in module}) == 1
            and not isinstance(module[0], (nn.ModuleList, nn.ModuleDict)))


def _stage_lists(model: nn.Module) -> list[str]:
    """The stages of a model whose blocks come as a list of block lists (Funnel Transformer's encoder): the
    paths of the stages, or ``[]``. The stages run one after the other, so their blocks are the model's blocks."""
    for name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) > 1 and all(_is_block_list(m) for m in module)
                and len({type(block) for stage in module for block in stage}) == 1):
            return [f"{name}.{i}" for i in range(len(module))]
    return []


def _longest_block_list(model: nn.Module, prefix: str = "") -> str | None:
    candidates = [(len(m), name) for name, m in model.named_modules(prefix=prefix) if name and _is_block_list(m)]
    if not candidates:
        return None
    longest = max(size for size, _ in candidates)
    return next(name for size, name in candidates if size == longest)


def find_blocks_paths(model: nn.Module) -> list[str]:
    """The qualified names of the model's block lists: one, or one per stack of an encoder-decoder (encoder first).

    >>> from layerfreeze import tiny_model
    >>> find_blocks_paths(tiny_model("t5"))
    ['transformer.encoder.block', 'transformer.decoder.block']
    """
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        stacks = [name for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in ("encoder", "decoder")
                  and isinstance(m, nn.Module)]
        paths = [_longest_block_list(model.get_submodule(s), s) for s in stacks]
        if len(stacks) == 2 and all(paths):
            return paths
    path, stages = _longest_block_list(model), _stage_lists(model)
    if stages and (path is None or sum(len(model.get_submodule(s)) for s in stages) > len(model.get_submodule(path))):
        return stages
    if path is None:
        raise ValueError(
            f"cannot find the repeated blocks of {type(model).__name__}: it has no nn.ModuleList of same-class "
            "modules. Pass the path of the block list yourself, e.g. layer_groups(model, blocks='encoder.layers'); "
            f"its top-level children are: {', '.join(n for n, _ in model.named_children()) or 'none'}")
    return [path]


def find_blocks_path(model: nn.Module) -> str:
    """The qualified name of the model's (first) list of repeated blocks: the longest ``ModuleList`` of same-class
    modules, e.g. ``'bert.encoder.layer'``."""
    return find_blocks_paths(model)[0]


# --- the trace -----------------------------------------------------------------------------------------------------

class _Timeline:
    """Where the forward pass is: before block ``k`` (``("gap", k)``) or inside it (``("in", k)``)."""

    def __init__(self, block_ids: dict[int, int]):
        self.block_ids, self.inside, self.done = block_ids, None, -1
        self.first_call: dict[int, tuple] = {}  # id(module) -> slot of its first call
        self.calls: dict[int, int] = defaultdict(int)
        self.first_use: dict[int, tuple] = {}  # id(parameter) -> slot of its first use in any operation
        self.ticks: dict[int, int] = {}  # id(module or parameter) -> when it first ran or was used
        self.read_by_blocks: set[str] = set()  # modules outside the blocks that feed them more than hidden states

    def slot(self) -> tuple:
        return ("in", self.inside) if self.inside is not None else ("gap", self.done + 1)

    def pre_hook(self, module, args):
        key = id(module)
        self.calls[key] += 1
        self.first_call.setdefault(key, self.slot())
        self.ticks.setdefault(key, len(self.ticks))
        if key in self.block_ids and self.inside is None:
            self.inside = self.block_ids[key]

    def post_hook(self, module, args, output):
        if id(module) in self.block_ids and self.inside == self.block_ids[id(module)]:
            self.inside, self.done = None, max(self.done, self.inside)


class _ParameterUse(torch.overrides.TorchFunctionMode):
    """Records where each parameter is first used, also when its module never runs (DeBERTa reads
    ``rel_embeddings.weight`` directly), and which modules outside the blocks feed the blocks something besides
    the hidden states (a position table every block reads): tensors computed outside the blocks carry the names
    of the modules whose parameters they come from."""

    def __init__(self, timeline: _Timeline, owners: dict[int, str]):
        super().__init__()
        self.timeline, self.owners = timeline, owners
        self.sources: dict[int, tuple[torch.Tensor, frozenset]] = {}  # id(tensor) -> (tensor kept alive, names)
        self.read_by_blocks: set[str] = set()

    def names_of(self, values) -> frozenset:
        names = set()
        for value in torch.utils._pytree.tree_leaves(values):
            if isinstance(value, torch.Tensor):
                names |= {self.owners[id(value)]} if id(value) in self.owners else self.sources.get(
                    id(value), (None, frozenset()))[1]
        return frozenset(names)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reads_attribute = getattr(func, "__name__", "") in _METADATA_READS  # model.dtype: no use of the weights
        for value in torch.utils._pytree.tree_leaves((args, kwargs)) if not reads_attribute else ():
            if isinstance(value, nn.Parameter):
                self.timeline.first_use.setdefault(id(value), self.timeline.slot())
                self.timeline.ticks.setdefault(id(value), len(self.timeline.ticks))
        result = func(*args, **kwargs)
        names = self.names_of((args, kwargs)) if self.timeline.inside is None else frozenset()
        if names:
            for value in torch.utils._pytree.tree_leaves(result):
                if isinstance(value, torch.Tensor):
                    self.sources[id(value)] = (value, names)
        return result

    def block_inputs(self, module, args, kwargs):
        """A block's pre-hook: note what reaches it beside the hidden states."""
        if self.timeline.inside is None:
            self.read_by_blocks |= self.names_of((args[1:], kwargs) if args else
                                                 {k: v for k, v in kwargs.items() if k != "hidden_states"})


def _dummy_inputs(model: nn.Module) -> dict[str, torch.Tensor] | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None or not hasattr(embeddings, "num_embeddings"):
        return None
    device = embeddings.weight.device
    vocab = embeddings.num_embeddings
    input_ids = (torch.arange(TRACE_SEQ_LEN, device=device) % max(vocab - 5, 1) + 5).clamp(max=vocab - 1)[None]
    eos = getattr(model.config, "eos_token_id", None)
    if isinstance(eos, int) and 0 <= eos < vocab:  # BART and T5 classify from the end-of-sequence token
        input_ids[0, -1] = eos
    inputs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    if getattr(model.config, "is_encoder_decoder", False) and "SequenceClassification" not in type(model).__name__:
        inputs["decoder_input_ids"] = input_ids
    return inputs


def _run_dummy_forward(model: nn.Module, pre_hook, post_hook=None, parameter_use=None) -> Exception | None:
    """One forward pass on a dummy batch with hooks on every module; returns the error if the model cannot run on
    ``input_ids``. Weights, train/eval modes and the random state are left as they were."""
    inputs = _dummy_inputs(model)
    if inputs is None:
        return TypeError(f"{type(model).__name__} has no input embedding to feed token ids to")
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]
    handles += [m.register_forward_hook(post_hook) for m in model.modules()] if post_hook else []
    device = inputs["input_ids"].device
    try:
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                parameter_use or contextlib.nullcontext():
            getattr(model, "_orig_mod", model)(**inputs)  # a torch.compile'd model: trace the original, uncompiled
    except Exception as error:  # a model that needs other inputs
        return error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return None


def _trace(model: nn.Module, blocks: list[nn.Module]) -> _Timeline | None:
    """Where every module and parameter ran in one dummy forward pass; ``None`` if the model cannot run on
    ``input_ids`` (then groups follow registration order, with a warning for a transformers model)."""
    timeline = _Timeline({id(b): i for i, b in enumerate(blocks)})
    inside = {id(p) for b in blocks for p in b.parameters()}
    owners = {id(p): name for name, m in model.named_modules() for p in m.parameters(recurse=False)
              if id(p) not in inside}
    use = _ParameterUse(timeline, owners)
    handles = [b.register_forward_pre_hook(use.block_inputs, with_kwargs=True) for b in blocks]
    try:
        error = _run_dummy_forward(model, timeline.pre_hook, timeline.post_hook, use)
    finally:
        for handle in handles:
            handle.remove()
    timeline.read_by_blocks = use.read_by_blocks
    if error is None:
        return timeline
    if hasattr(model, "config"):
        warnings.warn(f"layer_groups could not trace {type(model).__name__} ({type(error).__name__}: {error}); its "
                      "groups follow the order in which modules are registered, which may not be the order they run")
    return None


def module_run_order(model: nn.Module) -> list[str]:
    """Names of the model's modules in the order they first run in one forward pass on a dummy batch (modules that
    never run are left out). Independent of the layer groups: use it to check them.

    >>> from layerfreeze import tiny_model
    >>> module_run_order(tiny_model("bert", num_layers=1))[:3]
    ['', 'bert', 'bert.embeddings']
    """
    names = {id(m): n for n, m in model.named_modules()}
    order: dict[str, None] = {}
    error = _run_dummy_forward(model, lambda module, args: order.setdefault(names[id(module)]))
    if error is not None:
        raise ValueError(f"cannot run {type(model).__name__} on a dummy batch of token ids: {error}")
    return list(order)


# --- placing modules in groups -------------------------------------------------------------------------------------

def _stack_name(path: str, paths: list[str]) -> str:
    if len(paths) == 1:
        return "block"
    return next((part for part in path.split(".") if part in ("encoder", "decoder")), "block")


def _block_slots(model: nn.Module, paths: list[str]) -> tuple[list[str], list[str], list[nn.Module]]:
    """Group name, module name and module of every distinct block, in stack order."""
    names, module_names, modules, seen = [], [], [], set()
    for path in paths:
        stack = _stack_name(path, paths)
        for i, block in enumerate(model.get_submodule(path)):
            if id(block) in seen:
                continue
            seen.add(id(block))
            names.append(f"{stack}.{sum(n.startswith(stack + '.') for n in names)}")
            module_names.append(f"{path}.{i}")
            modules.append(block)
    return names, module_names, modules


def _slot_of(module: nn.Module, timeline: _Timeline) -> tuple | None:
    """Where a module first ran, or where its own parameters were first used when it never ran."""
    if id(module) in timeline.first_call:
        return timeline.first_call[id(module)]
    uses = [timeline.first_use[id(p)] for p in module.parameters(recurse=False) if id(p) in timeline.first_use]
    return min(uses, key=_slot_order) if uses else None


def _slot_order(slot: tuple) -> tuple:
    kind, k = slot
    return (k, 1 if kind == "in" else 0)


def _first_tick(module: nn.Module, timeline: _Timeline) -> int:
    """When anything in ``module`` first ran (a module's call or a parameter's use), for run order within a group."""
    ticks = [timeline.ticks[id(m)] for m in module.modules() if id(m) in timeline.ticks]
    ticks = ticks or [timeline.ticks[id(p)] for p in module.parameters() if id(p) in timeline.ticks]
    return min(ticks, default=len(timeline.ticks))


def _group_index(slot: tuple, num_blocks: int) -> int:
    """Group index for a slot of a module outside the blocks: 0 is embeddings, 1 + k block k, num_blocks + 1 head."""
    kind, k = slot
    if kind == "in":  # used inside a block but registered outside it: shared by the blocks, so with the embeddings
        return 0
    return 0 if k == 0 else num_blocks + 1 if k >= num_blocks else 1 + k


def _subtree_slots(module: nn.Module, timeline: _Timeline) -> set[tuple]:
    return {s for m in module.modules() if (s := _slot_of(m, timeline)) is not None}


def _place_modules(model: nn.Module, block_ids: set[int], num_blocks: int, timeline: _Timeline,
                   tied_first_group: dict[int, int]) -> tuple[dict[str, int], list[str]]:
    """Map the largest module subtrees that run in one place (outside the blocks) to a group index; a subtree that
    never runs (ESM's contact head, used only when contacts are asked for) goes where it is registered. Returns the
    placement and the names of the subtrees that never ran."""
    placed: dict[str, int] = {}
    never_ran: list[str] = []
    by_registration = _registration_side(model, block_ids, num_blocks)
    seen: set[int] = set()  # a module registered under two names (T5's shared embedding) is placed once

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            if id(child) in block_ids or id(child) in seen:
                continue
            seen.add(id(child))
            contains_block = any(id(m) in block_ids for m in child.modules())
            slots = _subtree_slots(child, timeline)
            if contains_block or len({_group_index(s, num_blocks) for s in slots}) > 1:
                visit(qualified + ".", child)
            elif slots:
                index = _group_index(min(slots, key=_slot_order), num_blocks)
                tied = [tied_first_group[id(p)] for p in child.parameters() if id(p) in tied_first_group]
                if tied and index <= num_blocks:  # a second input embedding (a decoder's) joins its tied twin
                    index = min(tied + [index])
                placed[qualified] = index
            elif any(True for _ in child.parameters()):
                placed[qualified] = by_registration(child.parameters())
                never_ran.append(qualified)

    visit("", model)
    return placed, never_ran


def _registration_side(model: nn.Module, block_ids: set[int], num_blocks: int):
    """A function of some parameters: the embeddings (0) if the first is registered before the first block's,
    else the head (``num_blocks + 1``): where a module or parameter goes when no trace says where it runs."""
    rank = {id(p): i for i, p in enumerate(model.parameters())}
    first_block = min((rank[id(p)] for m in model.modules() if id(m) in block_ids for p in m.parameters()),
                      default=len(rank))
    return lambda params: 0 if min((rank[id(p)] for p in params), default=len(rank)) < first_block else num_blocks + 1


def _place_direct_parameters(model: nn.Module, block_ids: set[int], num_blocks: int,
                             timeline: _Timeline | None) -> tuple[dict[str, int], list[str]]:
    """Parameters registered directly on a module that holds blocks (XLNet's ``transformer.mask_emb``, a learned
    scale on the root): the group where each is first used, else where it is registered. Returns the placement
    and the names of those never used."""
    by_registration = _registration_side(model, block_ids, num_blocks)
    placed: dict[str, int] = {}
    never_used: list[str] = []
    for module_name, module in model.named_modules():
        if id(module) in block_ids or not any(id(m) in block_ids for m in module.modules()):
            continue
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if timeline is not None and id(param) in timeline.first_use:
                placed[name] = _group_index(timeline.first_use[id(param)], num_blocks)
            else:
                placed[name] = by_registration([param])
                never_used += [name] if timeline is not None else []
    return placed, never_used


def _place_by_registration(model: nn.Module, block_ids: set[int], num_blocks: int) -> dict[str, int]:
    """The fallback without a trace: registered before the first block is embeddings, after it head."""
    placed: dict[str, int] = {}
    placed_ids: set[int] = set()
    seen_block = False

    def visit(prefix: str, module: nn.Module) -> None:
        nonlocal seen_block
        for name, child in module.named_children():
            if id(child) in placed_ids:
                continue
            placed_ids.add(id(child))
            if id(child) in block_ids:
                seen_block = True
            elif any(id(m) in block_ids for m in child.modules()):
                visit(f"{prefix}{name}.", child)
            else:
                placed[f"{prefix}{name}"] = num_blocks + 1 if seen_block else 0

    visit("", model)
    return placed


def _tied_first_group(model: nn.Module, timeline: _Timeline, num_blocks: int) -> dict[int, int]:
    """For tensors under several names: the group where each was first used, if that was before the last block."""
    names_by_tensor = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_tensor[id(param)].append(name)
    return {key: _group_index(timeline.first_use[key], num_blocks) for key, names in names_by_tensor.items()
            if len(names) > 1 and key in timeline.first_use}


@dataclass
class _Layout:
    """The result of a trace, by module name: cheap to turn into groups on every call."""

    signature: tuple
    names: list[str]
    kinds: list[str]
    module_names: list[list[str]]
    notes: list[str]
    runs: list[int] = field(default_factory=list)
    warning: str = ""
    parameter_names: list[list[str]] = field(default_factory=list)  # parameters set directly on a module of blocks


def _signature(model: nn.Module, blocks) -> tuple:
    return (blocks, tuple((n, type(m).__name__) for n, m in model.named_modules()))


def _build_layout(model: nn.Module, blocks: str | list[str] | None) -> _Layout:
    paths = [blocks] if isinstance(blocks, str) else list(blocks) if blocks else find_blocks_paths(model)
    for path in paths:
        block_list = _get_submodule(model, path)
        if not isinstance(block_list, (nn.ModuleList, nn.Sequential)) or len(block_list) == 0:
            raise ValueError(f"{path!r} is not a non-empty ModuleList in {type(model).__name__}; lists found: "
                             + ", ".join(n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)))
    block_names, block_module_names, block_modules = _block_slots(model, paths)
    num_blocks, block_ids = len(block_modules), {id(b) for b in block_modules}
    timeline = _trace(model, block_modules)
    if timeline is None:
        placed, never_ran = _place_by_registration(model, block_ids, num_blocks), []
    else:
        placed, never_ran = _place_modules(model, block_ids, num_blocks, timeline,
                                           _tied_first_group(model, timeline, num_blocks))
    direct, never_used = _place_direct_parameters(model, block_ids, num_blocks, timeline)
    module_names: list[list[str]] = [[] for _ in range(num_blocks + 2)]
    registered = {name: i for i, (name, _) in enumerate(model.named_modules())}
    run_order = (lambda n: (_first_tick(model.get_submodule(n), timeline), registered[n])) if timeline else \
        registered.__getitem__
    for name in sorted(placed, key=run_order):
        module_names[placed[name]].append(name)
    for i, name in enumerate(block_module_names):  # modules that prepare a block's input run before it
        module_names[1 + i].append(name)
    layout = _Layout(_signature(model, blocks), ["embeddings"] + block_names + ["head"],
                     ["embeddings"] + ["block"] * num_blocks + ["head"], module_names, [""] * (num_blocks + 2),
                     parameter_names=[[n for n, i in direct.items() if i == index] for index in range(num_blocks + 2)])
    _shared_notes(model, timeline, layout, paths, block_modules)
    _never_ran_notes(layout, [n for n in never_ran + never_used], {**placed, **direct})
    return layout


def _never_ran_notes(layout: _Layout, names: list[str], placed: dict[str, int]) -> None:
    """Say in its group's note which modules or parameters did not run in the traced forward pass."""
    for index in sorted({placed[n] for n in names}):
        unused = [n for n in names if placed[n] == index]
        note = (f"{', '.join(unused)}: not used in a forward pass on token ids (only with other inputs, or never), "
                "so placed where registered.")
        layout.notes[index] = f"{layout.notes[index]} {note}".strip()


def _shared_notes(model: nn.Module, timeline: _Timeline | None, layout: _Layout, paths: list[str],
                  block_modules: list[nn.Module]) -> None:
    """Notes for blocks that run several times and for tables that every block reads; sets the layout's warning."""
    if timeline is not None:
        read = [name for name in layout.module_names[0]
                if any(s[0] == "in" for s in _subtree_slots(model.get_submodule(name), timeline))
                or any(r == name or r.startswith(name + ".") for r in timeline.read_by_blocks)]
        if read:
            layout.notes[0] = (f"{', '.join(read)}: read by every block (beside the hidden states), so with the "
                               "embeddings.")
    entries = defaultdict(int)
    for path in paths:
        for block in model.get_submodule(path):
            entries[id(block)] += 1
    runs = [max(entries[id(b)], timeline.calls[id(b)] if timeline else 0) for b in block_modules]
    layout.runs = [1] + runs + [1]
    if max(runs) == 1:
        return
    for i, count in enumerate(runs):
        layout.notes[1 + i] = f"runs {count} times per forward pass: its layers share these weights."
    layout.warning = (f"{type(model).__name__} runs {len(block_modules)} distinct block(s) as {sum(runs)} layers: "
                      "the layers share weights, so each distinct block is one group, and freezing it freezes "
                      "every layer that runs it.")


def _layout(model: nn.Module, blocks) -> _Layout:
    """The traced layout, cached on the model (re-traced when its modules change)."""
    cached = model.__dict__.get(_LAYOUT_ATTR)
    if cached is not None and cached.signature == _signature(model, blocks):
        return cached
    layout = _build_layout(model, blocks)
    if layout.warning:
        warnings.warn(layout.warning, stacklevel=3)
    model.__dict__[_LAYOUT_ATTR] = layout
    return layout


def _parameters_of(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    params: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in modules.items():
        for name, param in module.named_parameters(prefix=module_name, remove_duplicate=False):
            if id(param) not in seen:
                seen.add(id(param))
                params[name] = param
    return params


def layer_groups(model: nn.Module, blocks: str | list[str] | None = None) -> list[LayerGroup]:
    """The model's ordered layer groups: ``embeddings``, ``block.0`` ... ``block.n-1``, ``head``.

    Groups follow where modules run (see the module docstring); the trace runs once per model and is cached.
    ``blocks`` names the block list (or lists) yourself.

    >>> from layerfreeze import tiny_model
    >>> [g.name for g in layer_groups(tiny_model("bert", num_layers=2))]
    ['embeddings', 'block.0', 'block.1', 'head']
    >>> [g.name for g in layer_groups(tiny_model("bart", num_layers=1))]
    ['embeddings', 'encoder.0', 'decoder.0', 'head']
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module (e.g. from load_model), got {type(model).__name__}")
    layout = _layout(model, blocks)
    groups = []
    for name, kind, names, note, runs, direct in zip(layout.names, layout.kinds, layout.module_names, layout.notes,
                                                     layout.runs, layout.parameter_names):
        modules = {n: model.get_submodule(n) for n in names}
        parameters = {n: model.get_parameter(n) for n in direct} | _parameters_of(modules)
        groups.append(LayerGroup(name, kind, modules, parameters, note, runs))
    _check_coverage(model, groups)
    return groups


def _check_coverage(model: nn.Module, groups: list[LayerGroup]) -> None:
    covered = {id(p) for g in groups for p in g.parameters.values()}
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:  # parameters registered directly on a module along the path, e.g. a learned scale on the root
        raise ValueError(f"these parameters belong to no layer group: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}. Pass blocks=... to choose another block list.")


def shared_parameters(model: nn.Module) -> list[list[str]]:
    """Names that refer to one and the same tensor, e.g. ``[['transformer.wte.weight', 'lm_head.weight']]``.

    Covers tied input/output embeddings and a module reused in several places. Each inner list has the
    canonical name (the one ``model.named_parameters()`` yields) first.
    """
    names_by_tensor: dict[int, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_tensor[id(param)].append(name)
    return [names for names in names_by_tensor.values() if len(names) > 1]


def tied_weights(model: nn.Module, groups: list[LayerGroup] | None = None) -> list[dict[str, str]]:
    """Tensors that sit in more than one layer group, each as ``{parameter name: group name}``.

    >>> from layerfreeze import tiny_model
    >>> tied_weights(tiny_model("gpt2", task="causal-lm"))
    [{'transformer.wte.weight': 'embeddings', 'lm_head.weight': 'head'}]
    """
    groups = groups if groups is not None else layer_groups(model)
    by_tensor: dict[int, dict[str, str]] = defaultdict(dict)
    for group in groups:
        for name, param in group.parameters.items():
            by_tensor[id(param)][name] = group.name
    return [names for names in by_tensor.values() if len(set(names.values())) > 1]


def group_of_parameter(groups: list[LayerGroup]) -> dict[int, str]:
    """Map ``id(parameter)`` to the name of the first group that holds it."""
    owner: dict[int, str] = {}
    for group in groups:
        for param in group.parameters.values():
            owner.setdefault(id(param), group.name)
    return owner


def replace_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` where the qualified name ``name`` points (``"bert.encoder.layer.3"``); returns the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent.get_submodule(child)
    if child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)
    return old


def num_blocks(model: nn.Module, blocks: str | None = None) -> int:
    """How many distinct blocks the model has (encoder and decoder together for an encoder-decoder)."""
    return len(layer_groups(model, blocks)) - 2
