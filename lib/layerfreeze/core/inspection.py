"""Parameter tables: what each layer group holds and whether it trains."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .layers import LayerGroup, layer_groups, module_run_order, shared_parameters
from ..base.runtime import eval_mode


def parameter_table(model: nn.Module, groups: list[LayerGroup] | None = None) -> pd.DataFrame:
    """One row per parameter tensor: group, name, shape, count, trainable, dtype, bytes, shared_with.

    A tensor shared under several names (tied embeddings, a reused block) has one row, in the first group that
    holds it; ``shared_with`` lists its other names.

    >>> from layerfreeze import tiny_model
    >>> parameter_table(tiny_model("bert")).columns.tolist()
    ['group', 'name', 'shape', 'count', 'trainable', 'dtype', 'bytes', 'shared_with']
    """
    groups = groups if groups is not None else layer_groups(model)
    twins = {names[0]: names[1:] for names in shared_parameters(model)}
    canonical_name = {id(p): n for n, p in model.named_parameters()}
    rows, seen = [], set()
    for group in groups:
        for _, param in group.parameters.items():
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = canonical_name[id(param)]
            rows.append(dict(group=group.name, name=name, shape=tuple(param.shape), count=param.numel(),
                             trainable=param.requires_grad, dtype=str(param.dtype).removeprefix("torch."),
                             bytes=param.numel() * param.element_size(), shared_with=", ".join(twins.get(name, []))))
    return pd.DataFrame(rows, columns=["group", "name", "shape", "count", "trainable", "dtype", "bytes",
                                       "shared_with"])


def group_table(model: nn.Module, groups: list[LayerGroup] | None = None) -> pd.DataFrame:
    """One row per layer group, plus a ``total`` row: parameters, trainable and frozen counts, bytes, % trainable.

    When a group is special (a shared block that runs several times, a table every block reads), a ``note``
    column says how.

    >>> from layerfreeze import tiny_model
    >>> group_table(tiny_model("bert", num_layers=2)).index.tolist()
    ['embeddings', 'block.0', 'block.1', 'head', 'total']
    """
    groups = groups if groups is not None else layer_groups(model)
    table = parameter_table(model, groups)
    table["trainable_count"] = table["count"].where(table["trainable"], 0)
    per_group = table.groupby("group", sort=False).agg(
        params=("count", "sum"), trainable=("trainable_count", "sum"), bytes=("bytes", "sum"),
        tensors=("name", "size"))
    per_group = per_group.reindex([g.name for g in groups], fill_value=0)
    per_group.loc["total"] = per_group.sum()
    per_group["frozen"] = per_group["params"] - per_group["trainable"]
    per_group["% trainable"] = (100 * per_group["trainable"] / per_group["params"].clip(lower=1)).round(1)
    per_group.index.name = "group"
    per_group = per_group[["params", "trainable", "frozen", "% trainable", "tensors", "bytes"]]
    if any(g.note for g in groups):
        per_group["note"] = [g.note for g in groups] + [""]
    return per_group


def run_order_table(model: nn.Module, groups: list[LayerGroup] | None = None) -> pd.DataFrame:
    """Each group's modules in the order they first run (one forward pass on a dummy batch, traced apart from the
    grouping), with the group's index. The groups follow where modules run when ``group_index`` never goes down;
    ``in_order`` marks each row, and a row out of order is one of the documented cases in ``note``.

    >>> from layerfreeze import tiny_model
    >>> table = run_order_table(tiny_model("bert", num_layers=2))
    >>> table["group"].tolist(), bool(table["in_order"].all())
    (['embeddings', 'block.0', 'block.1', 'head', 'head', 'head'], True)
    """
    groups = groups if groups is not None else layer_groups(model)
    ran = {name: step for step, name in enumerate(module_run_order(model))}
    rows = [dict(step=ran[name], module=name, group=group.name, group_index=index)
            for index, group in enumerate(groups) for name in group.modules if name in ran]
    table = pd.DataFrame(rows, columns=["step", "module", "group", "group_index"]).sort_values("step")
    table["in_order"] = table["group_index"] >= table["group_index"].cummax()
    tied = {id(p) for names in shared_parameters(model) for p in [model.get_parameter(names[0])]}
    table["note"] = ["one tensor with an embedding that ran earlier: it stays with it" if not ok and any(
        id(p) in tied for p in model.get_submodule(name).parameters()) else "" for name, ok in
        zip(table["module"], table["in_order"])]
    return table.reset_index(drop=True)



def _base_model(model: nn.Module) -> nn.Module:
    """The encoder/decoder stack inside a task model (``model.bert``, ``model.model`` ...), for hidden states."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, model) if prefix else model


@torch.no_grad()
def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  batch_size: int = 128) -> list[torch.Tensor]:
    """Mean-pooled hidden states after the embeddings and after each block: one ``[examples, hidden]`` per layer."""
    device = next(model.parameters()).device
    layers: list[list[torch.Tensor]] = []
    with eval_mode(model):
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            mask = attention_mask[start:start + batch_size].to(device)
            out = _base_model(model)(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            weights = mask.unsqueeze(-1).float()
            pooled = [(h.float() * weights).sum(1) / weights.sum(1) for h in out.hidden_states]
            if not layers:
                layers = [[] for _ in pooled]
            for store, value in zip(layers, pooled):
                store.append(value.cpu())
    return [torch.cat(chunks) for chunks in layers]
