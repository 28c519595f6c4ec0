import json
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from layerfreeze.base import data as data_module
from layerfreeze.base import tasks as tasks_module
from layerfreeze import encode, load_task, num_labels
from layerfreeze.base.tasks import generate_splits, generate_task

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("task", ["a", "b", "c"])
def test_committed_files_are_the_generators_output(task):
    splits = tasks_module.generate_splits(task)
    for split, rows in splits.items():
        lines = (DATA / f"task_{task}" / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == rows, f"regenerate with write_task_files('data') ({split})"


def test_data_is_small():
    assert sum(f.stat().st_size for f in DATA.rglob("*.jsonl")) < 5 * 2 ** 20


@pytest.mark.parametrize("task", ["a", "b", "c"])
def test_splits_are_disjoint_balanced_and_noisy_as_documented(task):
    splits = tasks_module.generate_splits(task)
    texts = [set(r["text"] for r in rows) for rows in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    counts = Counter(r["label"] for r in splits["train"])
    classes = len(tasks_module.LABEL_NAMES[task])
    assert len(counts) == classes
    assert max(counts.values()) / min(counts.values()) < 1.25


def test_label_noise_rate():
    clean = generate_task("a", 4000, seed=7, label_noise=0.0)
    noisy = generate_task("a", 4000, seed=7, label_noise=0.04)
    # the same texts come out; only labels differ, on about 4% of rows
    assert [r["text"] for r in clean] == [r["text"] for r in noisy]
    flipped = sum(c["label"] != n["label"] for c, n in zip(clean, noisy)) / 4000
    assert 0.03 < flipped < 0.05


def test_task_a_needs_structure_not_just_words():
    """Most reviews mix a positive and a negative clause, so counting sentiment words cannot solve the task."""
    rows = generate_task("a", 3000, seed=3, label_noise=0.0)
    positive, negative = set(tasks_module._POSITIVE), set(tasks_module._NEGATIVE)

    def word_vote(text):
        words = text.replace(",", " ").replace(".", " ").split()
        return int(sum(w in positive for w in words) >= sum(w in negative for w in words))

    accuracy = sum(word_vote(r["text"]) == r["label"] for r in rows) / len(rows)
    assert accuracy < 0.7
    markers = Counter(m for r in rows for m in ("but", "although", "not", "however") if re.search(rf"\b{m}\b", r["text"]))
    assert all(markers[m] > 200 for m in ("but", "although", "not", "however"))


def tfidf_accuracy(task, difficulty):
    """TF-IDF of words and word pairs, logistic regression: what a bag of n-grams can read from the task."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    splits = generate_splits(task, sizes={"train": 2000, "validation": 10, "test": 500}, difficulty=difficulty)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([r["text"] for r in splits["train"]])
    read = lambda split: (vectorizer.transform([r["text"] for r in splits[split]]), [r["label"] for r in splits[split]])
    return LogisticRegression(C=10, max_iter=2000).fit(*read("train")).score(*read("test"))


def test_task_c_is_read_from_its_structure_not_its_words():
    """The marker's rule labels every text; words and neighbouring pairs do not, unless the task is made easy."""
    families = {word: k for k, family in enumerate(tasks_module._C_FAMILIES) for word in family}

    def rule(text):
        words = text.rstrip(".").split()
        return families[words[words.index(tasks_module._C_MARKER) + 2]]

    for difficulty in tasks_module.DIFFICULTIES:
        rows = generate_task("c", 500, seed=3, label_noise=0.0, difficulty=difficulty)
        assert all(rule(r["text"]) == r["label"] for r in rows)
        every_family = all(all(any(w in families and families[w] == k for w in r["text"].rstrip(".").split())
                               for k in range(4)) for r in rows)
        assert every_family == (difficulty != "easy")
    assert tfidf_accuracy("c", "easy") > 0.95
    assert tfidf_accuracy("c", "standard") < 0.40 and tfidf_accuracy("c", "hard") < 0.40  # chance: 0.25


def test_difficulty_turns_each_tasks_knobs_and_standard_is_the_committed_data():
    hard, easy = (generate_task("b", 600, seed=3, label_noise=0.0, difficulty=d) for d in ("hard", "easy"))
    side = lambda rows: sum("," in r["text"] for r in rows) / len(rows)  # a side remark joins with a comma
    assert side(hard) > 0.9 > 0.35 > side(easy)
    assert generate_task("a", 50, seed=1) == generate_task("a", 50, seed=1, difficulty="standard")
    verdicts = lambda d: sum(" overall, " in r["text"] or "all in all" in r["text"] or "in the end" in r["text"]
                             for r in generate_task("a", 2000, seed=3, difficulty=d))
    assert verdicts("easy") > 2 * verdicts("standard") > 4 * verdicts("hard")


def test_load_task_takes_a_difficulty_for_the_generated_tasks_only():
    hard = load_task("c", difficulty="hard", limit={"train": 16})
    assert "difficulty 'hard'" in hard.note and hard["train"].features["label"].names == tasks_module.LABEL_NAMES["c"]
    assert load_task("c", limit={"train": 16})["train"].num_rows == 16  # the committed files
    with pytest.raises(ValueError, match="applies to the generated tasks \\(a, b, c\\) only; got difficulty='hard' "
                                         "for task 'sst2'"):
        load_task("sst2", difficulty="hard")
    with pytest.raises(ValueError, match="difficulty must be one of easy, standard, hard"):
        load_task("a", difficulty="Hard")


def test_task_b_mentions_other_topics():
    rows = generate_task("b", 1000, seed=3, label_noise=0.0)
    side_remarks = sum(any(c in r["text"] for c in (" while ", " even as ", " just as ", " after ", " although "))
                       or r["text"].startswith(("while", "even as", "just as", "after", "although")) for r in rows)
    assert side_remarks > 500


def test_generator_is_seeded():
    assert generate_task("a", 50, seed=1) == generate_task("a", 50, seed=1)
    assert generate_task("a", 50, seed=1) != generate_task("a", 50, seed=2)
    with pytest.raises(ValueError, match="valid: a, b, c"):
        generate_task("d", 5)
    with pytest.raises(ValueError, match="difficulty must be one of easy, standard, hard; got 'medium'"):
        generate_task("a", 5, difficulty="medium")


def test_load_task_columns_and_labels():
    splits = load_task("b", limit={"train": 64})
    assert set(splits) == {"train", "validation", "test"}
    assert splits["train"].column_names == ["text", "label"] and splits["train"].num_rows == 64
    assert splits["train"].features["label"].names == ["sports", "technology", "food", "travel", "finance"]
    assert num_labels(splits) == 5
    assert splits["test"].num_rows == tasks_module.SPLIT_SIZES["test"]


def test_load_task_without_files_generates_the_same(monkeypatch, tmp_path):
    monkeypatch.setattr(data_module, "data_dir", lambda: None)
    generated = load_task("a")
    monkeypatch.undo()
    assert generated["validation"]["text"] == load_task("a")["validation"]["text"]


def test_bad_names_are_clear():
    with pytest.raises(ValueError, match="valid: a, b, c, sst2, ag_news, imdb"):
        load_task("mnli")
    with pytest.raises(ValueError, match="valid splits: train, validation, test"):
        load_task("a", limit={"dev": 10})


@pytest.mark.parametrize("name, columns, splits", [
    ("sst2", {"idx": [0], "sentence": ["x"]}, ["train", "validation", "test"]),
    ("ag_news", {}, ["train", "test"]),
    ("imdb", {}, ["train", "test", "unsupervised"]),
])
def test_hub_datasets_map_to_text_and_label(monkeypatch, name, columns, splits):
    """Hub loading is mocked (no network here): the mapping to text/label columns is what is tested."""
    text_column = data_module.HUB_DATASETS[name][1]

    def fake_load_dataset(hub_id, *args, **kwargs):
        assert hub_id == data_module.HUB_DATASETS[name][0]
        def split(n, labelled=True):
            labels = [i % 2 if labelled else -1 for i in range(n)]
            features = {text_column: datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
            if "idx" in columns:
                features["idx"] = datasets.Value("int32")
            return datasets.Dataset.from_dict({text_column: [f"t{i}" for i in range(n)], "label": labels,
                                               **({"idx": list(range(n))} if "idx" in columns else {})},
                                              features=None if not labelled else datasets.Features(features))
        return datasets.DatasetDict({s: split(40, labelled=not (name == "sst2" and s == "test")) for s in splits})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_task(name)
    assert set(loaded) == {"train", "validation", "test"}
    for split in loaded.values():
        assert split.column_names == ["text", "label"]
        assert min(split["label"]) >= 0  # sst2's unlabelled test split is never used


def test_encode(minilm):
    _, tokenizer = minilm
    split = load_task("a", limit={"train": 16})["train"]
    dataset = encode(split, tokenizer, max_length=12)
    ids, mask, labels = dataset.tensors
    assert ids.shape == mask.shape == (16, 12) and labels.dtype == torch.long
    assert labels.tolist() == split["label"]


def test_data_card_regenerates_the_committed_files(tmp_path, monkeypatch):
    """The card's own command, run as written (in another folder), writes what is committed."""
    command = re.search(r'python -c "([^"]+)"', (DATA / "README.md").read_text()).group(1)
    monkeypatch.chdir(tmp_path)
    exec(command, {})
    for path in sorted(DATA.glob("task_*/*.jsonl")):
        assert (tmp_path / "data" / path.parent.name / path.name).read_text() == path.read_text(), path


def test_data_card_counts_match_the_files():
    card = (DATA / "README.md").read_text()
    for task in "abc":
        for split, rows in tasks_module.generate_splits(task).items():
            counts = Counter(r["label"] for r in rows)
            per_label = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(tasks_module.LABEL_NAMES[task]))
            assert f"| {task} | {split} | {len(rows)} | {per_label} |" in card
    assert f"{tasks_module.LABEL_NOISE:.0%} of the **training** labels" in card


# --- your own data: files, folders and Hub ids through one path -------------------------------------------------

from tests.task_files import FORMATS, write_task  # noqa: E402


@pytest.mark.parametrize("fmt", FORMATS)
def test_local_files_and_hub_layout_load_as_tasks(tmp_path, fmt):
    source = write_task("b", tmp_path, fmt)
    splits = load_task(str(source), seed=3)
    assert set(splits) == {"train", "validation", "test"}
    assert all(split.column_names == ["text", "label"] for split in splits.values())
    assert num_labels(splits) == 5
    texts = [set(split["text"]) for split in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    if fmt == "hub":  # the folder's own splits, nothing made
        assert [splits[s].num_rows for s in ("train", "validation", "test")] == [400, 100, 100]
        assert "own train, validation and test" in splits.note
    else:  # one table: test, then validation carved from it, seeded and reported
        assert sum(s.num_rows for s in splits.values()) == 600
        assert "test split made from train" in splits.note and "validation split made from train" in splits.note
        assert load_task(str(source), seed=3)["test"]["text"] == splits["test"]["text"]
        assert load_task(str(source), seed=4)["test"]["text"] != splits["test"]["text"]


def test_other_columns_and_string_labels(tmp_path):
    source = write_task("a", tmp_path, "csv", text_column="review", label_column="stars", label_names=True)
    splits = load_task(str(source), text_column="review", label_column="stars", limit={"train": 50})
    assert splits["train"].column_names == ["text", "label"] and splits["train"].num_rows == 50
    assert splits["train"].features["label"].names == ["negative", "positive"]
    names = splits["train"].features["label"].names
    rows = tasks_module.generate_splits("a", sizes={"train": 400, "validation": 100, "test": 100})
    truth = {r["text"]: tasks_module.LABEL_NAMES["a"][r["label"]] for split in rows.values() for r in split}
    assert all(names[label] == truth[text] for text, label in zip(splits["train"]["text"], splits["train"]["label"]))


def test_whole_number_labels_not_from_zero_are_renumbered_and_reported(tmp_path):
    path = tmp_path / "stars.jsonl"
    path.write_text("".join(json.dumps({"text": f"review {i}", "label": 1 + i % 3}) + "\n" for i in range(60)))
    splits = load_task(str(path))
    assert splits["train"].features["label"].names == ["1", "2", "3"] and num_labels(splits) == 3
    assert "numbered 0 to 2" in splits.note
    assert set(splits["train"]["label"]) == {0, 1, 2}


def test_bad_files_and_columns_name_the_file_and_the_column(tmp_path):
    source = write_task("a", tmp_path, "jsonl")
    with pytest.raises(ValueError, match=r"task_a\.jsonl .*no column 'review' \(text_column\); "
                                         r"its columns: text, label"):
        load_task(str(source), text_column="review")
    with pytest.raises(ValueError, match=r"no column 'stars' \(label_column\)"):
        load_task(str(source), label_column="stars")
    odd = tmp_path / "task.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError, match=r"task\.xlsx: format '\.xlsx' is not read; valid: \.csv"):
        load_task(str(odd))
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(ValueError, match=r"file .*broken\.parquet could not be read"):
        load_task(str(broken))
    with pytest.raises(ValueError, match="not a file or folder here, nor a Hub dataset id"):
        load_task(str(tmp_path / "missing.csv"))
    scores = tmp_path / "scores.csv"
    scores.write_text("text,label\nfine,0.5\ngood,1.5\n")
    with pytest.raises(ValueError, match=r"scores\.csv: column 'label' \(label_column\) must hold strings or whole"):
        load_task(str(scores))
    with pytest.raises(ValueError, match="text_column must be a column name"):
        load_task(str(source), text_column="")


def test_uncached_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"'nobody/no-such-dataset' is not in the local cache and the Hub is offline"):
        load_task("nobody/no-such-dataset")


def test_suggest_max_length_cuts_only_long_data(minilm):
    _, tokenizer = minilm
    from layerfreeze.base.data import suggest_max_length
    task_a = load_task("a")["train"]
    longest = max(len(ids) for ids in tokenizer(list(task_a["text"]))["input_ids"])
    assert suggest_max_length(task_a, tokenizer) == longest <= 64  # nothing cut: the course's numbers stay
    long_rows = [{"text": "word " * (10 + i), "label": 0} for i in range(100)]  # 12 to 111 tokens
    assert suggest_max_length(long_rows, tokenizer, cap=256) == 111
    assert suggest_max_length(long_rows, tokenizer, percentile=50, cap=64) == 12 + 49
    assert suggest_max_length(long_rows, tokenizer, percentile=95, cap=64) == 64
    with pytest.raises(ValueError, match="percentile must be"):
        suggest_max_length(long_rows, tokenizer, percentile=120)


def test_length_buckets_cover_every_example_once_with_less_padding():
    from layerfreeze.base.data import batches_per_epoch, index_batches, length_bucketed_batches
    lengths = torch.randint(4, 33, (300,), generator=torch.Generator().manual_seed(0))
    bucketed = list(length_bucketed_batches(lengths, 16, seed=3))
    shuffled = list(index_batches(300, 16, shuffle=True, seed=3))
    assert sorted(torch.cat(bucketed).tolist()) == list(range(300))
    assert len(bucketed) == len(shuffled) == batches_per_epoch(300, 16)
    padded = {name: sum(int(lengths[b].max()) * len(b) for b in batches)
              for name, batches in (("bucketed", bucketed), ("shuffled", shuffled))}
    assert padded["bucketed"] < 0.8 * padded["shuffled"]
    assert [b.tolist() for b in length_bucketed_batches(lengths, 16, seed=3)] == [b.tolist() for b in bucketed]
    with pytest.raises(ValueError, match="chunk=0"):
        list(length_bucketed_batches(lengths, 16, chunk=0))


def test_label_noise_is_in_the_training_split_only():
    splits = generate_splits("a", seed=5, sizes={"train": 600, "validation": 300, "test": 300})
    true = {row["text"]: row["label"] for row in generate_task("a", 3 * 1200, seed=5, label_noise=0.0)}
    flipped = {split: sum(row["label"] != true[row["text"]] for row in rows) for split, rows in splits.items()}
    assert flipped["validation"] == flipped["test"] == 0 and 10 < flipped["train"] < 40  # about 4% of 600
