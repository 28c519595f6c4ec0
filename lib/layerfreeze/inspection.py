"""Parameter tables: what each layer group holds and whether it trains."""

from __future__ import annotations

import pandas as pd
from torch import nn

from .layers import LayerGroup, layer_groups, shared_parameters


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
    return per_group[["params", "trainable", "frozen", "% trainable", "tensors", "bytes"]]
