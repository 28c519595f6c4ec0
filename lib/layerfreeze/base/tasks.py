"""The kit's three generated text-classification tasks, from one seeded generator.

* Task **A**, sentiment of short reviews (2 labels). Most reviews hold a positive and a negative clause, so the
  words alone do not give the label: what counts is the structure, negation ("not bad"), contrast ("..., but ...")
  and concession ("although ..."). The clause that wins is the main one.
* Task **B**, topic (5 labels). Each text is about one topic but often mentions another in a side remark.
* Task **C**, far from both and from pretraining (4 labels): strings of made-up words, where the label is the family
  of the word two places after a marker word. Every text holds a word of every family, so neither words nor pairs
  of neighbouring words give the label away: only reading the structure does.

Each has a ``difficulty`` (:data:`DIFFICULTIES`: ``easy``, ``standard``, ``hard``); ``standard`` is the committed
data in ``data/`` (:func:`write_task_files` writes it; ``data/README.md`` is its data card).
:func:`~layerfreeze.base.data.load_task` reads them as datasets.

>>> [len(LABEL_NAMES[task]) for task in GENERATED_TASKS]
[2, 5, 4]
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DEFAULT_SEED = 1234
SPLIT_SIZES = {"train": 4000, "validation": 500, "test": 1000}
LABEL_NOISE = 0.04
LABEL_NAMES = {"a": ["negative", "positive"], "b": ["sports", "technology", "food", "travel", "finance"],
               "c": ["amber", "cobalt", "jade", "ochre"]}
DIFFICULTIES = ("easy", "standard", "hard")
# Each generated task's knobs at each difficulty; "standard" is the committed data. a: the share of reviews that mix
# both polarities, and of those closing with a verdict that gives the label away; b: the share with a side remark
# about another topic; c: the filler words per text, how many words of each other family a text holds (easy: none, so
# the key word alone gives the label away), and whether a decoy marker points at another family's word.
KNOBS = {
    "a": {"easy": dict(mixed=0.5, verdict=0.4), "standard": dict(mixed=0.85, verdict=0.15),
          "hard": dict(mixed=0.97, verdict=0.03)},
    "b": {"easy": dict(side=0.3), "standard": dict(side=0.65), "hard": dict(side=0.95)},
    "c": {"easy": dict(fillers=(6, 10), per_family=0, decoy=False),
          "standard": dict(fillers=(6, 10), per_family=1, decoy=False),
          "hard": dict(fillers=(8, 14), per_family=2, decoy=True)},
}

# --- task A: compositional sentiment ---------------------------------------------------------------------------

_DOMAINS = {
    "restaurant": (["food", "soup", "pasta", "service", "waiter", "dessert", "menu", "coffee", "staff", "bread"],
                   "the restaurant"),
    "film": (["plot", "acting", "ending", "soundtrack", "script", "dialogue", "pacing", "lead actor", "camera work",
              "villain"], "the film"),
    "phone": (["battery", "screen", "camera", "speaker", "charger", "keyboard", "software", "case", "design",
               "price"], "the phone"),
    "hotel": (["room", "bed", "view", "pool", "breakfast", "location", "shower", "reception", "wifi", "lobby"],
              "the hotel"),
}
_POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "pleasant", "impressive", "lovely", "solid",
             "fantastic", "delightful", "brilliant"]
_NEGATIVE = ["bad", "awful", "terrible", "poor", "disappointing", "dreadful", "weak", "mediocre", "horrible",
             "annoying", "dull", "sloppy"]
_INTENSIFIERS = ["", "", "", "really ", "truly ", "rather ", "quite ", "absolutely "]
_NEGATIONS = ["not", "never", "hardly", "far from"]
_VERBS_POSITIVE = [("love", "loved"), ("enjoy", "enjoyed"), ("like", "liked"), ("adore", "adored")]
_VERBS_NEGATIVE = [("hate", "hated"), ("dislike", "disliked"), ("regret", "regretted"), ("mind", "minded")]


def _clause(rng: random.Random, aspect: str, polarity: int) -> str:
    """A clause about ``aspect`` whose sentiment is ``polarity`` (1 positive, 0 negative)."""
    negated = rng.random() < 0.35
    # Under negation the surface word has the opposite polarity: "not bad" is positive.
    surface_positive = (polarity == 1) != negated
    if rng.random() < 0.7:
        adjective = rng.choice(_POSITIVE if surface_positive else _NEGATIVE)
        verb = rng.choice(["were", "are", "seemed", "felt"] if aspect.endswith("s") else ["was", "is", "seemed", "felt"])
        modifier = rng.choice(_NEGATIONS) if negated else rng.choice(_INTENSIFIERS).strip()
        return " ".join(w for w in ("the", aspect, verb, modifier, adjective) if w)
    base, past = rng.choice(_VERBS_POSITIVE if surface_positive else _VERBS_NEGATIVE)
    return f"i did not {base} the {aspect}" if negated else f"i {past} the {aspect}"


def _review(rng: random.Random, mixed: float, verdict: float) -> tuple[str, int]:
    aspects, subject = _DOMAINS[rng.choice(sorted(_DOMAINS))]
    first, second = rng.sample(aspects, 2)
    label = rng.randrange(2)
    other = 1 - label if rng.random() < mixed else label  # most reviews mix both polarities
    pattern = rng.random()
    if pattern < 0.12:
        text = _clause(rng, first, label)
    elif pattern < 0.40:  # contrast: the clause after "but" decides
        text = f"{_clause(rng, first, other)}, but {_clause(rng, second, label)}"
    elif pattern < 0.62:  # concession first: "although X, Y" - Y decides
        text = f"{rng.choice(['although', 'even though', 'while'])} {_clause(rng, first, other)}, " \
               f"{_clause(rng, second, label)}"
    elif pattern < 0.78:  # concession last: "Y, although X" - Y still decides
        text = f"{_clause(rng, second, label)}, {rng.choice(['although', 'even though'])} {_clause(rng, first, other)}"
    elif pattern < 0.90:  # "however": the second sentence decides
        text = f"{_clause(rng, first, other)}. however, {_clause(rng, second, label)}"
    else:  # three clauses: "although X, Y, but Z" - the clause after "but" decides
        third = rng.choice([a for a in aspects if a not in (first, second)])
        text = f"although {_clause(rng, first, label)}, {_clause(rng, second, other)}, but {_clause(rng, third, label)}"
    if rng.random() < verdict:  # a closing verdict, which gives the label away
        verdict = rng.choice(["overall", "all in all", "in the end"])
        text = f"{text}. {verdict}, {subject} was {rng.choice(_POSITIVE if label else _NEGATIVE)}"
    return text + ".", label


# --- task B: topic ----------------------------------------------------------------------------------------------

_TOPICS = {
    "sports": (["the striker", "the goalkeeper", "the coach", "the home team", "the champion", "the rookie",
                "the captain", "the referee"],
               ["scored twice in the final", "signed a new contract", "was injured during training",
                "won the league title", "lost the semi-final on penalties", "broke the national record",
                "was sent off in the second half", "announced retirement after the season"]),
    "technology": (["the startup", "the chip maker", "the software team", "the new laptop", "the app",
                    "the research lab", "the operating system", "the cloud service"],
                   ["released a security update", "shipped a faster processor", "fixed a serious bug",
                    "launched an open source model", "suffered a long outage", "added support for new devices",
                    "doubled its battery life", "moved its servers to a new data centre"]),
    "food": (["the chef", "the bakery", "the new cafe", "the street vendor", "the family recipe",
              "the vegan menu", "the wine bar", "the cooking show"],
             ["introduced a seasonal tasting menu", "baked bread with ancient grains", "won a prize for its curry",
              "switched to local vegetables", "served a spicy noodle soup", "brewed coffee from rare beans",
              "was praised for its desserts", "opened a second kitchen"]),
    "travel": (["the airline", "the island resort", "the mountain village", "the tour guide", "the night train",
                "the old harbour", "the national park", "the cruise ship"],
               ["added flights to the coast", "reopened its hiking trails", "drew record numbers of tourists",
                "offered cheaper tickets in winter", "was delayed by a storm", "opened a new scenic route",
                "required visitors to book ahead", "welcomed backpackers from abroad"]),
    "finance": (["the central bank", "the pension fund", "the stock market", "the insurer", "the investor",
                 "the bond market", "the lender", "the treasury"],
                ["raised interest rates again", "reported higher quarterly profits", "cut its growth forecast",
                 "sold its stake in the company", "fell sharply after the report", "issued new government bonds",
                 "warned about rising inflation", "approved a large merger"]),
}
_CONNECTORS = ["while", "even as", "just as", "after", "although"]


def _topic_text(rng: random.Random, side: float) -> tuple[str, int]:
    names = LABEL_NAMES["b"]
    label = rng.randrange(len(names))
    subjects, events = _TOPICS[names[label]]
    main = f"{rng.choice(subjects)} {rng.choice(events)}"
    if rng.random() < side:  # a side remark from another topic, before or after the main clause
        other_subjects, other_events = _TOPICS[rng.choice([n for n in names if n != names[label]])]
        side = f"{rng.choice(other_subjects)} {rng.choice(other_events)}"
        if rng.random() < 0.5:
            text = f"{rng.choice(_CONNECTORS)} {side}, {main}"
        else:
            text = f"{main}, {rng.choice(_CONNECTORS)} {side}"
    else:
        text = main
    return text + ".", label


# --- task C: far from A and from pretraining ---------------------------------------------------------------------

def _made_up_words(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct pronounceable words that are in no English dictionary: two or three syllables each."""
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "", "n", "r", "l", "k"]
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.choice((2, 3))))
        if word not in words:
            words.append(word)
    return words


# One fixed vocabulary for every seed: the marker, the decoy marker, 10 words per family, 40 fillers.
_C_WORDS = _made_up_words(2 + 4 * 10 + 40, random.Random("task-c-vocabulary"))
_C_MARKER, _C_DECOY = _C_WORDS[:2]
_C_FAMILIES = [_C_WORDS[2 + 10 * k:12 + 10 * k] for k in range(4)]
_C_FILLERS = _C_WORDS[42:]


def _far_text(rng: random.Random, fillers: tuple[int, int], per_family: int, decoy: bool) -> tuple[str, int]:
    """Made-up words; the label is the family of the word two places after the marker (``marker filler KEY``).
    Every family appears ``per_family`` times (at ``per_family >= 1`` counting words or pairs of neighbours gives
    nothing away); a decoy marker points the same way at another family's word."""
    label = rng.randrange(len(_C_FAMILIES))
    key = rng.choice(_C_FAMILIES[label])
    others = [rng.choice(family) for k, family in enumerate(_C_FAMILIES) for _ in range(per_family) if k != label]
    others += [rng.choice(_C_FAMILIES[label]) for _ in range(per_family - 1)]
    words = [rng.choice(_C_FILLERS) for _ in range(rng.randint(*fillers))] + others
    rng.shuffle(words)
    items = [[word] for word in words]  # the marker's span goes in whole, so no span splits another
    if decoy:
        pointed = next(i for i, word in enumerate(words) if word in others)
        items[pointed] = [_C_DECOY, rng.choice(_C_FILLERS), words[pointed]]
    items.insert(rng.randint(0, len(items)), [_C_MARKER, rng.choice(_C_FILLERS), key])
    return " ".join(word for item in items for word in item) + ".", label


_GENERATORS = {"a": _review, "b": _topic_text, "c": _far_text}
GENERATED_TASKS = tuple(_GENERATORS)


def generate_task(task: str, n: int, seed: int = DEFAULT_SEED, label_noise: float = LABEL_NOISE,
                  difficulty: str = "standard") -> list[dict]:
    """``n`` examples ``{"text", "label"}`` of generated task ``"a"``, ``"b"`` or ``"c"`` at ``difficulty``
    (:data:`KNOBS`); a fraction ``label_noise`` of labels is replaced by a random other label.

    >>> generate_task("b", 2, seed=0) == generate_task("b", 2, seed=0)
    True
    >>> generate_task("c", 1, seed=0, difficulty="easy")[0]["label"]
    2
    """
    if task not in _GENERATORS:
        raise ValueError(f"unknown generated task {task!r}; valid: {', '.join(_GENERATORS)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}; got {difficulty!r}")
    knobs = KNOBS[task][difficulty]
    rng = random.Random(f"{task}-{seed}")
    noise_rng = random.Random(f"{task}-{seed}-noise")  # separate, so the texts do not depend on the noise level
    num_labels = len(LABEL_NAMES[task])
    rows = []
    for _ in range(n):
        text, label = _GENERATORS[task](rng, **knobs)
        if noise_rng.random() < label_noise:
            label = noise_rng.choice([k for k in range(num_labels) if k != label])
        rows.append({"text": text, "label": label})
    return rows


def generate_splits(task: str, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None,
                    difficulty: str = "standard") -> dict[str, list[dict]]:
    """Train, validation and test splits of a generated task, with no text shared between splits. Label noise is in
    the training split only: validation and test keep the true labels, so a perfect model scores 100% there and
    a method's score is not capped by labels it could never get right."""
    sizes = sizes or SPLIT_SIZES
    noisy = generate_task(task, 3 * sum(sizes.values()), seed, difficulty=difficulty)
    clean = generate_task(task, 3 * sum(sizes.values()), seed, label_noise=0.0, difficulty=difficulty)
    unique = list({row["text"]: (row, true) for row, true in zip(noisy, clean)}.values())  # one row per text
    if len(unique) < sum(sizes.values()):
        raise RuntimeError(f"task {task!r} produced only {len(unique)} distinct texts for {sum(sizes.values())}")
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = [pair[0] if split == "train" else pair[1] for pair in unique[start:start + size]]
        start += size
    return splits


def write_task_files(data_dir: str | Path, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write ``task_a/``, ``task_b/`` and ``task_c/`` JSON-lines splits (standard difficulty) under ``data_dir``;
    returns the files written."""
    written = []
    for task in _GENERATORS:
        folder = Path(data_dir) / f"task_{task}"
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in generate_splits(task, seed).items():
            path = folder / f"{split}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            written.append(path)
    return written
