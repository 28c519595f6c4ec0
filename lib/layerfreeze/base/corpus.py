"""Generated text for the kit's decoder: a *general* corpus it is pretrained on, and a *domain* it is fine-tuned on.

* **General text**: short paragraphs of one to three sentences in the register of tasks A and B (reviews of
  restaurants, films, phones and hotels; news about sports, technology, food, travel and finance), drawn from
  :mod:`layerfreeze.base.tasks`'s generators with a seed of their own, so no pretraining text is a task example.
* **The domain**: troubleshooting home devices, a register the general corpus never shows. Each symptom has one
  fix, worded for the device at hand. It comes in two forms of the same knowledge: **instructions**
  (a question as the prompt, the answer as the response: supervised fine-tuning) and **manual** prose
  (plain text: continued pre-training).

``data/README.md`` is the data card.

>>> general_texts(2, seed=0) == general_texts(2, seed=0)
True
>>> pair = domain_instructions(1, seed=0)[0]
>>> sorted(pair), pair["prompt"].startswith("question:")
(['prompt', 'response'], True)
"""

from __future__ import annotations

import functools
import random

from .tasks import KNOBS, _review, _topic_text

DEVICES = ["router", "printer", "thermostat", "smart speaker", "dishwasher", "e-reader", "camera drone",
           "washing machine", "coffee maker", "baby monitor"]
# symptom -> fix; "{d}" is the device. The fix depends on the symptom alone, so a held-out device is answerable.
FIXES = {
    "blinks red": "unplug the {d} for thirty seconds, then plug it back in and wait for a steady green light",
    "will not turn on": "check that the power cable is seated, then hold the power button of the {d} for five seconds",
    "shows error four": "open the back panel of the {d}, clear the filter, and restart the cycle",
    "forgets its settings": "replace the backup battery behind the rear cover of the {d}",
    "makes a grinding noise": "switch the {d} off, remove any debris from the fan, and tighten the mounting screws",
    "runs very hot": "move the {d} away from the wall so that its vents can breathe",
    "cannot join the network": "hold the pair button of the {d} until the light turns blue, then enter the key again",
    "freezes during updates": "download the firmware for the {d} again and install it from the settings menu",
    "drains its battery overnight": "turn off background sync in the power menu of the {d}",
    "beeps three times": "press reset on the underside of the {d} with a paper clip for ten seconds",
}
SYMPTOMS = list(FIXES)
_QUESTIONS = ["my {d} {s}. what should i do?", "the {d} {s}. how do i fix it?", "help: our {d} {s}.",
              "why does my {d} keep doing this? it {s}."]
_MANUAL = ["if the {d} {s}, {f}.", "when your {d} {s}, {f}.", "troubleshooting: the {d} {s}. to fix it, {f}.",
           "a {d} that {s} needs one step: {f}."]


def general_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` paragraphs of general text (one to three sentences each), reproducible from ``seed``."""
    rng = random.Random(f"general-{seed}")
    texts = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.choice((1, 2, 2, 3))):
            if rng.random() < 0.5:
                difficulty = rng.choice(sorted(KNOBS["a"]))
                sentences.append(_review(rng, **KNOBS["a"][difficulty])[0])
            else:
                sentences.append(_topic_text(rng, side=rng.random())[0])
        texts.append(" ".join(sentences))
    return texts


PRETRAINING_PARAGRAPHS, PRETRAINING_SEED = 60_000, 0
MANUAL_SHARE = 0.02  # of the pretraining corpus: a little manual text, as the web holds a few manuals


def pretraining_corpus(paragraphs: int = PRETRAINING_PARAGRAPHS, seed: int = PRETRAINING_SEED) -> list[str]:
    """The kit decoder's pretraining texts: ``paragraphs`` general paragraphs, with manual sentences of the domain
    mixed in at :data:`MANUAL_SHARE` (so the domain's words are known, as an LLM knows a little of every field;
    without them its perplexity on the domain's answers was 695,177, every word of them unseen)."""
    texts = general_texts(paragraphs, seed) + domain_manual(int(MANUAL_SHARE * paragraphs), seed + 500)
    random.Random(f"corpus-{seed}").shuffle(texts)
    return texts


@functools.lru_cache(maxsize=1)
def _pretraining_corpus() -> frozenset:
    return frozenset(pretraining_corpus())


def held_out_general(n: int, seed: int) -> list[str]:
    """``n`` general texts from ``seed`` that the kit decoder never saw in pretraining (the generator repeats some
    short paragraphs, so a text of another seed can also be in the corpus; about 6% are, and are skipped)."""
    if seed == PRETRAINING_SEED:
        raise ValueError(f"seed {seed} is the pretraining corpus's; held-out text needs another seed")
    seen, texts, drawn = _pretraining_corpus(), [], n
    while len(texts) < n:
        texts = [t for t in general_texts(drawn, seed) if t not in seen][:n]
        drawn += n
    return texts


def _domain_cases(n: int, seed: int, devices: list[str]) -> list[tuple[random.Random, str, str]]:
    rng = random.Random(f"domain-{seed}")
    return [(rng, rng.choice(devices), rng.choice(SYMPTOMS)) for _ in range(n)]


def domain_instructions(n: int, seed: int = 0, devices: list[str] | None = None) -> list[dict]:
    """``n`` ``{"prompt", "response"}`` pairs: a question about a device's symptom, and its fix."""
    pairs = []
    for rng, device, symptom in _domain_cases(n, seed, devices or DEVICES):
        question = rng.choice(_QUESTIONS).format(d=device, s=symptom)
        pairs.append({"prompt": f"question: {question}\nanswer:",
                      "response": " " + FIXES[symptom].format(d=device) + "."})
    return pairs


def domain_manual(n: int, seed: int = 0, devices: list[str] | None = None) -> list[str]:
    """``n`` sentences of manual prose holding the same knowledge as :func:`domain_instructions`, as plain text."""
    return [rng.choice(_MANUAL).format(d=device, s=symptom, f=FIXES[symptom].format(d=device))
            for rng, device, symptom in _domain_cases(n, seed, devices or DEVICES)]
