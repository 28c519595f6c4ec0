"""Layer groups: a model seen as ``embeddings -> block.0 ... block.n-1 -> head``.

Every freezing, inspection and schedule function in the kit works on these groups. Discovery first finds the list of
repeated transformer blocks, then splits the rest of the model around it: modules registered *before* the blocks
(on the path from the root to the block list) form ``embeddings``, modules registered *after* them form ``head``.

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

With tied input/output embeddings (GPT-2 and many decoders' ``lm_head``), one tensor sits in both ``embeddings``
and ``head``; :func:`shared_parameters` reports such twins, and counts never include them twice.

Any other model falls back to a generic rule: the longest ``nn.ModuleList`` whose children all have one class.
When even that fails, pass ``blocks="path.to.modulelist"``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

KNOWN_BLOCK_PATHS = (
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "distilbert.transformer.layer",
    "transformer.h",
    "model.layers",
    "encoder.layer",  # a bare BertModel / RobertaModel
    "transformer.layer",  # a bare DistilBertModel
    "h",  # a bare GPT2Model
    "layers",  # a bare LlamaModel
)


@dataclass
class LayerGroup:
    """One group of layers: its name (``embeddings``, ``block.3``, ``head``), kind and modules.

    ``modules`` maps qualified module names to modules; ``parameters`` maps qualified parameter names to
    parameters, each tensor once (a tied twin that lives in another group is listed there too).
    """

    name: str
    kind: str  # "embeddings", "block" or "head"
    modules: dict[str, nn.Module] = field(repr=False)
    parameters: dict[str, nn.Parameter] = field(repr=False)

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
    return (isinstance(module, nn.ModuleList) and len(module) > 0
            and len({type(child) for child in module}) == 1)


def find_blocks_path(model: nn.Module) -> str:
    """The qualified name of the model's list of repeated blocks.

    Known families first (see the module docstring), then the longest ``ModuleList`` of same-class modules.
    """
    for path in KNOWN_BLOCK_PATHS:
        if _is_block_list(_get_submodule(model, path)):
            return path
    candidates = [(len(m), name) for name, m in model.named_modules() if name and _is_block_list(m)]
    if not candidates:
        raise ValueError(
            f"cannot find the repeated blocks of {type(model).__name__}: it has no nn.ModuleList of same-class "
            "modules. Pass the path of the block list yourself, e.g. layer_groups(model, blocks='encoder.layers'); "
            f"its top-level children are: {', '.join(n for n, _ in model.named_children()) or 'none'}")
    longest = max(size for size, _ in candidates)
    return next(name for size, name in candidates if size == longest)


def _split_around(model: nn.Module, blocks_path: str) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Modules registered before / after the block list, along the path from the root to it."""
    before: dict[str, nn.Module] = {}
    after: dict[str, nn.Module] = {}
    module, prefix = model, ""
    for part in blocks_path.split("."):
        seen_path_child = False
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            if name == part:
                seen_path_child = True
            else:
                (after if seen_path_child else before)[qualified] = child
        module, prefix = getattr(module, part), f"{prefix}{part}."
    return before, after


def _parameters_of(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    params: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in modules.items():
        for name, param in module.named_parameters(prefix=module_name, remove_duplicate=False):
            if id(param) not in seen:
                seen.add(id(param))
                params[name] = param
    return params


def layer_groups(model: nn.Module, blocks: str | None = None) -> list[LayerGroup]:
    """The model's ordered layer groups: ``embeddings``, ``block.0`` ... ``block.n-1``, ``head``.

    >>> from layerfreeze import tiny_model
    >>> [g.name for g in layer_groups(tiny_model("bert", num_layers=2))]
    ['embeddings', 'block.0', 'block.1', 'head']
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module (e.g. from load_model), got {type(model).__name__}")
    blocks_path = blocks or find_blocks_path(model)
    block_list = _get_submodule(model, blocks_path)
    if not isinstance(block_list, (nn.ModuleList, nn.Sequential)) or len(block_list) == 0:
        raise ValueError(f"{blocks_path!r} is not a non-empty ModuleList in {type(model).__name__}; lists found: "
                         + ", ".join(n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)))
    before, after = _split_around(model, blocks_path)
    groups = [LayerGroup("embeddings", "embeddings", before, _parameters_of(before))]
    for i, block in enumerate(block_list):
        modules = {f"{blocks_path}.{i}": block}
        groups.append(LayerGroup(f"block.{i}", "block", modules, _parameters_of(modules)))
    groups.append(LayerGroup("head", "head", after, _parameters_of(after)))
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
    """How many repeated blocks the model has."""
    return len(layer_groups(model, blocks)) - 2
