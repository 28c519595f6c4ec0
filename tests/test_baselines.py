import numpy as np
import pytest
import torch

from layerfreeze.base.data import load_task
from layerfreeze.base.models import tiny_model
from layerfreeze.study.baselines import Baseline, above_baselines, linear_probe, tfidf_logistic


def test_tfidf_reads_words_so_it_learns_a_word_rule_and_not_noise():
    words = {0: "apple banana", 1: "cherry grape"}
    rows = lambda n, seed: [{"text": f"{words[i % 2]} filler{seed}{i}", "label": i % 2} for i in range(n)]
    task = {"train": rows(40, 0), "validation": rows(20, 1), "test": rows(20, 2)}
    assert tfidf_logistic(task).accuracy == 1.0
    shuffled = np.random.default_rng(0).permutation([r["label"] for r in rows(40, 0)])
    task["train"] = [{"text": f"filler{i} word{i}", "label": int(y)} for i, y in enumerate(shuffled)]
    assert tfidf_logistic(task).accuracy < 0.8  # nothing in the words: no better than a guess or so


def test_the_chosen_c_is_the_validation_best_and_an_edge_choice_is_said():
    task = load_task("b", limit={"train": 200, "validation": 60, "test": 60})
    result = tfidf_logistic(task, grid=(0.01, 1.0, 100.0))
    assert result.c == max(result.validation_by_c, key=result.validation_by_c.get) or \
        result.validation_by_c[result.c] == max(result.validation_by_c.values())
    assert len(result.correct) == 60 and result.accuracy == result.correct.mean()
    assert ("edge" in result.note) == (result.c in (0.01, 100.0))
    with pytest.raises(ValueError, match="grid must hold at least two values of C above 0"):
        tfidf_logistic(task, grid=(1.0,))


def test_a_linear_probe_reads_a_feature_the_frozen_model_carries():
    torch.manual_seed(0)
    model = tiny_model("bert", num_layers=1)

    def split(n, seed):  # the label is which of two tokens fills the text: even random features separate them
        labels = torch.arange(n) % 2
        noise = torch.randint(10, 90, (n, 4), generator=torch.Generator().manual_seed(seed))
        ids = torch.cat([(5 + labels)[:, None].repeat(1, 6), noise], dim=1)
        return ids, torch.ones_like(ids), labels

    before = [p.clone() for p in model.parameters()]
    probe = linear_probe(model, split(40, 0), split(20, 1), split(20, 2))
    assert probe.accuracy == 1.0 and len(probe.correct) == 20
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the body is untouched


def test_gains_over_the_best_baseline_are_paired_over_the_same_examples():
    weak, strong = (Baseline(n, c.mean(), c, 1.0, {}) for n, c in
                    (("weak", np.array([0, 0, 1, 0.0] * 5)), ("strong", np.array([1, 0, 1, 0.0] * 5))))
    same = np.array([1, 0, 1, 0.0] * 5)
    table = above_baselines({"same": 0.5, "better": 1.0}, {"same": same, "better": np.ones(20)}, [weak, strong],
                            chance=0.25)
    assert table.attrs["baseline"] == "strong"
    assert table.loc["same", "above_baseline_points"] == 0 and table.loc["same", "above_baseline_high"] == 0
    assert table.loc["better", "above_baseline_points"] == 50 and table.loc["better", "above_baseline_low"] > 0
    assert table.loc["better", "above_chance_points"] == 75


def test_one_class_predictions_are_recognised_from_correctness_alone():
    from layerfreeze.study.baselines import predicts_one_class
    labels = np.array([0, 1, 1, 2, 0])
    assert predicts_one_class(labels == 1, labels) and predicts_one_class(labels == 0, labels)
    assert not predicts_one_class([1, 1, 1, 0, 1], labels)  # right on two classes: it tells them apart


def test_from_scratch_tries_every_rate_keeps_the_validation_best_and_leaves_base_untouched():
    from layerfreeze.study.baselines import from_scratch

    def split(n, seed):  # the label is the first token: a random-weights model can learn it in a few epochs
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 2, (n,), generator=g)
        ids = torch.randint(10, 90, (n, 6), generator=g)
        ids[:, 0] = 5 + labels
        return ids, torch.ones_like(ids), labels

    base = tiny_model("bert", num_layers=1)
    before = [p.clone() for p in base.parameters()]
    result = from_scratch(base, split(64, 0), split(32, 1), split(32, 2), grid=(1e-5, 3e-3), epochs=6, batch_size=16)
    assert set(result.validation_by_c) == {1e-5, 3e-3}
    assert result.c == max(result.validation_by_c, key=result.validation_by_c.get)
    assert result.c == 3e-3 and result.accuracy > 0.8  # the tiny rate learns nothing in 6 epochs; its grid saves it
    assert "upper edge" in result.note and "predicts a single class" not in result.note
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))
    with pytest.raises(ValueError, match="at least two learning rates"):
        from_scratch(base, split(8, 0), split(8, 1), split(8, 2), grid=(1e-3,))
