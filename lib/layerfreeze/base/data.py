"""Tasks as datasets, and the batches a model sees.

:func:`load_task` reads the kit's generated tasks (``a``, ``b``, ``c``: :mod:`layerfreeze.base.tasks` makes them;
``data/`` holds the committed files), Hub datasets, and your own CSV, JSON-lines or Parquet files and folders, all
through ``datasets.load_dataset`` (``docs/your_data.md``). Every split has the columns ``text`` (str) and ``label``
(a class label with names). Below it: tokenising (:func:`encode`) and the batch orders training and evaluation use.

>>> splits = load_task("a")
>>> sorted(splits), splits["train"].column_names
(['test', 'train', 'validation'], ['text', 'label'])
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .checks import check_int, check_number
from .tasks import DIFFICULTIES, GENERATED_TASKS, LABEL_NAMES, SPLIT_SIZES, generate_splits

DATA_DIR_ENV_VAR = "LAYERFREEZE_DATA_DIR"
# Hub dataset name -> (hub id, text column, split that serves as test when "test" has no labels)
HUB_DATASETS = {
    "sst2": ("stanfordnlp/sst2", "sentence", "validation"),
    "ag_news": ("fancyzhx/ag_news", "text", "test"),
    "imdb": ("stanfordnlp/imdb", "text", "test"),
}
TASK_NAMES = (*GENERATED_TASKS, *HUB_DATASETS)


def data_dir() -> Path | None:
    """The folder with the generated task files: ``$LAYERFREEZE_DATA_DIR`` or the repository's ``data/``."""
    if os.environ.get(DATA_DIR_ENV_VAR):
        return Path(os.environ[DATA_DIR_ENV_VAR])
    repo_data = Path(__file__).resolve().parents[3] / "data"
    return repo_data if (repo_data / "task_a").is_dir() else None


def load_task(name: str = "a", *, limit: dict[str, int] | None = None, seed: int = 0, text_column: str = "text",
              label_column: str = "label", difficulty: str = "standard"):
    """Load a task as a ``datasets.DatasetDict`` with ``train``, ``validation`` and ``test`` splits.

    ``name`` is ``"a"``, ``"b"`` or ``"c"`` (the generated tasks, read from ``data/`` or generated afresh when the
    files are absent or ``difficulty`` is not ``"standard"``: :data:`~layerfreeze.base.tasks.KNOBS` says what it changes), a known Hub dataset (``"sst2"``, ``"ag_news"``, ``"imdb"``), any Hub dataset id (``"org/name"``, from
    the local cache while ``HF_HUB_OFFLINE=1``), or a local CSV, JSON-lines or Parquet file, or a folder of them in the
    Hub's layout (``train.csv``, ``data/train-00000-of-00001.parquet`` ...). ``text_column`` and ``label_column``
    name the columns of a file or Hub id; they become ``text`` and ``label``, and string labels become class labels
    with names (``features["label"].names``). A split the data lacks is carved from train (seeded, stratified) and
    said in ``splits.note``. ``limit={"train": 500}`` keeps a seeded random subset.

    >>> load_task("a", limit={"train": 100})["train"].num_rows
    100
    """
    import datasets

    _check_task_arguments(name, limit, seed, text_column, label_column)
    if difficulty not in DIFFICULTIES or (difficulty != "standard" and name not in GENERATED_TASKS):
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, and applies to the generated tasks "
                         f"({', '.join(GENERATED_TASKS)}) only; got difficulty={difficulty!r} for task {str(name)!r}")
    if name in GENERATED_TASKS:
        folder = data_dir()
        files = {split: folder / f"task_{name}" / f"{split}.jsonl" for split in SPLIT_SIZES} if folder else {}
        if difficulty == "standard" and files and all(path.exists() for path in files.values()):
            splits = datasets.load_dataset("json", data_files={s: str(path) for s, path in files.items()})
        else:
            splits = datasets.DatasetDict({s: datasets.Dataset.from_list(rows)
                                           for s, rows in generate_splits(name, difficulty=difficulty).items()})
        splits = splits.cast_column("label", datasets.ClassLabel(names=LABEL_NAMES[name]))
        splits.note = (f"task {name!r}" + (f" at difficulty {difficulty!r}" if difficulty != "standard" else "")
                       + ": the generated task's own train, validation and test splits")
        if (text_column, label_column) != ("text", "label"):
            splits.note += f" (text_column and label_column do not apply: task {name!r} has its own columns)"
    else:
        splits = _load_any_task(name, seed, text_column, label_column)
    for split, size in (limit or {}).items():
        if size < splits[split].num_rows:
            splits[split] = splits[split].shuffle(seed=seed).select(range(size))
    return splits


def _check_task_arguments(name, limit, seed, text_column="text", label_column="label") -> None:
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_NAMES)}, a Hub dataset id ('org/name') or a "
                         f"CSV/JSONL/Parquet file or folder")
    if not (str(name) in TASK_NAMES or Path(name).exists() or _looks_like_hub_id(str(name))):
        raise ValueError(f"task {str(name)!r} is not a file or folder here, nor a Hub dataset id ('org/name'); "
                         f"valid: {', '.join(TASK_NAMES)}, a Hub dataset id, or a CSV/JSONL/Parquet file or folder")
    for argument, column in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(column, str) or not column:
            raise ValueError(f"{argument} must be a column name (a non-empty string), got {column!r}")
    if limit is not None and not isinstance(limit, dict):
        raise ValueError(f"limit must be a dict of split name to example count, e.g. {{'train': 500}}; got {limit!r}")
    for split, size in (limit or {}).items():
        if split not in SPLIT_SIZES:
            raise ValueError(f"limit names split {split!r}; valid splits: {', '.join(SPLIT_SIZES)}")
        check_int(f"limit[{split!r}]", size)
    check_int("seed", seed, 0, 2 ** 32 - 1)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and not Path(name).suffix


# --- any other task: a Hub name or id, a file or a folder, all through datasets.load_dataset -------------------

FILE_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
VALIDATION_NAMES = ("validation", "valid", "val", "dev")


def _load_any_task(name: str, seed: int, text_column: str, label_column: str):
    """A Hub name, Hub id, file or folder as ``train``/``validation``/``test`` with ``text`` and ``label``; what was
    made or left out is said in the result's ``note``."""
    import datasets

    source, test_split = (HUB_DATASETS[name][0], HUB_DATASETS[name][2]) if name in HUB_DATASETS else (str(name), "test")
    notes = []
    if name in HUB_DATASETS and (text_column, label_column) != ("text", "label"):
        notes.append(f"text_column and label_column do not apply: {name!r} has its own columns")
    if name in HUB_DATASETS:
        text_column, label_column = HUB_DATASETS[name][1], "label"
    raw = dict(_read_source(source))
    if test_split != "test" and test_split in raw:  # sst2: the labelled validation split serves as test
        notes.append(f"{test_split!r} serves as test (the Hub's test split has no labels)")
        raw = {"train": raw["train"], "test": raw[test_split]}
    if "train" not in raw:
        raise ValueError(f"{source}: no train split (found: {', '.join(raw) or 'none'}); name a file or folder "
                         f"with a train split, e.g. train.csv")
    validation = next((raw.pop(s) for s in VALIDATION_NAMES if s in raw), None)
    found = {"train": raw.pop("train"), "validation": validation, "test": raw.pop("test", None)}
    notes += [f"split {s!r} not used" for s in raw]
    splits = {s: _text_and_label_columns(d, source, s, text_column, label_column)
              for s, d in found.items() if d is not None}
    for split in [s for s, d in splits.items() if s != "train" and _unlabelled(d)]:
        notes.append(f"split {split!r} has no labels (-1): not used")
        del splits[split]
    labels = _class_labels(splits, notes, f"{source}: column {label_column!r} (label_column)")
    splits = {s: d.cast_column("label", labels) if d.features["label"] != labels else d for s, d in splits.items()}
    splits = _carve_missing_splits(splits, seed, notes)
    result = datasets.DatasetDict(train=splits["train"], validation=splits["validation"], test=splits["test"])
    result.note = f"task {str(name)!r}: " + ("; ".join(notes) if notes else "its own train, validation and test splits")
    return result


def _unlabelled(split) -> bool:
    """Hub test splits without labels hold -1 in every row."""
    return all(isinstance(v, int) and v < 0 for v in split["label"])


def _read_source(source: str):
    """``datasets.load_dataset`` of a file (one ``train`` split), a folder or a Hub id; any failure as one line."""
    import datasets

    path = Path(source)
    if path.is_file() and path.suffix.lower() not in FILE_FORMATS:
        raise ValueError(f"file {source}: format {path.suffix or '(none)'!r} is not read; valid: "
                         f"{', '.join(FILE_FORMATS)}")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # an error then stays one line, as the command line promises
    try:
        if path.is_file():
            return datasets.load_dataset(FILE_FORMATS[path.suffix.lower()], data_files={"train": str(path)})
        return datasets.load_dataset(source)
    except Exception as error:  # datasets raises many types; the learner needs the source and the reason
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not path.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConnectionError(f"Hub dataset {source!r} is not in the local cache and the Hub is offline "
                                  f"(HF_HUB_OFFLINE=1): run where the Hub is reachable, e.g. on Colab") from error
        kind = "file" if path.is_file() else "folder" if path.is_dir() else "Hub dataset"
        raise ValueError(f"{kind} {source} could not be read as a dataset: {type(error).__name__}: {reason}") from error
    finally:
        if bars:
            datasets.enable_progress_bars()


def _text_and_label_columns(split, source: str, name: str, text_column: str, label_column: str):
    """The split with only ``text`` and ``label``, after checking both columns exist and the texts are strings."""
    import datasets

    for argument, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in split.column_names:
            raise ValueError(f"{source} ({name} split) has no column {column!r} ({argument}); its columns: "
                             f"{', '.join(split.column_names)}")
    if text_column == label_column:
        raise ValueError(f"text_column and label_column are both {text_column!r}; give two different columns")
    if split.features[text_column] not in (datasets.Value("string"), datasets.Value("large_string")):
        raise ValueError(f"{source}: column {text_column!r} (text_column) holds {split.features[text_column]}, "
                         f"not text; its columns: {', '.join(split.column_names)}")
    split = split.select_columns([text_column, label_column])
    if label_column != "label":
        split = split.rename_column(label_column, "label")
    return split.rename_column(text_column, "text") if text_column != "text" else split


def _class_labels(splits: dict, notes: list, where: str):
    """One ``ClassLabel`` for every split: the data's own, names from string labels, or classes from whole numbers
    (renumbered from 0, the original values kept as names, when they are not already 0 to K-1)."""
    import datasets

    first = splits["train"].features["label"]
    if isinstance(first, datasets.ClassLabel):
        return first
    values = {v for d in splits.values() for v in d["label"]}
    if None in values:
        raise ValueError(f"{where} has empty cells; every example needs a label")
    if all(isinstance(v, str) for v in values):
        return datasets.ClassLabel(names=sorted(values))
    if not all(isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in values):
        raise ValueError(f"{where} must hold strings or whole numbers; got {sorted(values, key=str)[:5]}")
    ordered = sorted(int(v) for v in values if v >= 0)
    if ordered == list(range(len(ordered))):
        return datasets.ClassLabel(num_classes=len(ordered))
    notes.append(f"labels {', '.join(map(str, ordered))} numbered 0 to {len(ordered) - 1} (names keep the values)")
    renumber = {v: i for i, v in enumerate(ordered)}
    for split, data in splits.items():
        splits[split] = data.map(lambda row: {"label": renumber.get(int(row["label"]), -1)})
    return datasets.ClassLabel(names=[str(v) for v in ordered])


def _carve_missing_splits(splits: dict, seed: int, notes: list) -> dict:
    """Make a missing test, then a missing validation split from train: seeded, stratified when every class has
    enough examples, 10% of train (at most 2000 examples) each."""
    for split in ("test", "validation"):
        if split in splits:
            continue
        train = splits["train"]
        size = min(0.1, 2000 / train.num_rows)
        try:
            parts = train.train_test_split(test_size=size, seed=seed, stratify_by_column="label")
        except ValueError:  # a class too small to stratify
            parts = train.train_test_split(test_size=size, seed=seed)
        splits["train"], splits[split] = parts["train"], parts["test"]
        notes.append(f"{split} split made from train ({parts['test'].num_rows} examples, seed {seed})")
    return splits


def suggest_max_length(split, tokenizer, percentile: float = 95, cap: int = 256) -> int:
    """Tokens to keep per text, from the data: the longest text's length when every text fits in ``cap`` (nothing
    is cut), otherwise the ``percentile``-th length, at most ``cap`` and the tokenizer's own limit. ``split`` is one
    split or a whole task (every split's texts count); reads at most 5000 texts a split.

    >>> from layerfreeze.base.models import tiny_tokenizer
    >>> suggest_max_length([{"text": "a b c", "label": 0}, {"text": "a", "label": 1}], tiny_tokenizer())
    5
    """
    texts = []
    for part in split.values() if isinstance(split, dict) else [split]:  # a whole task: every split's texts
        sample = part[:5000] if isinstance(part, list) else part.select(range(min(5000, len(part))))
        texts += texts_and_labels(sample)[0]
    check_number("percentile", percentile, 0, 100)
    check_int("cap", cap, 2)
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be a tokenizer, as load_model returns it; got {type(tokenizer).__name__}")
    lengths = sorted(len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"])
    limit = getattr(tokenizer, "model_max_length", None)
    cap = min(cap, limit) if isinstance(limit, int) and limit < 10 ** 6 else cap
    if lengths[-1] <= cap:
        return lengths[-1]
    return min(cap, lengths[max(math.ceil(percentile / 100 * len(lengths)) - 1, 0)])


def num_labels(splits) -> int:
    """How many classes a loaded task has."""
    return splits["train"].features["label"].num_classes


def index_batches(n: int, batch_size: int, shuffle: bool = False, seed: int = 0, rank: int = 0,
                  world_size: int = 1):
    """Batches of example indices; shuffled with ``seed``. With several processes each takes every
    ``world_size``-th example of one shared order.

    >>> [b.tolist() for b in index_batches(5, 2)]
    [[0, 1], [2, 3], [4]]
    """
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    order = order[rank::world_size]
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def by_length_batches(lengths, batch_size: int):
    """Batches of example indices in order of length, shortest first: each batch, cut after its own widest row,
    then computes little padding. For evaluation, where the order changes nothing but the work.

    >>> import torch
    >>> [b.tolist() for b in by_length_batches(torch.tensor([5, 2, 9, 3]), 2)]
    [[1, 3], [0, 2]]
    """
    import torch

    order = torch.argsort(torch.as_tensor(lengths), stable=True)
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def eval_batch_size(device) -> int:
    """Evaluation's default batch: 64 examples on a CPU, where batches sorted by length and cut to their own width
    cost less than one wide batch (150 task B examples: 0.43 s against 0.58 s), 256 elsewhere, where fewer launches
    win.

    >>> eval_batch_size("cpu"), eval_batch_size("cuda")
    (64, 256)
    """
    import torch

    return 64 if torch.device(device).type == "cpu" else 256


def length_bucketed_batches(lengths, batch_size: int, seed: int = 0, chunk: int = 8):
    """Batches of example indices of similar length: shuffle with ``seed``, sort each run of ``chunk`` batches by
    length, cut it into batches and shuffle the batches' order. Each example comes once per epoch, as with
    :func:`index_batches`, and a batch cut after its widest row (as ``fit`` cuts it) carries little padding: on
    task A at 32 tokens, 8,768 tokens an epoch instead of 13,120 (480 examples, batches of 32). As many batches
    as :func:`index_batches` yields.

    >>> import torch
    >>> lengths = torch.tensor([9, 2, 8, 3, 7, 1])
    >>> batches = [b.tolist() for b in length_bucketed_batches(lengths, 2, chunk=3)]
    >>> sorted(sorted(lengths[b].tolist()) for b in batches)
    [[1, 2], [3, 7], [8, 9]]
    """
    import torch

    if chunk < 1:
        raise ValueError(f"chunk={chunk!r}: it must be a positive number of batches")
    n, lengths = len(lengths), torch.as_tensor(lengths)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    groups = []
    for start in range(0, n, batch_size * chunk):
        part = order[start:start + batch_size * chunk]
        part = part[torch.argsort(lengths[part], stable=True)]
        groups += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    shuffled = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    for i in shuffled:
        yield groups[i]


def real_lengths(attention_mask) -> "torch.Tensor":
    """Each row's width up to and including its last real token, on the CPU. A batch needs no column past its
    widest row's: the padding after it is masked out, so dropping it changes nothing but the work (left padding,
    whose real tokens end in the last column, keeps every column).

    >>> import torch
    >>> mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]])
    >>> real_lengths(mask).tolist()
    [2, 3, 4]
    """
    import torch

    mask = attention_mask.detach().cpu().bool()
    return (mask * torch.arange(1, mask.shape[1] + 1)).amax(1)


def batches_per_epoch(examples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch: each process takes its share of the examples, rounded up, in batches
    (as many as :func:`index_batches` yields).

    >>> batches_per_epoch(100, 32), batches_per_epoch(100, 32, world_size=2)
    (4, 2)
    """
    return math.ceil(math.ceil(examples / world_size) / batch_size)


def as_tensors(data) -> tuple:
    """``(input_ids, attention_mask, labels)`` from a ``TensorDataset`` (what :func:`encode` returns) or a tuple of
    three tensors of one length; anything else raises a ``ValueError`` that says what is expected.

    >>> import torch
    >>> [t.shape[0] for t in as_tensors((torch.zeros(4, 3), torch.ones(4, 3), torch.zeros(4)))]
    [4, 4, 4]
    """
    tensors = getattr(data, "tensors", None)
    tensors = tuple(data) if tensors is None else tensors
    if len(tensors) != 3 or len({len(t) for t in tensors}) != 1:
        raise ValueError("expected (input_ids, attention_mask, labels) of one length, e.g. from "
                         "layerfreeze.encode(split, tokenizer)")
    return tensors


def encode(split, tokenizer, max_length: int = 64):
    """Tokenize one split into a ``TensorDataset`` of ``(input_ids, attention_mask, labels)``, padded to the
    split's longest text (at most ``max_length`` tokens). ``split`` is a split of :func:`load_task` (or any table
    with ``text`` and ``label`` columns), or a list of ``{"text", "label"}`` rows as
    :func:`~layerfreeze.base.tasks.generate_task` returns.

    >>> from transformers import AutoTokenizer
    >>> from layerfreeze.base.tasks import generate_task
    >>> from layerfreeze.base.models import resolve_model_source
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm"))
    >>> [t.shape for t in encode(generate_task("a", 3), tokenizer, max_length=8).tensors]
    [torch.Size([3, 8]), torch.Size([3, 8]), torch.Size([3])]
    """
    import torch

    texts, labels = texts_and_labels(split)
    _check_max_length(max_length, tokenizer)
    batch = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return torch.utils.data.TensorDataset(batch["input_ids"], batch["attention_mask"],
                                          torch.tensor(labels, dtype=torch.long))


def texts_and_labels(split) -> tuple[list[str], list[int]]:
    """The ``text`` and ``label`` columns of a split, checked: strings, and whole numbers of at least 0."""
    if isinstance(split, list) and all(isinstance(row, dict) for row in split):
        columns = {key: [row.get(key) for row in split] for key in ("text", "label")}
    elif hasattr(split, "__getitem__") and hasattr(split, "column_names") or isinstance(split, dict):
        names = split.column_names if hasattr(split, "column_names") else list(split)
        columns = {key: list(split[key]) if key in names else None for key in ("text", "label")}
    else:
        columns = {"text": None, "label": None}
    if columns["text"] is None or columns["label"] is None:
        raise ValueError(f"split must have 'text' and 'label' columns (a split of load_task, e.g. "
                         f"load_task('a')['train'], or a list of {{'text', 'label'}} rows); got {type(split).__name__}")
    if not columns["text"]:
        raise ValueError("split is empty: there is nothing to encode (check the limit given to load_task)")
    if len(columns["text"]) != len(columns["label"]):
        raise ValueError(f"split has {len(columns['text'])} texts but {len(columns['label'])} labels")
    bad_text = next((t for t in columns["text"] if not isinstance(t, str)), None)
    if bad_text is not None:
        raise ValueError(f"split's texts must be strings, got {bad_text!r}")
    for label in columns["label"]:
        check_int("a label", label, 0)
    return columns["text"], [int(label) for label in columns["label"]]


def _check_max_length(max_length, tokenizer) -> None:
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be a tokenizer, as load_model returns it; got {type(tokenizer).__name__}")
    special = tokenizer.num_special_tokens_to_add() if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    longest = getattr(tokenizer, "model_max_length", None)  # a huge sentinel when the tokenizer sets no limit
    check_int("max_length", max_length, special + 1, longest if isinstance(longest, int) and longest < 10**6 else None)

