"""Generated tasks written as a user's own data: a CSV, JSON-lines or Parquet file, or a folder in the Hub's own
layout (``data/train-00000-of-00001.parquet`` ...), built here with ``datasets``, never downloaded."""

from pathlib import Path

import datasets

from layerfreeze.base.tasks import LABEL_NAMES, generate_splits

FORMATS = ("csv", "jsonl", "parquet", "hub")


def write_task(task: str, folder: Path, fmt: str, *, sizes=None, text_column="text", label_column="label",
               label_names=False) -> Path:
    """Write generated task ``task`` in format ``fmt`` under ``folder``; returns what ``load_task`` should read.
    Files hold every split in one table (``load_task`` carves validation and test); the Hub layout keeps its splits.
    ``label_names=True`` writes labels as strings ("negative" ...)."""
    splits = generate_splits(task, sizes=sizes or {"train": 400, "validation": 100, "test": 100})
    tables = {}
    for split, rows in splits.items():
        label = (lambda v: LABEL_NAMES[task][v]) if label_names else (lambda v: v)
        tables[split] = datasets.Dataset.from_dict({text_column: [r["text"] for r in rows],
                                                    label_column: [label(r["label"]) for r in rows]})
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "hub":
        root = folder / f"task_{task}_hub"
        for split, table in tables.items():
            (root / "data").mkdir(parents=True, exist_ok=True)
            table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
        return root
    whole = datasets.concatenate_datasets(list(tables.values()))
    path = folder / f"task_{task}.{fmt}"
    {"csv": whole.to_csv, "jsonl": whole.to_json, "parquet": whole.to_parquet}[fmt](str(path))
    return path
