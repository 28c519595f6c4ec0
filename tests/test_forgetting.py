import numpy as np
import pytest
import torch

from layerfreeze import Adaptive, Expansion, Gradual, Lisa, Lora, Strategy, evaluate, layer_groups, tiny_model
from layerfreeze.core.forgetting import (backward_transfer, cka_by_layer, embedding_agreement, forgetting, learning,
                                         linear_cka)
from layerfreeze.study.sequential import sequential_run, train_task_a, tuned_sequential_run, with_new_head
from layerfreeze.core.plans import Plan
from tests.test_training import toy_task


def test_forgetting_hand_computed():
    # 3 tasks. Task 0 peaks at 0.9 after itself, ends at 0.5: forgets 0.4. Task 1 peaks 0.8, ends 0.7: forgets 0.1.
    R = [[0.9, 0.2, 0.1],
         [0.6, 0.8, 0.3],
         [0.5, 0.7, 0.95]]
    result = forgetting(R)
    assert result["per_task"] == pytest.approx([0.4, 0.1])
    assert result["mean"] == pytest.approx(0.25)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    R = [[0.5, 0.0, 0.0], [0.8, 0.6, 0.0], [0.7, 0.6, 0.9]]  # task 0 improved after task 1, then fell back
    assert forgetting(R)["per_task"] == pytest.approx([0.1, 0.0])


def test_backward_transfer_hand_computed():
    R = [[0.9, 0.2, 0.1],
         [0.6, 0.8, 0.3],
         [0.5, 0.7, 0.95]]
    # (R[2][0] - R[0][0] + R[2][1] - R[1][1]) / 2 = (-0.4 - 0.1) / 2
    assert backward_transfer(R) == pytest.approx(-0.25)
    assert backward_transfer([[0.7, 0.1], [0.8, 0.9]]) == pytest.approx(0.1)  # positive transfer


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="square"):
        forgetting([[0.9, 0.1]])
    with pytest.raises(ValueError, match="at least two tasks"):
        backward_transfer([[0.9]])
    assert learning(0.2, 0.85) == pytest.approx(0.65)


def test_cka_known_cases():
    torch.manual_seed(0)
    x = torch.randn(200, 16, dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert linear_cka(x, x @ q) == pytest.approx(1.0)  # orthogonal transform
    assert linear_cka(x, 5.0 * x + 3.0) == pytest.approx(1.0)  # isotropic scale and shift
    assert linear_cka(x, torch.randn(200, 16, dtype=torch.float64)) < 0.2  # unrelated
    y = x @ torch.randn(16, 16, dtype=torch.float64)  # a general linear map lowers it, but not to zero
    assert 0.2 < linear_cka(x, y) < 1.0
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, x[:10])


def test_model_b_shares_the_body_and_has_its_own_head():
    model_a = tiny_model("bert", num_layers=2)
    model_b = with_new_head(model_a, num_labels=5)
    assert all(b is a for a, b in zip(model_a.bert.encoder.layer, model_b.bert.encoder.layer))
    assert model_b.bert.embeddings is model_a.bert.embeddings
    assert model_b.bert.pooler is not model_a.bert.pooler
    assert model_b.classifier.out_features == 5 and model_a.classifier.out_features == 2
    ids = torch.randint(5, 90, (2, 6))
    assert model_b(input_ids=ids).logits.shape == (2, 5)


def test_drift_is_zero_for_the_same_model_and_positive_after_change():
    original = tiny_model("bert", num_layers=2)
    ids, mask, _ = toy_task(64)
    assert cka_by_layer(original, original, ids, mask) == pytest.approx([1.0, 1.0, 1.0])
    assert embedding_agreement(original, original, ids, mask) == pytest.approx(1.0)
    moved = tiny_model("bert", num_layers=2)
    with torch.no_grad():
        moved.bert.encoder.layer[1].output.dense.weight.add_(torch.randn_like(moved.bert.encoder.layer[1].output.dense.weight))
    cka = cka_by_layer(original, moved, ids, mask)
    assert cka[0] == pytest.approx(1.0) and cka[1] == pytest.approx(1.0) and cka[2] < 0.99


@pytest.mark.parametrize("strategy", [
    Strategy("full", "all"),
    Strategy("freeze bottom 1", "top", k=2),  # 3 blocks: the bottom one frozen, the top two train
    Strategy("head", "head"),
    Strategy("bitfit", "bitfit"),
    Strategy("gradual", schedule=Gradual()),
    Strategy("lora", adapter=Lora(rank=2)),
], ids=lambda s: s.name)
def test_sequential_protocol(strategy):
    pretrained = tiny_model("bert", num_layers=3)
    a_train, a_eval = toy_task(64, seed=1), toy_task(32, seed=2)
    b_ids, b_mask, b_labels = toy_task(64, seed=3)
    b_train = (b_ids, b_mask, (b_ids[:, 0] % 3))  # a 3-class task B
    b_eval = (b_train[0][:32], b_train[1][:32], b_train[2][:32])
    model_a = train_task_a(pretrained, a_train, a_eval, epochs=2, batch_size=16, progress=False)
    head_a = {n: p.detach().clone() for n, p in model_a.named_parameters() if n.startswith(("classifier", "bert.pooler"))}
    result = sequential_run(model_a, strategy, b_train, a_eval, b_eval, 3, epochs=2, batch_size=16,
                            probe=a_eval[:2], test_b=b_eval, progress=False)
    assert len(result.a_during_b) == len(result.b_during_b) == 2
    summary = result.summary()
    assert summary["forgetting"] == pytest.approx(max(result.a_after_a, 0) - result.a_during_b[-1])
    assert len(result.cka) == 4 and 0 <= result.agreement <= 1.0 + 1e-6
    assert result.trainable_params > 0
    for name, value in head_a.items():  # model_a (the caller's) is untouched, and head A never trained
        assert torch.equal(dict(model_a.named_parameters())[name], value)
    assert summary["a_after_b"] == pytest.approx(sum(result.correct["a_after"]) / 32)
    assert summary["b_after_b"] == pytest.approx(sum(result.correct["b_after"]) / 32)
    if strategy.name == "head":  # the shared body never moved: A keeps its accuracy, and CKA against A is 1
        assert result.a_during_b == [result.a_after_a] * 2
        assert result.cka == pytest.approx([1.0] * 4)
    if strategy.name == "full":  # B moved the shared body: the top layer no longer matches the model after A
        assert result.cka[-1] < 1 - 1e-6


@pytest.mark.parametrize("strategy", [
    Strategy("plan", plan=Plan("top block", ["block.2", "head"])),
    Strategy("lisa", schedule=Lisa(gamma=1, every=2)),
    Strategy("adaptive", schedule=Adaptive(interval=2, window=1, threshold=100.0)),
    Strategy("expansion", adapter=Expansion(every=3)),
], ids=lambda s: s.name)
def test_sequential_protocol_runs_the_llm_methods(strategy):
    pretrained = tiny_model("bert", num_layers=3)
    a_train, a_eval = toy_task(64, seed=1), toy_task(32, seed=2)
    b_ids, b_mask, _ = toy_task(64, seed=3)
    b_train = (b_ids, b_mask, (b_ids[:, 0] % 3))
    model_a = train_task_a(pretrained, a_train, a_eval, epochs=1, batch_size=16, progress=False)
    result = sequential_run(model_a, strategy, b_train, a_eval, b_train, 3, epochs=2, batch_size=16,
                            progress=False)
    assert len(result.b_during_b) == 2 and result.step_seconds > 0 and result.estimated_memory_mib > 0
    # the run starts from model A's accuracy on A (an expanded body computes model A's function at first)
    assert result.a_after_a == evaluate(model_a, a_eval)["accuracy"]
    if strategy.name == "adaptive":  # it froze the lowest blocks, and the cache took them over
        assert len(result.phases) > 1
    if strategy.name == "lisa":
        assert len(result.phases) == 4


def test_tuned_run_keeps_the_rates_that_bs_validation_prefers():
    pretrained = tiny_model("bert", num_layers=2, seed=0)
    a_train, a_eval = toy_task(48, seed=1), toy_task(32, seed=2)
    b_ids, b_mask, _ = toy_task(48, seed=3)
    b_train = (b_ids, b_mask, b_ids[:, 0] % 3)
    b_validation = tuple(t[:32] for t in b_train)
    model_a = train_task_a(pretrained, a_train, a_eval, epochs=1, batch_size=16, progress=False)
    grid = [(1e-9, 1e-9), (1e-2, 1e-2)]  # a rate that cannot learn B, and one that can
    run = tuned_sequential_run(model_a, Strategy("all", "all"), grid, b_train, a_eval, b_validation, 3, epochs=3,
                               batch_size=16, progress=False)
    scores = run["validation_by_lr"]
    assert set(scores) == {str(rates) for rates in grid} and str(run["lr"]) == max(scores, key=scores.get)
    assert run["b_validation_final"] == max(scores.values()) > min(scores.values())
    alone = sequential_run(model_a, Strategy("all", "all", lr=run["lr"][0], head_lr=run["lr"][1]), b_train, a_eval,
                           b_validation, 3, epochs=3, batch_size=16, progress=False)
    assert run["correct"] == alone.correct  # "before" measured once for the search: the same as a run's own
    assert run["a_during_b"][-1] == np.mean(run["correct"]["a_after"]) == run["a_after_b"]


def test_a_measured_only_at_the_end_is_the_same_a():
    pretrained = tiny_model("bert", num_layers=2, seed=0)
    data = toy_task(32, seed=1)
    model_a = train_task_a(pretrained, data, data, epochs=1, batch_size=16, progress=False)
    runs = [sequential_run(model_a, Strategy("all", "all", lr=1e-3, head_lr=1e-3), data, data, data, 2, epochs=3,
                           batch_size=16, progress=False, a_each_epoch=each) for each in (True, False)]
    assert len(runs[0].a_during_b) == 3 and runs[1].a_during_b == runs[0].a_during_b[-1:]
    assert runs[1].correct == runs[0].correct and runs[1].summary()["forgetting"] == runs[0].summary()["forgetting"]


def test_a_search_brackets_the_rates_it_keeps():
    pretrained = tiny_model("bert", num_layers=2, seed=0)
    data = toy_task(32, seed=1)
    model_a = train_task_a(pretrained, data, data, epochs=1, batch_size=16, progress=False)
    grid = [(1e-9, 1e-9), (1e-6, 1e-6), (1e-2, 1e-2), (1e-1, 1e-1)]
    run = tuned_sequential_run(model_a, Strategy("all", "all"), grid, data, data, data, 2, start=grid[1:3], epochs=2,
                               batch_size=16, progress=False)
    tried = [eval(rates) for rates in run["validation_by_lr"]]
    assert tried[:2] == grid[1:3] and len(tried) == 3 and run["lr"] in tried  # two starts, one step
    assert run["rate_edge"] == "" or run["lr"] in (grid[0], grid[-1])


def test_lora_adapts_gpt2s_conv1d_projections():
    model = tiny_model("gpt2", num_layers=2)
    data = toy_task(32)
    result = sequential_run(model, Strategy("lora", adapter=Lora(rank=2)), data, data, data, 2, epochs=1,
                            batch_size=16, progress=False)
    assert 0 < result.trainable_params < sum(p.numel() for p in model.parameters()) / 10



def test_notebooks_04_and_06_share_one_protocol():
    """Both notebooks build their settings from PROTOCOL, so model A and full fine-tuning on B are the same runs."""
    import json
    from pathlib import Path

    from layerfreeze.study.sequential import PROTOCOL, protocol_settings

    for stem in ("04_catastrophic_forgetting", "06_freezing_in_llm_work"):
        cells = json.loads((Path(__file__).parent.parent / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
        assert any("settings = protocol_settings(" in "".join(c["source"]) for c in cells), stem
    settings = protocol_settings(3, cpu={"epochs_b": 9, "probe": 100})
    assert settings["cpu"]["epochs_b"] == 9 and settings["cpu"]["probe"] == 100  # a notebook's own settings win
    assert settings["full"]["seeds"] == [3, 4, 5, 6, 7] and settings["full"]["train"] == PROTOCOL["full"]["train"]
    with pytest.raises(ValueError, match="extra names profiles \\['gpu'\\]; valid: smoke, cpu, full"):
        protocol_settings(0, gpu={})


def test_reconcile_lists_the_measured_differences_when_intervals_do_not_overlap():
    from layerfreeze.study.sequential import reconcile

    here = {"forgetting": 0.10, "forgetting_low": 0.05, "forgetting_high": 0.15, "a_after_a": 0.70,
            "lr": ["(0.0001, 0.001)"], "settings": {"epochs_b": 3, "train": 128}}
    there = {"forgetting": -0.02, "forgetting_low": -0.04, "forgetting_high": 0.0, "a_after_a": 0.66,
             "lr": ["(0.0003, 0.003)"], "settings": {"epochs_b": 2, "train": 128}}
    word, reasons = reconcile(here, there)
    assert word == "differ"
    assert reasons == ["epochs_b: 3 here, 2 there", "model A scored 0.700 on A here, 0.660 there",
                       "rates chosen: ['(0.0001, 0.001)'] here, ['(0.0003, 0.003)'] there"]
    assert reconcile(here, {**here, "forgetting_low": 0.15, "forgetting_high": 0.2}) == ("agree", [])  # touching
    assert reconcile(here, {**there, "forgetting_high": 0.049, "a_after_a": 0.70, "lr": here["lr"],
                            "settings": here["settings"]}) == ("differ", [])


def test_training_length_curves_follow_each_strategy_epoch_by_epoch_over_seeds():
    from layerfreeze.study.sequential import training_length_curves

    runs = [{"strategy": "full", "a_after_a": 0.9, "a_during_b": [0.8, 0.6], "b_during_b": [0.5, 0.9]},
            {"strategy": "full", "a_after_a": 0.8, "a_during_b": [0.8, 0.8], "b_during_b": [0.7, 0.9]},
            {"strategy": "LoRA", "a_after_a": 0.9, "a_during_b": [0.9, 0.85], "b_during_b": [0.4, 0.6]}]
    curves = training_length_curves(runs).set_index(["strategy", "epoch"])
    assert curves.loc[("full", 1), "forgetting"] == pytest.approx(5.0)  # 0.85 after A, 0.80 after epoch 1
    assert curves.loc[("full", 2), "forgetting"] == pytest.approx(15.0) and curves.loc[("full", 2), "b_accuracy"] == 0.9
    assert curves.loc[("LoRA", 2), "forgetting"] == pytest.approx(5.0) and len(curves) == 4
