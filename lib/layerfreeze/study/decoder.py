"""A pretrained decoder fine-tuned on a domain: what it gains there, and what it forgets of general text.

The protocol (:func:`domain_run`): copy the pretrained causal LM, set it up under a :class:`Strategy`, train it on
the domain, and measure perplexity on held-out domain answers (the domain gain) and on held-out general text (the
forgetting) before and after. Supervised fine-tuning trains on instructions, the prompt masked out of the loss;
**continued pre-training** trains every weight on the domain's plain manual text, with the LM loss on every token.
Both are scored on the same held-out instructions, so the gains compare. Rates are chosen on the domain's
validation split (its perplexity), never on the test splits.

The data is :mod:`layerfreeze.base.corpus`'s by default; any texts work (:func:`domain_data`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from ..base.corpus import domain_instructions, domain_manual, held_out_general
from ..base.data import batches_per_epoch
from ..base.text import encode_lm, encode_lm_rows
from ..core.evaluation import evaluate, is_causal_lm
from ..core.freezing import count_parameters
from ..core.layers import num_blocks
from ..core.plans import factory_plan
from ..core.strategy import Expansion, Lisa, Lora, Strategy
from ..core.training import fit
from .evidence import Interval, rate_fixed_across_seeds, seed_interval

SFT, CPT = "instructions", "manual text"
# body rates a decoder strategy chooses from (on the domain's validation perplexity), by a line search from two
RATE_GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
LORA_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
START, LORA_START = RATE_GRID[1:3], LORA_GRID[1:3]
PROTOCOL = {
    "smoke": dict(train=32, eval=32, general=32, epochs=1, batch_size=16, seeds=1, grid=RATE_GRID[2:3],
                  lora_grid=LORA_GRID[2:3], start=None, lora_start=None),
    "cpu": dict(train=96, eval=64, general=150, epochs=3, batch_size=16, seeds=3, grid=RATE_GRID,
                lora_grid=LORA_GRID, start=START, lora_start=LORA_START),
    "full": dict(train=768, eval=300, general=500, epochs=4, batch_size=32, seeds=5, grid=RATE_GRID,
                 lora_grid=LORA_GRID, start=START, lora_start=LORA_START),
}
GENERAL_SEED = 20_000  # general texts for evaluation: a seed the pretraining corpus never used


@dataclass
class DomainData:
    """The encoded sets of one decoder study: the domain's instructions (prompt masked) and manual text for
    training, held-out instructions for validation and test, and held-out general text."""

    instructions: tuple
    manual: tuple
    validation: tuple
    test: tuple
    general: tuple


def domain_data(tokenizer, train: int, eval: int, general: int, max_length: int = 96, seed: int = 0,
                pairs: list[dict] | None = None, manual: list[str] | None = None,
                general_texts_: list[str] | None = None) -> DomainData:
    """Encode a decoder study's data (:class:`DomainData`). By default the kit's generated domain and general
    text; ``pairs`` (``{"prompt", "response"}`` rows), ``manual`` (plain domain texts) and ``general_texts_`` bring
    your own. Validation and test pairs are the last ``2 * eval`` of ``pairs``."""
    pairs = pairs or domain_instructions(train + 2 * eval, seed)
    manual = manual or domain_manual(train, seed + 1)
    general = general_texts_ or held_out_general(general, GENERAL_SEED + seed)
    if len(pairs) < train + 2 * eval:
        raise ValueError(f"pairs holds {len(pairs)} rows; train={train} and eval={eval} need {train + 2 * eval}")

    held_out = pairs[-2 * eval:]
    train_pairs, validation, test = (encode_lm_rows(rows, tokenizer, max_length)
                                     for rows in (pairs[:train], held_out[:eval], held_out[eval:]))
    return DomainData(train_pairs, encode_lm(manual[:train], tokenizer, max_length), validation, test,
                      encode_lm(general, tokenizer, max_length))


def decoder_strategies(model: nn.Module, k: int, lora_rank: int = 8) -> dict[str, Strategy]:
    """Notebook 04's decoder strategies: full fine-tuning, the top ``k`` blocks (the bottom frozen), the bottom
    ``k`` blocks, LoRA, and continued pre-training (full fine-tuning on manual text: :func:`trains_on`)."""
    return {"full": Strategy("full", head_lr=None),
            f"top {k} blocks": Strategy(f"top {k} blocks", plan=factory_plan(model, k), head_lr=None),
            f"bottom {k} blocks": Strategy(f"bottom {k} blocks", plan=factory_plan(model, -k), head_lr=None),
            "LoRA": Strategy("LoRA", adapter=Lora(lora_rank), head_lr=None),
            "continued pre-training": Strategy("continued pre-training", head_lr=None)}


def llm_methods(model: nn.Module, total_steps: int, snr_plan, lora_rank: int = 8) -> dict[str, Strategy]:
    """Notebook 06's methods on a decoder, each in the regime it was designed for: LISA (two blocks drawn every
    quarter of the run, the embeddings and the head always training), Spectrum's SNR plan (``snr_plan``), LLaMA Pro's
    block expansion (one new block per half of the model, only the new blocks train), LLaMA-Factory's freeze
    tuning (the last two blocks' ``mlp``, then their ``self_attn``), LoRA, and full fine-tuning."""
    half = max(1, num_blocks(model) // 2)
    return {"full": Strategy("full", head_lr=None),
            "LISA": Strategy("LISA", schedule=Lisa(gamma=2, every=max(1, total_steps // 4)), head_lr=None),
            "SNR plan": Strategy("SNR plan", plan=snr_plan, head_lr=None),
            "block expansion": Strategy("block expansion", adapter=Expansion(every=half), head_lr=None),
            "freeze tuning, mlp": Strategy("freeze tuning, mlp", plan=factory_plan(model, 2, "mlp"), head_lr=None),
            "freeze tuning, self_attn": Strategy("freeze tuning, self_attn", plan=factory_plan(model, 2, "attention"),
                                                 head_lr=None),
            "LoRA": Strategy("LoRA", adapter=Lora(lora_rank), head_lr=None)}


def trains_on(name: str) -> str:
    """What a strategy of the decoder study trains on: manual text for continued pre-training, else instructions."""
    return CPT if name == "continued pre-training" else SFT


def domain_run(pretrained: nn.Module, strategy: Strategy, data: DomainData, *, lr: float, epochs: int,
               batch_size: int, seed: int = 0, before: dict | None = None) -> dict:
    """One strategy on the domain: train a copy of ``pretrained``; return the row of the run: domain and general
    perplexity before and after (``before``, measured once, may be passed in), the ratios, the validation
    perplexity per epoch, what trained and for how long."""
    if not is_causal_lm(pretrained):
        raise ValueError(f"the decoder study needs a causal LM (load_model(name, task='causal-lm')); got "
                         f"{type(pretrained).__name__}")
    before = before or measure(pretrained, data)
    train = data.manual if trains_on(strategy.name) == CPT else data.instructions
    steps = epochs * batches_per_epoch(len(train), batch_size)
    strategy = dataclasses.replace(strategy, lr=lr)  # a schedule (LISA) carries its rates: build it at this one
    model, schedule = strategy.prepare(copy.deepcopy(pretrained), steps)
    trainable = count_parameters(model)[0]
    history = fit(model, train, data.validation, epochs=epochs, lr=lr, batch_size=batch_size, schedule=schedule,
                  seed=seed, progress=False)
    after = measure(model, data)
    return {"strategy": strategy.name, "trains_on": trains_on(strategy.name), "seed": seed, "lr": lr,
            "trainable_params": trainable, "train_seconds": history.train_seconds, "steps": history.steps,
            "validation_perplexity": [e["eval_perplexity"] for e in history.epochs],
            "best_validation": -min(e["eval_perplexity"] for e in history.epochs),
            **{f"{where}_{when}": values[where] for when, values in (("before", before), ("after", after))
               for where in ("domain", "general")},
            "domain_gain": before["domain"] / after["domain"], "general_rise": after["general"] / before["general"]}


def measure(model: nn.Module, data: DomainData) -> dict:
    """Perplexity on the domain's held-out answers and on held-out general text."""
    return {"domain": evaluate(model, data.test)["perplexity"], "general": evaluate(model, data.general)["perplexity"]}


def domain_study(pretrained: nn.Module, strategies: dict[str, Strategy], data: DomainData, settings: dict,
                 seeds: list[int], reuse: dict[str, list[dict]] | None = None) -> list[dict]:
    """Every strategy over ``seeds``, its rate chosen once on the first seed's validation perplexity (a line search
    on the settings' grid, :func:`~layerfreeze.study.evidence.rate_fixed_across_seeds`) and kept for the others.
    ``reuse`` (:func:`saved_rows`) holds another notebook's rows of the same runs, taken instead of training again."""
    before = measure(pretrained, data)
    rows = []
    for name, strategy in strategies.items():
        if reuse and name in reuse:
            rows += reuse[name]
            continue
        lora = strategy.adapter is not None and isinstance(strategy.adapter, Lora)
        grid, start = (settings["lora_grid"], settings["lora_start"]) if lora else (settings["grid"], settings["start"])

        def run(rate, seed, strategy=strategy):
            return domain_run(pretrained, strategy, data, lr=rate, epochs=settings["epochs"],
                              batch_size=settings["batch_size"], seed=seed, before=before)

        rate, results, scores = rate_fixed_across_seeds(run, grid, seeds, "best_validation", min_grid=1, start=start)
        for result in results:
            result["rates_tried"] = {f"{r:g}": -s for r, s in scores.items()}
        rows += results
    return rows


def summarize_domain_runs(rows: list[dict]) -> pd.DataFrame:
    """Per strategy, the means over seeds: domain perplexity after, gain, general perplexity after, rise."""
    frame = pd.DataFrame(rows)
    columns = ["domain_after", "domain_gain", "general_after", "general_rise", "trainable_params", "train_seconds"]
    summary = frame.groupby("strategy", sort=False)[columns].mean()
    summary["seeds"] = frame.groupby("strategy", sort=False)["seed"].nunique()
    summary["lr"] = frame.groupby("strategy", sort=False)["lr"].first()
    return summary


def compare_domain(rows: list[dict], first: str, second: str, measure_: str = "general_rise") -> Interval:
    """``first`` minus ``second`` in ``measure_`` (log ratio, so 0 is no difference), paired by seed: the interval
    over seeds (:func:`~layerfreeze.study.evidence.seed_interval`)."""
    by = {name: {r["seed"]: np.log(r[measure_]) for r in rows if r["strategy"] == name} for name in (first, second)}
    seeds = sorted(set(by[first]) & set(by[second]))
    return seed_interval([by[first][s] for s in seeds], [by[second][s] for s in seeds])


def domain_finding(rows: list[dict], key: str, claim: str, first: str, second: str, measure_: str,
                   min_seeds: int = 3):
    """A claim that ``first``'s ``measure_`` (a ratio: ``general_rise`` or ``domain_gain``) exceeds ``second``'s,
    paired by seed on the log scale: *holds*, *does not hold* or *within noise* by the interval across seeds, and
    *untestable here* with fewer than ``min_seeds`` seeds (:func:`~layerfreeze.study.evidence.finding`'s rule)."""
    from .evidence import ACROSS_SEEDS, finding

    seeds = {r["seed"] for r in rows if r["strategy"] == first} & {r["seed"] for r in rows if r["strategy"] == second}
    if len(seeds) >= 2:
        interval = compare_domain(rows, first, second, measure_)
    else:
        value = {r["strategy"]: np.log(r[measure_]) for r in rows if r["seed"] in seeds}
        estimate = value[first] - value[second] if seeds else float("nan")
        interval = Interval(float(estimate), float("nan"), float("nan"), kind=ACROSS_SEEDS, seeds=len(seeds))
    found = finding(key, claim, interval, {}, "", min_seeds=min_seeds)
    found.difference = (f"x{np.exp(interval.estimate):.3f} (95% CI across {interval.seeds} seeds x{np.exp(interval.low):.3f}"
                        f" to x{np.exp(interval.high):.3f})" if interval.seeds >= 2 else
                        f"x{np.exp(interval.estimate):.3f} ({interval.seeds} seed: no interval)")
    if interval.seeds < min_seeds:
        found.reason = f"{interval.seeds} seed{'s' if interval.seeds != 1 else ''}; the claim needs at least {min_seeds}"
    return found


def domain_findings(rows: list[dict], k: int) -> list:
    """Notebook 04's decoder claims, each a :class:`~layerfreeze.study.evidence.Finding` (:func:`domain_finding`):
    full fine-tuning against freezing the bottom, LoRA and continued pre-training, in forgetting and in gain."""
    top = f"top {k} blocks"
    claims = [("full_forgets_more_than_top", f"full fine-tuning raises general perplexity more than training the {top}",
               "full", top, "general_rise"),
              ("full_forgets_more_than_lora", "full fine-tuning raises general perplexity more than LoRA", "full", "LoRA",
               "general_rise"),
              ("sft_forgets_more_than_cpt", "supervised full fine-tuning raises general perplexity more than continued "
               "pre-training", "full", "continued pre-training", "general_rise"),
              ("full_gains_more_than_top", f"full fine-tuning gains more on the domain than training the {top}",
               "full", top, "domain_gain"),
              ("sft_gains_more_than_cpt", "supervised fine-tuning gains more on the domain's instructions than "
               "continued pre-training", "full", "continued pre-training", "domain_gain")]
    present = {r["strategy"] for r in rows}
    return [domain_finding(rows, key, claim, a, b, measure_) for key, claim, a, b, measure_ in claims
            if a in present and b in present]


def saved_rows(path, model_name: str, settings: dict, seeds: list[int], strategies: list[str],
               data_seed: int) -> dict[str, list[dict]]:
    """The rows of ``strategies`` in a metrics JSON (notebook 04's ``decoder`` entry) when that run trained the same
    decoder, settings, seeds and data as this one would: the same runs, which give the same numbers. Otherwise, or
    with no file, ``{}``."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text()).get("decoder", {})
    if (saved.get("model"), saved.get("settings"), saved.get("data_seed")) != (model_name, _jsonable(settings),
                                                                               data_seed):
        return {}
    found = {name: [r for r in saved.get("rows", []) if r["strategy"] == name] for name in strategies}
    return {name: rows for name, rows in found.items() if sorted(r["seed"] for r in rows) == sorted(seeds)}


def _jsonable(value):
    import json
    return json.loads(json.dumps(value))
