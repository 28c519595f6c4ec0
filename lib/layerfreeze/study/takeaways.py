"""The course's closing page, computed from every notebook's metrics (``build/results/*.json``): the verdicts of all
runs in one table, a decision guide (freeze which layers, LoRA, full fine-tuning, continued pre-training), and a
production checklist of the signals that show freezing helping or hurting. Each row cites this run's own numbers;
a notebook that did not run leaves its rows saying so, never a number made up.

>>> guide = decision_guide({})
>>> list(guide.columns), bool(guide["this course's evidence"].str.startswith("not measured").all())
(['when', 'choose', "this course's evidence"], True)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .evidence import VERDICTS, Finding

TAKEAWAYS = "07"  # this page's own number: its earlier metrics are not evidence


def _notebook(results: dict, number: str) -> dict | None:
    """The metrics of notebook ``number`` ("02"), whatever its file is called, or None if it did not run."""
    return next((metrics for stem, metrics in results.items() if stem.startswith(f"{number}_")), None)


def load_results(results_dir: str | Path) -> dict[str, dict]:
    """Every notebook's metrics in ``results_dir``, by notebook stem (``course_timing.json`` and this page's own
    earlier metrics left out)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"results_dir {str(results_dir)!r} is not a folder: run `make course` first, or pass the "
                         "output_dir the notebooks wrote to")
    return {path.stem: json.loads(path.read_text()) for path in sorted(results_dir.glob("[0-9][0-9]_*.json"))
            if not path.stem.startswith(f"{TAKEAWAYS}_")}


def _missing(notebook: str) -> str:
    return f"not measured: notebook {notebook} has no results in this run"


def role(strategy: dict) -> str | None:
    """What a results row's strategy is, read from its fields (:meth:`~layerfreeze.core.strategy.Strategy.describe`,
    or the preset columns of notebook 02's rows), never from its name: ``full``, ``head``, ``top k``, ``bottom k``,
    ``bitfit``, ``from scratch``, or the adapter's or schedule's kind in lower case (``lora``, ``gradual``...).

    >>> role({"preset": "top", "k": 2}), role({"preset": "all", "from_scratch": True}), role({"preset": "all"})
    ('top 2', 'from scratch', 'full')
    >>> role({"preset": "all", "adapter": {"kind": "Lora", "rank": 8}})
    'lora'
    """
    for part in ("adapter", "schedule"):
        if strategy.get(part):
            return strategy[part]["kind"].lower()
    if strategy.get("plan"):
        return None
    if strategy.get("from_scratch"):
        return "from scratch"
    preset = strategy.get("preset")
    return {"all": "full"}.get(preset, preset if strategy.get("k") is None else f"{preset} {strategy['k']}")


def _accuracies(results: dict) -> dict[str, dict] | None:
    """Notebook 02's rows by :func:`role`."""
    run = _notebook(results, "02")
    return None if run is None else {role(row): row for row in run["strategies"] if role(row)}


def _forgetting(results: dict) -> dict[str, dict] | None:
    """Notebook 04's summary rows by :func:`role`, each with its ``strategy`` name for the text."""
    run = _notebook(results, "04")
    if run is None:
        return None
    return {role(row.get("description") or {}): row for row in run["summary"] if role(row.get("description") or {})}


def _points(row: dict, measure: str) -> str:
    return (f"{row[measure] * 100:.1f} points (95% CI {row[measure + '_low'] * 100:.1f} to "
            f"{row[measure + '_high'] * 100:.1f})")


def _finding(results: dict, notebook: str, key: str) -> Finding | None:
    """The finding ``key`` of ``notebook`` (:class:`~layerfreeze.study.evidence.Finding`), or None."""
    found = map(Finding.from_record, (_notebook(results, notebook) or {}).get("verdicts", []))
    return next((f for f in found if f.key == key), None)


def _verdict(results: dict, notebook: str, key: str) -> str:
    """The verdict of the finding ``key`` of ``notebook``, else 'not run'."""
    found = _finding(results, notebook, key)
    return found.verdict if found else "not run"


def verdict_table(results: dict) -> pd.DataFrame:
    """Every verdict the notebooks computed, with the seeds behind it, what its interval resamples, and its likely
    reason where it does not hold.

    >>> verdict_table({"03_gradual_unfreezing": {"verdicts": [{"ULMFiT finding": "Last underfits",
    ...     "verdict": "holds", "likely reason": ""}]}}).iloc[0].to_dict()
    {'notebook': '03', 'finding': 'Last underfits', 'verdict': 'holds', 'seeds': 1, 'interval over': 'test sample', 'likely reason': ''}
    """
    rows = []
    for stem, metrics in results.items():
        findings = [Finding.from_record(row) for row in metrics.get("verdicts", [])]
        findings += [Finding(a["source"], f"{a['source']}: {a['claim']}", a["verdict"],
                             reason=a.get("likely reason", "")) for a in metrics.get("anchors", [])
                     if a.get("verdict") in VERDICTS]
        rows += [{"notebook": stem[:2], "finding": f.claim, "verdict": f.verdict, "seeds": f.seeds,
                  "interval over": f.interval_kind, "likely reason": f.reason} for f in findings]
    return pd.DataFrame(rows, columns=["notebook", "finding", "verdict", "seeds", "interval over", "likely reason"])


def _guide_freeze(results: dict) -> str:
    acc = _accuracies(results)
    if acc is None or not {"head", "full"} <= set(acc):
        return _missing("02")
    top = max((r for r in acc if r.startswith("top ")), key=lambda r: int(r.split()[1]))
    head, full, upper = acc["head"], acc["full"], acc[top]
    lower = acc.get(top.replace("top", "bottom"))  # as many blocks, from the other end
    return (f"02: {head['name']} {head['test_accuracy']:.1%}, {upper['name']} {upper['test_accuracy']:.1%} "
            f"({upper['test_accuracy'] / full['test_accuracy']:.0%} of {full['name']}'s {full['test_accuracy']:.1%}) "
            + (f"and {lower['name']} {lower['test_accuracy']:.1%}, " if lower else "")
            + f"with {upper['percent_trainable']:.0f}% of the parameters trainable and "
            f"{upper['estimated_memory_mib']:.0f} MiB estimated against {full['estimated_memory_mib']:.0f} MiB; "
            f"'full beats head only': {_verdict(results, '02', 'full_beats_head_only')}; "
            f"'top beats bottom': {_verdict(results, '02', 'top_beats_bottom')}")


def _guide_full(results: dict) -> str:
    acc, forgot = _accuracies(results), _forgetting(results)
    parts = []
    if acc:
        best = max((row for r, row in acc.items() if r != "from scratch"), key=lambda row: row["test_accuracy"])
        parts.append(f"02: best strategy {best['name']} ({best['test_accuracy']:.1%})")
    if forgot is not None and "full" in forgot:
        parts.append(f"04: full fine-tuning learned {_points(forgot['full'], 'learning')} on task B and forgot "
                     f"{_points(forgot['full'], 'forgetting')} of task A")
    return "; ".join(parts) or _missing("02 or 04")


def _guide_keep_old_task(results: dict) -> str:
    forgot = _forgetting(results)
    if forgot is None:
        return _missing("04")
    order = sorted(forgot.values(), key=lambda row: row["forgetting"])
    return ("04, forgetting of task A, least first: "
            + "; ".join(f"{row['strategy']} {_points(row, 'forgetting')}" for row in order)
            + f"; 'more frozen layers, less forgetting': {_verdict(results, '04', 'more_frozen_less_forgetting')}")


def _guide_lora(results: dict) -> str:
    forgot = _forgetting(results)
    if forgot is None or "lora" not in forgot:
        return _missing("04")
    lora, full = forgot["lora"], forgot.get("full", {})
    return (f"04: {lora['strategy']} trained {lora['trainable_params']:,} parameters against full's "
            f"{full.get('trainable_params', float('nan')):,}; learned {_points(lora, 'learning')}, forgot "
            f"{_points(lora, 'forgetting')}; 'LoRA learns less': {_verdict(results, '04', 'lora_learns_less')}, "
            f"'LoRA forgets less': {_verdict(results, '04', 'lora_forgets_less')}")


def _guide_continued_pretraining(results: dict) -> str:
    decoder = (_notebook(results, "04") or {}).get("decoder", {})
    rows = {row["strategy"]: row for row in decoder.get("summary", [])}
    if "continued pre-training" not in rows or "full" not in rows:
        return _missing("04")
    found = {row["key"]: row for row in decoder.get("findings", [])}

    def told(key: str) -> str:
        row = found.get(key, {})
        return f"{row.get('verdict', 'not tested')} ({row.get('difference (95% CI)', '')})"

    shown = "; ".join(f"{name}: domain gain x{rows[name]['domain_gain']:.2f}, general rise x{rows[name]['general_rise']:.2f}"
                      for name in ("continued pre-training", "full"))
    return (f"04 ({decoder.get('model')}, {rows['full']['seeds']} seed(s)): {shown}; 'supervised fine-tuning gains more "
            f"on the domain's instructions': {told('sft_gains_more_than_cpt')}; 'it raises general perplexity more': "
            f"{told('sft_forgets_more_than_cpt')}")


# Each row of the guide: when, what to choose, the finding that must hold for this run to back the choice (notebook,
# key; None where no single finding decides), what the run backs instead where it refutes that finding, and the
# run's evidence.
GUIDE_ROWS = (
    ("memory or compute is tight, and the pretrained features nearly fit the task",
     "freeze the embeddings and the lower blocks; train the top blocks and the head (cache the frozen prefix)",
     ("02", "top_beats_bottom"), "train the bottom blocks and the head, as many as the budget allows",
     _guide_freeze),
    ("the new task's accuracy is what counts, and the model's other abilities do not",
     "full fine-tuning, its rate chosen on validation data", ("02", "full_beats_head_only"),
     "a new head on the frozen body", _guide_full),
    ("one shared model must keep an earlier task or general ability",
     "freeze the bottom blocks or use LoRA, and measure forgetting on a held-out general task",
     ("04", "more_frozen_less_forgetting"), None, _guide_keep_old_task),
    ("many tasks on one base model, or adapters to store and swap",
     "LoRA, rank 8-16, alpha = 2 x rank, on attention and MLP projections", ("04", "lora_forgets_less"),
     "full fine-tuning forgot less here: store full copies, or measure LoRA on your task first", _guide_lora),
    ("the text is far from the pretraining data, and unlabelled domain text is plentiful",
     "continued pre-training on the domain text first, then one of the above", None, None,
     _guide_continued_pretraining),
)


def choice(results: dict, advice: str, finding: tuple[str, str] | None, contrary: str | None = None) -> str:
    """``advice`` where this run's ``finding`` holds; ``contrary`` where the run refutes it (the whole interval on
    the other side of the claim's threshold), saying that the usual advice is refuted; otherwise the advice marked
    as not backed here, with the verdict, so the guide never recommends against its own evidence.

    >>> run = {"02_x": {"verdicts": [{"key": "k", "finding": "a beats b", "verdict": "within noise"}]}}
    >>> choice(run, "train a", ("02", "k"))
    "no clear choice from this run ('a beats b': within noise); the usual advice: train a"
    >>> run = {"02_x": {"verdicts": [{"key": "k", "finding": "a beats b", "verdict": "does not hold",
    ...                               "difference (95% CI)": "-9.0 points (-14.0 to -4.0)", "high": -0.04}]}}
    >>> choice(run, "train a", ("02", "k"), "train b")
    "train b: this run refutes the usual advice (train a): 'a beats b' does not hold, -9.0 points (-14.0 to -4.0)"
    """
    if finding is None:
        return f"the usual advice (no finding of this course tests it): {advice}"
    notebook, key = finding
    row = _finding(results, notebook, key)
    if row is None:
        return f"not tested in this run (notebook {notebook}); the usual advice: {advice}"
    if row.verdict == "holds":
        return advice
    if contrary and row.verdict == "does not hold" and row.high is not None and row.high < row.threshold:
        return f"{contrary}: this run refutes the usual advice ({advice}): '{row.claim}' does not hold, {row.difference}"
    return f"no clear choice from this run ('{row.claim}': {row.verdict}); the usual advice: {advice}"


def decision_guide(results: dict) -> pd.DataFrame:
    """When to freeze which layers, when LoRA, when full fine-tuning, when continued pre-training; each choice
    backed by a finding of this run (or marked as not backed), each row with the run's evidence."""
    rows = [(when, choice(results, advice, finding, contrary), evidence(results))
            for when, advice, finding, contrary, evidence in GUIDE_ROWS]
    return pd.DataFrame(rows, columns=["when", "choose", "this course's evidence"])


def llm_work(results: dict) -> pd.DataFrame:
    """Notebook 06's findings: each signal against the oracle, the failure modes it looked for (seen or not) and its
    guide's choices, as rows."""
    run = _notebook(results, "06")
    if run is None:
        return pd.DataFrame([{"what": "notebook 06", "result": _missing("06")}])
    oracle = run.get("oracle", {})
    rows = [{"what": f"signal: {row['signal']} (proposed {row['proposal']})",
             "result": ("untestable here: every plan within noise of the oracle" if oracle.get("untestable") else
                        f"{row['verdict']}: regret {row['regret_points']:+.1f} points against {oracle.get('plan')}")
             + _rank(row.get("rank_correlation"))}
            for row in oracle.get("signals", [])]
    rows += [{"what": f"failure mode: {row['failure mode']}", "result": "seen" if row.get("seen") else "not seen"}
             for row in run.get("failure_modes", [])]
    rows += [{"what": f"priority: {row['priority']}", "result": f"{row['choose']} ({row['because']})"}
             for row in run.get("guide", [])]
    rows += [{"what": f.claim, "result": f.verdict + (f" ({f.reason})" if f.reason else "")}
             for f in map(Finding.from_record, run.get("verdicts", []))]
    return pd.DataFrame(rows, columns=["what", "result"])


def _rank(rho) -> str:
    return "" if rho is None or rho != rho else f", rank correlation with training {rho:+.2f}"


def _check_head_plateau(results: dict) -> str:
    acc = _accuracies(results)
    if acc is None or not {"head", "full"} <= set(acc):
        return _missing("02")
    head, full = (acc[r]["epochs"][-1]["eval_accuracy"] for r in ("head", "full"))
    rising = acc["head"]["name"] in _notebook(results, "02").get("still_rising", [])
    return (f"02: {acc['head']['name']} ended at {head:.1%} validation accuracy "
            f"({'still rising' if rising else 'flat'}), full fine-tuning at {full:.1%}")


def _check_still_rising(results: dict) -> str:
    parts = [f"{stem[:2]}: {', '.join(metrics['still_rising'])}" for stem, metrics in results.items()
             if metrics.get("still_rising")]
    measured = [stem for stem, metrics in results.items() if "still_rising" in metrics]
    if not measured:
        return _missing("02 or 03")
    return "still rising at the last epoch: " + ("; ".join(parts) if parts else "none")


def _check_forgetting(results: dict) -> str:
    forgot = _forgetting(results)
    if forgot is None or "full" not in forgot:
        return _missing("04")
    return f"04: full fine-tuning on task B cost task A {_points(forgot['full'], 'forgetting')}"


def _check_drift(results: dict) -> str:
    cka = (_notebook(results, "04") or {}).get("cka", {})
    if "full" not in cka:
        return _missing("04")
    layer, value = min(cka["full"].items(), key=lambda item: item[1])
    return f"04: under full fine-tuning, task B moved {layer} most (CKA {value:.2f} against the model after A)"


def _check_lesson(results: dict, lesson: str, sentence: str) -> str:
    lessons = (_notebook(results, "01") or {}).get("requires_grad_lessons")
    if lessons is None:
        return _missing("01")
    return f"01: {sentence}: {'yes' if lessons.get(lesson) else 'no'}"


def checklist(results: dict) -> pd.DataFrame:
    """The signals that show freezing helping or hurting in production, each with what this run showed."""
    rows = [
        ("a head-only (linear probe) plateau well below the full model",
         "frozen features do not separate the task: unfreeze blocks, choosing which on validation (02 compares "
         "top and bottom)", _check_head_plateau(results)),
        ("a validation curve still rising when training stopped",
         "the comparison is not settled: train longer before choosing", _check_still_rising(results)),
        ("training loss falling while validation stalls (a growing train/validation gap)",
         "overfitting: freeze more, or stop early", "fit's history holds the training and validation loss of every "
         "epoch (lf.fit(...).frame())"),
        ("accuracy on a held-out general task drops after fine-tuning",
         "forgetting: freeze more layers, use LoRA, or mix in old data", _check_forgetting(results)),
        ("representation drift (CKA against the model before this fine-tuning) in the lower layers",
         "the fine-tuning rewrites general features, not just the top", _check_drift(results)),
        ("AdamW state, or a stale gradient, on a parameter that is now frozen",
         "a frozen weight can still move (weight decay, momentum): drop its gradient (zero_grad(set_to_none=True)) and "
         "add newly trainable groups to the live optimizer, which keeps the others' moments (lf.optim.follow_schedule)",
         _check_lesson(results, "stale_grad_moved_weight", "a frozen weight moved through a stale gradient")),
        ("frozen layers left in train mode",
         "dropout and BatchNorm still change them: keep frozen groups in eval mode",
         _check_lesson(results, "dropout_differs", "frozen embeddings in train mode gave two different outputs")),
    ]
    return pd.DataFrame(rows, columns=["signal", "what it means", "this course's run"])
