"""The closing page: built from every notebook's metrics, it cites their numbers and says what was not measured."""

import json

import pytest

from layerfreeze.study.takeaways import checklist, decision_guide, load_results, verdict_table


def _summary(name, forgetting, learning, params):
    return {"strategy": name, "forgetting": forgetting, "forgetting_low": forgetting - 0.02,
            "forgetting_high": forgetting + 0.02, "learning": learning, "learning_low": learning - 0.03,
            "learning_high": learning + 0.03, "trainable_params": params}


RESULTS = {
    "01_parameter_inspection": {"profile": "cpu", "requires_grad_lessons": {"dropout_differs": True,
                                                                            "stale_grad_moved_weight": True}},
    "02_freezing_early_vs_late": {
        "profile": "cpu", "still_rising": ["top 1"],
        "strategies": [{"name": name, "test_accuracy": acc, "percent_trainable": pct, "estimated_memory_mib": mem,
                        "epochs": [{"eval_accuracy": acc - 0.01}]}
                       for name, acc, pct, mem in [("head only", 0.70, 0.1, 300), ("top 1", 0.85, 7.0, 350),
                                                   ("top 3", 0.92, 22.0, 500), ("all", 0.94, 100.0, 900),
                                                   ("from scratch", 0.50, 100.0, 900)]],
        "verdicts": [{"finding": "full beats head only", "verdict": "holds", "likely reason": ""}],
        "anchors": [{"source": "Lee et al. 2019", "claim": "the last quarter keeps >= 90% of full",
                     "verdict": "within noise"},
                    {"source": "Raschka ch. 6", "claim": "all layers: 96.7%", "verdict": "a different task"}]},
    "04_catastrophic_forgetting": {
        "profile": "cpu", "summary": [_summary("full", 0.10, 0.75, 22_700_000), _summary("head only", 0.0, 0.5, 1000),
                                      _summary("LoRA", 0.03, 0.74, 300_000)],
        "verdicts": [{"finding": "LoRA learns less than full fine-tuning (Biderman et al.)", "verdict": "within noise",
                      "likely reason": "likely reason: task B is easy"}],
        "cka": {"full": {"layer 0": 1.0, "layer 6": 0.62}}, "decoder": {"model": "tiny:gpt2", "skipped": True}},
}


def test_load_results_reads_the_notebooks_and_leaves_out_timing_and_itself(tmp_path):
    for stem, metrics in RESULTS.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(metrics))
    (tmp_path / "course_timing.json").write_text("{}")
    (tmp_path / "07_takeaways.json").write_text("{}")
    assert list(load_results(tmp_path)) == list(RESULTS)
    with pytest.raises(ValueError, match="results_dir"):
        load_results(tmp_path / "missing")


def test_verdicts_from_every_notebook_but_no_pattern_rows():
    table = verdict_table(RESULTS)
    assert list(table["notebook"]) == ["02", "02", "04"]
    assert "Raschka" not in " ".join(table["finding"])
    assert table.iloc[2]["likely reason"] == "likely reason: task B is easy"


def test_the_guide_cites_the_runs_numbers_and_says_what_was_not_measured():
    guide = decision_guide(RESULTS).set_index("choose")["this course's evidence"]
    freeze = guide[guide.index.str.startswith("freeze the embeddings")].iloc[0]
    assert "top 3 92.0%" in freeze and "98% of full" in freeze and "'full beats the probe': holds" in freeze
    lora = guide[guide.index.str.startswith("LoRA")].iloc[0]
    assert "300,000" in lora and "'LoRA learns less': within noise" in lora
    keep_old_task = guide[guide.index.str.startswith("freeze the bottom")].iloc[0]
    assert "forgetting of task A, least first: head only" in keep_old_task
    assert guide[guide.index.str.startswith("continued")].iloc[0].startswith("not measured")


def test_the_checklist_reports_this_runs_signals():
    checks = checklist(RESULTS).set_index("signal")["this course's run"]
    assert "02: top 1" in checks.iloc[1]
    assert "layer 6" in checks.iloc[4] and "0.62" in checks.iloc[4]
    assert checks.iloc[6].endswith("yes")
    assert checklist({})["this course's run"].str.contains("not measured|fit's history").all()
