"""The closing page: built from every notebook's metrics, it cites their numbers and says what was not measured."""

import json

import pytest

from layerfreeze.study.takeaways import checklist, decision_guide, load_results, verdict_table


def _summary(name, description, forgetting, learning, params):
    return {"strategy": name, "description": description, "forgetting": forgetting, "forgetting_low": forgetting - 0.02,
            "forgetting_high": forgetting + 0.02, "learning": learning, "learning_low": learning - 0.03,
            "learning_high": learning + 0.03, "trainable_params": params}


RESULTS = {
    "01_parameter_inspection": {"profile": "cpu", "requires_grad_lessons": {"dropout_differs": True,
                                                                            "stale_grad_moved_weight": True}},
    "02_freezing_early_vs_late": {
        "profile": "cpu", "still_rising": ["top 1"],
        "strategies": [{"name": name, "preset": preset, "k": k, "from_scratch": name == "from scratch",
                        "test_accuracy": acc, "percent_trainable": pct, "estimated_memory_mib": mem,
                        "epochs": [{"eval_accuracy": acc - 0.01}]}
                       for name, preset, k, acc, pct, mem in [
                           ("head only", "head", None, 0.70, 0.1, 300), ("top 1", "top", 1, 0.85, 7.0, 350),
                           ("top 3", "top", 3, 0.92, 22.0, 500), ("all", "all", None, 0.94, 100.0, 900),
                           ("from scratch", "all", None, 0.50, 100.0, 900)]],
        "verdicts": [{"key": "full_beats_head_only", "finding": "full beats head only", "verdict": "holds",
                      "likely reason": ""}],
        "anchors": [{"source": "Lee et al. 2019", "claim": "the last quarter keeps >= 90% of full",
                     "verdict": "within noise"},
                    {"source": "Raschka ch. 6", "claim": "all layers: 96.7%", "verdict": "a different task"}]},
    "04_catastrophic_forgetting": {
        "profile": "cpu",
        "summary": [_summary("full", {"preset": "all"}, 0.10, 0.75, 22_700_000),
                    _summary("head only", {"preset": "head"}, 0.0, 0.5, 1000),
                    _summary("LoRA", {"preset": "all", "adapter": {"kind": "Lora", "rank": 8}}, 0.03, 0.74, 300_000)],
        "verdicts": [{"key": "lora_learns_less", "finding": "LoRA learns less than full fine-tuning (Biderman et al.)",
                      "verdict": "within noise", "likely reason": "likely reason: task B is easy"}],
        "cka": {"full": {"layer 0": 1.0, "layer 6": 0.62}}, "decoder": {"model": "kit-decoder", "summary": [], "findings": []}},
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
    guide = decision_guide(RESULTS).set_index("when")["this course's evidence"]
    freeze = guide[guide.index.str.startswith("memory or compute")].iloc[0]
    assert "top 3 92.0%" in freeze and "98% of all's" in freeze and "'full beats head only': holds" in freeze
    lora = guide[guide.index.str.startswith("many tasks")].iloc[0]
    assert "300,000" in lora and "'LoRA learns less': within noise" in lora
    keep_old_task = guide[guide.index.str.startswith("one shared model")].iloc[0]
    assert "forgetting of task A, least first: head only" in keep_old_task
    assert guide[guide.index.str.startswith("the text is far")].iloc[0].startswith("not measured")


def test_the_checklist_reports_this_runs_signals():
    checks = checklist(RESULTS).set_index("signal")["this course's run"]
    assert "02: top 1" in checks.iloc[1]
    assert "layer 6" in checks.iloc[4] and "0.62" in checks.iloc[4]
    assert checks.iloc[6].endswith("yes")
    assert checklist({})["this course's run"].str.contains("not measured|fit's history").all()


def test_the_guide_reads_fields_not_names():
    """Renamed strategies and reworded findings give the same verdicts: the page reads roles and keys."""
    renamed = json.loads(json.dumps(RESULTS))
    for row in renamed["02_freezing_early_vs_late"]["strategies"]:
        row["name"] = "strategy " + row["name"].upper()
    for row in renamed["04_catastrophic_forgetting"]["summary"]:
        row["strategy"] = "method " + row["strategy"].upper()
    for notebook in ("02_freezing_early_vs_late", "04_catastrophic_forgetting"):
        renamed[notebook]["verdicts"][0]["finding"] = "reworded"
    guide = decision_guide(renamed).set_index("when")["this course's evidence"]
    assert "'full beats head only': holds" in guide[guide.index.str.startswith("memory or compute")].iloc[0]
    lora = guide[guide.index.str.startswith("many tasks")].iloc[0]
    assert "method LORA trained 300,000" in lora and "'LoRA learns less': within noise" in lora


def test_the_guide_recommends_only_what_this_runs_finding_backs():
    flipped = json.loads(json.dumps(RESULTS))
    full_row = lambda results: decision_guide(results).set_index("when")["choose"].filter(like="accuracy is what").iloc[0]
    assert full_row(RESULTS) == "full fine-tuning, its rate chosen on validation data"  # its finding holds
    flipped["02_freezing_early_vs_late"]["verdicts"][0]["verdict"] = "does not hold"
    assert full_row(flipped).startswith("no clear choice from this run ('full beats head only': does not hold)")
    del flipped["02_freezing_early_vs_late"]
    assert full_row(flipped).startswith("not tested in this run (notebook 02)")


def test_notebook_06s_failure_modes_and_guide_reach_the_takeaways():
    from layerfreeze.study.takeaways import llm_work

    run = {"06_freezing_in_llm_work": {"failure_modes": [{"failure mode": "head-only plateau", "seen": True}],
                                       "guide": [{"priority": "memory", "choose": "LoRA", "because": "164 MiB"}]}}
    table = llm_work(run).set_index("what")["result"]
    assert table["failure mode: head-only plateau"] == "seen" and table["priority: memory"] == "LoRA (164 MiB)"
    assert "not measured" in llm_work({}).iloc[0]["result"]


def test_notebook_06s_oracle_verdicts_reach_the_takeaways():
    from layerfreeze.study.takeaways import llm_work

    signals = [{"signal": "probe", "proposal": "probe plan", "verdict": "costs accuracy", "regret_points": 26.7,
                "rank_correlation": -0.25},
               {"signal": "SNR", "proposal": "SNR plan", "verdict": "is the oracle", "regret_points": 0.0,
                "rank_correlation": None}]
    run = {"06_freezing_in_llm_work": {"oracle": {"plan": "SNR plan", "untestable": False, "signals": signals}}}
    table = llm_work(run).set_index("what")["result"]
    assert table["signal: probe (proposed probe plan)"] == ("costs accuracy: regret +26.7 points against SNR plan, "
                                                           "rank correlation with training -0.25")
    assert table["signal: SNR (proposed SNR plan)"] == "is the oracle: regret +0.0 points against SNR plan"
    run["06_freezing_in_llm_work"]["oracle"]["untestable"] = True
    assert llm_work(run)["result"].str.startswith("untestable here").all()


def test_where_the_run_refutes_the_usual_advice_the_guide_says_so_with_the_row():
    """Issue 38: bottom blocks beat top blocks in 02, so the guide must not tell a learner to train the top."""
    refuted = json.loads(json.dumps(RESULTS))
    run = refuted["02_freezing_early_vs_late"]
    run["strategies"].append({"name": "bottom 3", "preset": "bottom", "k": 3, "test_accuracy": 0.95,
                              "percent_trainable": 22.0, "estimated_memory_mib": 500,
                              "epochs": [{"eval_accuracy": 0.94}]})
    run["verdicts"].append({"key": "top_beats_bottom", "finding": "top 3 beats bottom 3", "verdict": "does not hold",
                            "difference (95% CI)": "-3.0 points (-5.0 to -1.0)", "estimate": -0.03, "low": -0.05,
                            "high": -0.01})
    guide = decision_guide(refuted).set_index("when").filter(like="memory or compute", axis=0).iloc[0]
    assert guide["choose"].startswith("train the bottom blocks") and "refutes the usual advice" in guide["choose"]
    assert "bottom 3 95.0%" in guide["this course's evidence"]
    run["verdicts"][-1].update(high=0.01, verdict="within noise")  # the interval reaches zero: nothing refuted
    assert decision_guide(refuted).set_index("when")["choose"].filter(like="memory or compute").iloc[0].startswith(
        "no clear choice")
