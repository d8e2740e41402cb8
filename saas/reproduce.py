"""Reproduce the method's evaluation end to end: Table 1 (methods), Table 2 (ablations), Table 3 (side effects).

Protocol (DESIGN.md section 1, "Evaluation"), per behaviour:

1. A :class:`saas.forward.PromptCache` of every prompt (the prompt prefix up to the last prompt
   token is the same under any steering, so its KV cache is computed once and every later
   measurement only runs the last prompt token and the answer tokens); the all-layer activations
   and the model's own unsteered answer scores (logit-diff, conf baselines) are read from it into
   the activation cache (:func:`saas.activations.extract_activations` with ``prompt_cache``).
2. :func:`saas.pipeline.prepare` once: activations and scores (from that cache), the agents (cached;
   Agent-3 scores every instance, so the agents run once per behaviour, on the seed-0 training
   split, and serve every seed).
3. For each seed: a 7:2:1 split; the layer with the largest CAA steering range
   ``P(+1) - P(-1)`` on the validation split (layer subset ``layers``); the SAAS temperature with
   the largest range on validation, from a grid of multiples of the default temperature (the
   spread of the importance over the eligible training instances), both with
   :func:`saas.evaluation.layer_sweep` / :func:`saas.evaluation.temperature_sweep` on the prompt
   cache; every method's vector from the training split at that layer (:func:`saas.pipeline.compute`),
   BiPO trained on the training split, and the ablations; alignment on the test split at every alpha.
4. Ablations at the chosen layer and temperature: no eligibility assessment (softmax weights over
   ALL training instances), no agents (plain mean over the eligible instances = uniform-eligible),
   no Agent-2 (every kept sub-behaviour weighted c_k = 1; the temperature rescaled by the ratio of
   the importance spreads so the softmax is equally sharp). Reported as the relative change of the
   steering performance vs full SAAS, where performance is ``P(y+)`` at alpha = +1 and
   ``1 - P(y+)`` at alpha = -1 (so a negative change means the ablation steers less well).
5. Side effects with the seed-0 vectors: MMLU (``caa/mmlu/mmlu.json``) scored by the likelihood of
   the answer options' own text (``correct_full_text`` vs ``incorrect_full_text``: the mean token
   log-probability, as the sentence metric), not by letter tokens, which the embedded model cannot
   use; and the mean KL of next-token distributions on neutral text (:func:`saas.evaluation.neutral_kl`).

Outputs (``out/``): ``table1.md/.csv``, ``table2.md/.csv``, ``table3.md/.csv``, ``per_seed.csv``,
``layer_sweep.csv``, ``temperature_sweep.csv``, ``plots/*.png`` + ``plots/*.json`` (plotly, open
with ``plotly.io.read_json``) and ``run.json`` (config, command, wall times, chosen layers and
temperatures, BiPO losses, vector norms).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from saas import baselines
from saas.activations import extract_activations
from saas.annotated import clean_positions
from saas.bipo import train_bipo
from saas.data import Instance, load_dataset
from saas.diagnostics import answer_token_split
from saas.evaluation import (
    alignment_from_logprobs,
    alignments,
    alpha_sweep,
    best_layer,
    best_temperature,
    layer_sweep,
    neutral_kl,
    temperature_sweep,
)
from saas.forward import Condition, PromptCache
from saas.lengths import check_lengths
from saas.models import LoadedModel, load_model
from saas.paths import REPO_ROOT
from saas.pipeline import (
    METHOD_LABELS,
    Prepared,
    RunConfig,
    auto_temperature,
    cheap_projection,
    compute,
    prepare,
    split_indices,
    spread,
)
from saas.steering import SteeringVector, match_norms
from saas.weighting import softmax_weights

log = logging.getLogger(__name__)
Say = Callable[[str], None]

OCEAN = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MMLU_PATH = SHARED_DATA / "caa" / "mmlu" / "mmlu.json"

#: The method's six baselines, in its Table 1 order, after SAAS.
MAIN_METHODS = (baselines.SAAS, baselines.CAA, baselines.PCA_CENTER, baselines.PCA_DIFF, baselines.BIPO,
                baselines.LOGIT_DIFF, baselines.CONF)
EXTRA_METHODS = (baselines.PCA_MIDPOINT, baselines.UNIFORM_ELIGIBLE)
NO_ELIGIBILITY = "saas-no-eligibility"
NO_AGENT2 = "saas-no-agent2"
#: Table 2 rows: ablation id -> label. "w/o agents" is the uniform-eligible vector.
ABLATIONS = {
    NO_ELIGIBILITY: "w/o eligibility assessment",
    baselines.UNIFORM_ELIGIBLE: "w/o agents (uniform over eligible)",
    NO_AGENT2: "w/o Agent-2 (c_k = 1)",
}
NORM_MATCHED = "@caa-norm"
"""Suffix of a method id evaluated with its vector rescaled to CAA's norm at the same layer."""
LABELS = {**METHOD_LABELS, NO_ELIGIBILITY: "SAAS w/o eligibility", NO_AGENT2: "SAAS w/o Agent-2", "none": "unsteered"}
LABELS.update({m + NORM_MATCHED: f"{LABELS.get(m, m)} (CAA's norm)" for m in list(LABELS)})
TEMPERATURE_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class ReproduceConfig:
    """Everything that defines a reproduction run; written to ``run.json``."""

    behaviours: list[str] = field(default_factory=list)  # empty: the five OCEAN persona files
    seeds: int = 5
    model: str = "default"
    agents: str = "offline"
    limit: int | None = None
    layers: list[int] | None = None  # None: an evenly spaced subset of the middle layers
    alphas: list[float] = field(default_factory=lambda: [-1.0, 0.0, 1.0])
    temperature_factors: list[float] = field(default_factory=lambda: list(TEMPERATURE_FACTORS))
    kappa: float = 0.5
    consistency: str = "mean"  # or "polarity-balanced" (token answers; DESIGN.md section 5)
    norm_matched: bool = True  # also evaluate every method rescaled to CAA's norm at the same layer
    bipo: bool = True
    bipo_epochs: int = 3
    bipo_lr: float = 1e-2
    bipo_beta: float = 0.1
    bipo_batch_size: int = 32
    mmlu: int = 100  # MMLU items for Table 3 (0: skip)
    mmlu_methods: list[str] = field(default_factory=lambda: [baselines.SAAS, baselines.CAA])
    batch_size: int = 16
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None  # torch CPU threads for the run (restored afterwards); on a busy CPU 1 can be fastest
    png: bool = True  # also write PNGs (kaleido + Chromium) next to the plotly JSON
    out: str = "results/reproduce"
    quick: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> ReproduceConfig:
        """``--quick``: one trait, one seed, 200 instances, three layers, one BiPO epoch, 40 MMLU items."""
        base: dict[str, Any] = dict(seeds=1, limit=200, layers=None, bipo_epochs=1, mmlu=40, quick=True)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def default_behaviours(quick: bool = False) -> list[str]:
    """The five OCEAN persona files beside the checkout (the first one for ``--quick``); else the demo."""
    found = [str(SHARED_DATA / "persona" / f"{t}.jsonl") for t in OCEAN if (SHARED_DATA / "persona" / f"{t}.jsonl").is_file()]
    if not found:
        return ["demo"]
    return found[:1] if quick else found


def default_layers(n_layers: int, quick: bool = False) -> list[int]:
    """Evenly spaced layers between 20% and 80% depth (7 of them; 3 for ``--quick``)."""
    k = 3 if quick else 7
    lo, hi = max(1, round(0.2 * (n_layers - 1))), min(n_layers - 1, round(0.8 * (n_layers - 1)))
    return sorted({int(round(x)) for x in np.linspace(lo, hi, k)}) if hi > lo else [n_layers // 2]


def parse_layers(text: str | None, n_layers: int | None = None) -> list[int] | None:
    """``"10,15,20"`` -> [10, 15, 20]; ``"all"`` -> every layer (needs ``n_layers``); None -> None."""
    if text is None or text == "":
        return None
    if text == "all":
        if n_layers is None:
            return [-1]  # resolved once the model is known
        return list(range(n_layers))
    return [int(x) for x in text.split(",") if x.strip()]


# --------------------------------------------------------------------------------------------
# per-seed evaluation


def _vec(v: np.ndarray, layer: int, method: str, **meta: Any) -> SteeringVector:
    return SteeringVector.from_array(np.asarray(v, dtype=np.float32), layer, method, **meta)


def equal_contribution_importance(prepared: Prepared, indices: Sequence[int]) -> np.ndarray | None:
    """Eq. 5 with every kept sub-behaviour's c_k = 1 (the "no Agent-2" ablation): s_i = sum_k s_ik."""
    run = prepared.agent_run
    if run is None:
        return None
    cols = [run.table.sub_ids.index(s.id) for s in run.kept if s.id in run.table.sub_ids]
    ids = [prepared.dataset.instances[i].id for i in indices]
    return run.table.rows(ids)[:, cols].sum(axis=1)


def answer_balance(prepared: Prepared, train: Sequence[int], eligible: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """Share of each positive answer (e.g. "Yes" vs "No") among the training instances, the eligible
    ones, and in the SAAS weights. For single-token answers the local vectors carry the answer
    token's identity (v_i ~ +-(a(Yes) - a(No)) + behaviour part); a balanced mean cancels it, an
    unbalanced selection or weighting does not. Empty for sentence answers."""
    if prepared.dataset.answer_kind == "sentence":
        return {}
    split = answer_token_split([prepared.dataset.instances[i] for i in train], eligible, weights)
    return {r["token"]: {"train": r["pairs %"] / 100, "eligible": r["eligible %"] / 100,
                         "saas_weight": r["saas weight %"] / 100} for r in split.to_dict("records")}


@dataclass
class SeedResult:
    seed: int
    layer: int
    temperature: float
    eligible_fraction: float
    n_train: int
    rows: list[dict[str, Any]]
    layer_df: pd.DataFrame
    temp_df: pd.DataFrame | None
    vectors: dict[str, SteeringVector]
    bipo_history: dict[str, Any] | None
    timings: dict[str, float]
    balance: dict[str, Any] = field(default_factory=dict)


def evaluate_seed(
    pc: PromptCache,
    prepared: Prepared,
    seed: int,
    config: ReproduceConfig,
    layers: Sequence[int],
    say: Say = print,
) -> SeedResult:
    """One seed of the protocol (module doc, step 3-4) on a prepared behaviour."""
    timings: dict[str, float] = {}
    n = len(prepared.dataset)
    p = dataclasses.replace(prepared, split=split_indices(n, seed), config=dataclasses.replace(prepared.config, seed=seed))
    kind = p.dataset.answer_kind
    train = p.split["train"]
    # Held-out pairs: on annotated data the clean ones (a flawed pair's "positive" is not the behaviour).
    val, test = clean_positions(p.dataset, p.split["val"]), clean_positions(p.dataset, p.split["test"])
    val_insts = [p.dataset.instances[i] for i in val]
    test_insts = [p.dataset.instances[i] for i in test]

    t0 = time.perf_counter()
    ldf = layer_sweep(p.lm, p.acts, val_insts, kind, train, layers, prompt_cache=pc)
    layer = best_layer(ldf)
    timings["layer_sweep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    projection = cheap_projection(p, layer, p.config.axis, p.config.shrinkage, config.consistency)
    base = compute(p, layer=layer, kappa=config.kappa, projection=projection)
    eligible = np.asarray(base.eligibility.eligible, dtype=bool)
    s = base.importance
    tdf = None
    temperature = base.temperature
    if p.importance is not None and eligible.any():
        t_auto = auto_temperature(s, eligible)
        temps = [f * t_auto for f in config.temperature_factors]
        tdf = temperature_sweep(p.lm, val_insts, kind, p.acts.diffs(layer)[train], s, eligible, layer, temps,
                                prompt_cache=pc)
        tdf["factor"] = tdf["temperature"].map(dict(zip(temps, config.temperature_factors)))
        temperature = best_temperature(tdf)
    timings["temperature_sweep"] = time.perf_counter() - t0

    result = compute(p, layer=layer, kappa=config.kappa, temperature=temperature, projection=projection)
    vectors: dict[str, SteeringVector] = dict(result.vectors)
    diffs = p.acts.diffs(layer)[train].astype(np.float64)
    meta = {"split_seed": seed}
    if p.importance is not None and eligible.any():
        vectors[NO_ELIGIBILITY] = _vec(softmax_weights(s, temperature) @ diffs, layer, NO_ELIGIBILITY, temperature=temperature, **meta)
        s_eq = equal_contribution_importance(p, train)
        if s_eq is not None:
            sp, sp_eq = spread(s, eligible), spread(s_eq, eligible)
            t_eq = temperature * sp_eq / sp if sp > 1e-12 and sp_eq > 1e-12 else temperature
            vectors[NO_AGENT2] = _vec(softmax_weights(s_eq, t_eq, eligible) @ diffs, layer, NO_AGENT2, temperature=t_eq, **meta)

    balance = answer_balance(p, train, eligible, result.weights)

    hist = None
    if config.bipo:
        t0 = time.perf_counter()
        train_insts = [p.dataset.instances[i] for i in train]
        say(f"    BiPO: {len(train_insts)} instances, layer {layer}, {config.bipo_epochs} epoch(s)")
        vec, h = train_bipo(p.lm, train_insts, layer, epochs=config.bipo_epochs, lr=config.bipo_lr, beta=config.bipo_beta,
                            batch_size=config.bipo_batch_size, seed=seed, prompt_cache=pc)
        vectors[baselines.BIPO] = vec
        hist = {"epoch_loss": h.epoch_loss, "epoch_norm": h.epoch_norm, "steps": len(h.step_loss),
                "seconds": round(h.seconds, 2), "from_cache": h.from_cache}
        timings["bipo"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    alphas = sorted({float(a) for a in config.alphas} | {-1.0, 1.0})
    swept = dict(vectors)
    if config.norm_matched and baselines.CAA in vectors:  # every method at CAA's norm: only directions differ
        swept |= {m + NORM_MATCHED: v for m, v in match_norms(vectors, baselines.CAA).items()
                  if m != baselines.CAA and v.norm() > 0.0}
    # One sweep (evaluation's): alpha 0 is the unsteered model, run once and shared by every method.
    df = alpha_sweep(p.lm, test_insts, kind, swept, sorted(set(alphas) | {0.0}), prompt_cache=pc)
    base = df[df["alpha"] == 0.0].iloc[0]
    rows = [{"method": "none", "alpha": 0.0, "alignment": float(base["alignment"]), "mass": float(base["mass"])}]
    rows += [{"method": r.method, "alpha": r.alpha, "alignment": r.alignment, "mass": r.mass}
             for r in df.itertuples() if r.alpha != 0.0 or 0.0 in alphas]
    timings["test_eval"] = time.perf_counter() - t0
    common = {"seed": seed, "layer": layer, "temperature": temperature, "n_test": len(test), "n_val": len(val)}
    rows = [common | r for r in rows]
    return SeedResult(seed, layer, temperature, float(eligible.mean()) if len(eligible) else float("nan"), len(train),
                      rows, ldf.assign(seed=seed), None if tdf is None else tdf.assign(seed=seed), vectors, hist, timings,
                      balance)


# --------------------------------------------------------------------------------------------
# per-behaviour driver


@dataclass
class BehaviourResult:
    name: str
    spec: str
    answer_kind: str
    n: int
    seeds: list[SeedResult]
    timings: dict[str, float]
    agents: dict[str, Any] | None
    mass_base: float

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"behaviour": self.name} | r for s in self.seeds for r in s.rows])


def evaluate_behaviour(lm: LoadedModel, spec: str, config: ReproduceConfig, say: Say = print) -> BehaviourResult:
    """The whole protocol for one behaviour (module doc, steps 1-4), every seed."""
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    dataset, _ = check_lengths(lm, load_dataset(spec, limit=config.limit))  # fail fast, before any forward
    say(f"[{dataset.name}] {len(dataset)} instances ({dataset.answer_kind})")
    t0 = time.perf_counter()
    pc = PromptCache(lm, dataset.instances, batch_size=config.batch_size, keep=True)
    timings["prompt_cache"] = time.perf_counter() - t0
    say(f"[{dataset.name}] prompt cache: {pc.prefix_tokens} prompt tokens ({len(pc.common)} shared by all), "
        f"{pc.nbytes() / 1e9:.2f} GB, {timings['prompt_cache']:.1f} s")
    t0 = time.perf_counter()
    # Activations and the unsteered answer scores read from the prompt cache into the activation
    # cache, where prepare finds them (the prompts then run once, not twice).
    acts = extract_activations(lm, dataset, batch_size=config.batch_size, prompt_cache=pc)
    if not acts.from_cache:
        timings["activations_from_prompt_cache"] = time.perf_counter() - t0
    say(f"[{dataset.name}] preparing (activations and agent calls are cached)")
    rc = RunConfig(model=config.model, dataset=spec, limit=config.limit, kappa=config.kappa, agents=config.agents,
                   consistency=config.consistency,
                   seed=0, batch_size=config.batch_size, model_scores=True, device=config.device, dtype=config.dtype)
    prepared = prepare(rc, lm=lm, dataset=dataset)
    timings.update({f"prepare_{k}": round(v, 2) for k, v in prepared.timings.items()})
    mass = float("nan")
    if prepared.acts.logprobs is not None and dataset.answer_kind != "sentence":
        mass_mean = alignment_from_logprobs(prepared.acts.logprobs, dataset.answer_kind).mass_mean
        mass = float("nan") if mass_mean is None else mass_mean
    layers = config.layers or default_layers(prepared.acts.n_layers, config.quick)
    if layers == [-1]:
        layers = list(range(prepared.acts.n_layers))
    seeds = []
    for seed in range(config.seeds):
        t0 = time.perf_counter()
        r = evaluate_seed(pc, prepared, seed, config, layers, say)
        seeds.append(r)
        al = {row["method"]: row["alignment"] for row in r.rows if row["alpha"] == 1.0}
        alm = {row["method"]: row["alignment"] for row in r.rows if row["alpha"] == -1.0}
        say(f"[{dataset.name}] seed {seed}: layer {r.layer}, t {r.temperature:.3g}, eligible {100 * r.eligible_fraction:.1f}%; "
            f"SAAS {alm.get('saas', float('nan')):.3f}/{al.get('saas', float('nan')):.3f}, "
            f"CAA {alm.get('caa', float('nan')):.3f}/{al.get('caa', float('nan')):.3f} at alpha -1/+1 "
            f"({time.perf_counter() - t0:.1f} s)")
    agents = None
    if prepared.agent_run is not None:
        run = prepared.agent_run
        agents = {"backend": run.backend, "model": run.model, "n_subbehaviours": len(run.subs), "n_kept": len(run.kept),
                  "kept": [{"name": s.name, "contribution": s.contribution} for s in run.kept]}
    timings["total"] = time.perf_counter() - t_all
    del pc
    return BehaviourResult(dataset.name, spec, dataset.answer_kind, len(dataset), seeds, timings, agents, mass)


# --------------------------------------------------------------------------------------------
# side effects (Table 3)


def mmlu_instances(n: int, path: str | Path = MMLU_PATH) -> list[Instance]:
    """``n`` MMLU items, evenly spaced over the file (so every category is represented), as sentence
    pairs: prompt = the question with its choices, y+ = ``correct_full_text``, y- = ``incorrect_full_text``."""
    ds = load_dataset(path)
    picks = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
    out = []
    for k in picks:
        inst = ds.instances[int(k)]
        pos, neg = inst.meta.get("correct_full_text"), inst.meta.get("incorrect_full_text")
        if not pos or not neg or pos.strip() == neg.strip():
            continue
        out.append(Instance(id=inst.id, prompt=inst.prompt, positive=" " + str(pos).strip(), negative=" " + str(neg).strip(),
                            meta={"category": inst.meta.get("category")}))
    return out


def side_effects(lm: LoadedModel, results: Sequence[BehaviourResult], config: ReproduceConfig, say: Say = print) -> tuple[pd.DataFrame, dict[str, float]]:
    """MMLU accuracy and neutral-text KL with the seed-0 vectors of each behaviour at alpha -1 / +1."""
    timings: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    conds: list[Condition] = [(None, 0.0)]
    keys: list[tuple[str, str, float]] = [("", "none", 0.0)]
    for r in results:
        vecs = r.seeds[0].vectors
        for m in config.mmlu_methods:
            if m in vecs:
                for a in (-1.0, 1.0):
                    conds.append((vecs[m], a))
                    keys.append((r.name, m, a))
    if config.mmlu > 0 and MMLU_PATH.is_file():
        t0 = time.perf_counter()
        items = mmlu_instances(config.mmlu)
        say(f"[mmlu] {len(items)} items x {len(conds)} conditions")
        pc = PromptCache(lm, items, batch_size=config.batch_size, keep=False)
        for (b, m, a), res in zip(keys, alignments(lm, items, "sentence", conds, prompt_cache=pc)):
            rows.append({"behaviour": b, "method": m, "alpha": a, "metric": "mmlu_accuracy",
                         "value": float(np.mean(res.prob > 0.5)), "n": len(res.ids)})
            rows.append({"behaviour": b, "method": m, "alpha": a, "metric": "mmlu_p_correct", "value": res.mean,
                         "n": len(res.ids)})
        timings["mmlu"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for (b, m, a), (vec, alpha) in zip(keys[1:], conds[1:]):
        assert vec is not None
        rows.append({"behaviour": b, "method": m, "alpha": a, "metric": "neutral_kl", "value": neutral_kl(lm, vec, alpha), "n": 8})
    timings["neutral_kl"] = time.perf_counter() - t0
    return pd.DataFrame(rows, columns=["behaviour", "method", "alpha", "metric", "value", "n"]), timings


# --------------------------------------------------------------------------------------------
# tables


def _label(m: str) -> str:
    return LABELS.get(m, m)


def _same(a: float, b: float) -> bool:
    """Equal at the 3 decimals shown (ties at display precision are all bold)."""
    return bool(np.isfinite(a) and np.isfinite(b) and round(float(a), 3) == round(float(b), 3))


def _fmt(mean: float, sd: float, n: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}"


def seed_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample SD and count over seeds per (behaviour, method, alpha)."""
    g = df.groupby(["behaviour", "method", "alpha"])
    out = g.agg(mean=("alignment", "mean"), sd=("alignment", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0),
                n_seeds=("alignment", "size"), mass=("mass", "mean")).reset_index()
    return out


def table1(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Table 1: alignment at alpha -1 and +1 per behaviour and method (mean ± SD over seeds).

    Bold: the best method per column among the main methods and extras: the LOWEST P(y+) at
    alpha = -1 (steered away from the behaviour), the HIGHEST at alpha = +1.
    """
    st = seed_stats(df)
    st = st[st["alpha"].isin([-1.0, 1.0])]
    behaviours = list(dict.fromkeys(df["behaviour"]))
    methods = [m for m in (*MAIN_METHODS, *EXTRA_METHODS) if m in set(st["method"])]
    cols = [(b, a) for b in behaviours for a in (-1.0, 1.0)]
    avg = st[st["method"].isin(methods)].groupby(["method", "alpha"])["mean"].mean()
    header = "| Method | " + " | ".join(f"{b} α={a:+g}" for b, a in cols) + (" | **avg** α=-1 | **avg** α=+1 |" if len(behaviours) > 1 else " |")
    lines = [header, "|" + "---|" * (1 + len(cols) + (2 if len(behaviours) > 1 else 0))]
    best = {}
    for b, a in cols:
        sub = st[(st["behaviour"] == b) & (st["alpha"] == a) & st["method"].isin(methods)]
        if len(sub):
            best[(b, a)] = sub["mean"].min() if a < 0 else sub["mean"].max()
    best_avg = {a: (avg.xs(a, level="alpha").min() if a < 0 else avg.xs(a, level="alpha").max()) for a in (-1.0, 1.0)} if len(avg) else {}
    for m in methods:
        cells = []
        for b, a in cols:
            row = st[(st["behaviour"] == b) & (st["method"] == m) & (st["alpha"] == a)]
            if not len(row):
                cells.append("n/a")
                continue
            r = row.iloc[0]
            text = _fmt(r["mean"], r["sd"], int(r["n_seeds"]))
            cells.append(f"**{text}**" if _same(r["mean"], best.get((b, a), np.nan)) else text)
        if len(behaviours) > 1:
            for a in (-1.0, 1.0):
                v = float(avg.get((m, a), np.nan))
                text = f"{v:.3f}"
                cells.append(f"**{text}**" if _same(v, best_avg.get(a, np.nan)) else text)
        name = _label(m) + (" (extra)" if m in EXTRA_METHODS else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base = seed_stats(df[df["method"] == "none"])
    cells = []
    for b, _a in cols:
        row = base[base["behaviour"] == b]
        cells.append(f"*{_fmt(row.iloc[0]['mean'], row.iloc[0]['sd'], int(row.iloc[0]['n_seeds']))}*" if len(row) else "n/a")
    if len(behaviours) > 1:
        cells += [f"*{base['mean'].mean():.3f}*"] * 2
    lines.append("| *unsteered (α=0)* | " + " | ".join(cells) + " |")

    # steering range P(+1) - P(-1) per seed, then mean ± SD
    piv = df[df["alpha"].isin([-1.0, 1.0]) & df["method"].isin(methods)].pivot_table(
        index=["behaviour", "method", "seed"], columns="alpha", values="alignment")
    rng = (piv[1.0] - piv[-1.0]).rename("range").reset_index()
    rs = rng.groupby(["behaviour", "method"])["range"].agg(["mean", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0, "size"])
    rs.columns = ["mean", "sd", "n"]
    lines += ["", "Steering range P(y+ | α=+1) − P(y+ | α=−1) (larger = steers more; bold = largest per column):", "",
              "| Method | " + " | ".join(behaviours) + " |", "|" + "---|" * (1 + len(behaviours))]
    best_r = {b: rs.xs(b, level="behaviour")["mean"].max() for b in behaviours}
    for m in methods:
        cells = []
        for b in behaviours:
            if (b, m) in rs.index:
                r = rs.loc[(b, m)]
                text = _fmt(r["mean"], r["sd"], int(r["n"]))
                cells.append(f"**{text}**" if _same(r["mean"], best_r[b]) else text)
            else:
                cells.append("n/a")
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    csv = st[st["method"].isin([*methods, NO_ELIGIBILITY, NO_AGENT2])].copy()
    csv.insert(2, "label", csv["method"].map(_label))
    return "\n".join(lines) + "\n", csv


def _perf(alignment: float, alpha: float) -> float:
    """Steering performance: P(y+) at alpha > 0, 1 - P(y+) at alpha < 0."""
    return alignment if alpha > 0 else 1.0 - alignment


def table2(df: pd.DataFrame, eligible: dict[str, list[float]]) -> tuple[str, pd.DataFrame]:
    """Table 2: eligible-instance percentage and the ablations' relative change vs full SAAS."""
    st = seed_stats(df)
    behaviours = list(dict.fromkeys(df["behaviour"]))
    rows = []
    for b in behaviours:
        for abl in ABLATIONS:
            for a in (-1.0, 1.0):
                full = st[(st["behaviour"] == b) & (st["method"] == baselines.SAAS) & (st["alpha"] == a)]
                ab = st[(st["behaviour"] == b) & (st["method"] == abl) & (st["alpha"] == a)]
                if not len(full) or not len(ab):
                    rel = float("nan")
                    pa = pf = float("nan")
                else:
                    pf, pa = _perf(full.iloc[0]["mean"], a), _perf(ab.iloc[0]["mean"], a)
                    rel = 100.0 * (pa - pf) / pf if pf > 0 else float("nan")
                rows.append({"behaviour": b, "ablation": abl, "label": ABLATIONS[abl], "alpha": a, "perf_saas": pf,
                             "perf_ablation": pa, "relative_change_pct": rel})
    t = pd.DataFrame(rows)
    lines = ["| Behaviour | eligible % | " + " | ".join(f"{lab} α={a:+g}" for lab in ABLATIONS.values() for a in (-1.0, 1.0)) + " |",
             "|" + "---|" * (2 + 2 * len(ABLATIONS))]
    for b in behaviours:
        e = eligible.get(b, [])
        e_txt = f"{100 * np.mean(e):.1f} ± {100 * np.std(e, ddof=1):.1f}" if len(e) > 1 else (f"{100 * e[0]:.1f}" if e else "n/a")
        cells = []
        for abl in ABLATIONS:
            for a in (-1.0, 1.0):
                v = t[(t["behaviour"] == b) & (t["ablation"] == abl) & (t["alpha"] == a)]["relative_change_pct"]
                cells.append(f"{float(v.iloc[0]):+.2f}%" if len(v) and np.isfinite(v.iloc[0]) else "n/a")
        lines.append(f"| {b} | {e_txt} | " + " | ".join(cells) + " |")
    if len(behaviours) > 1:
        cells = []
        for abl in ABLATIONS:
            for a in (-1.0, 1.0):
                v = t[(t["ablation"] == abl) & (t["alpha"] == a)]["relative_change_pct"]
                cells.append(f"{float(v.mean()):+.2f}%")
        e_all = [x for v in eligible.values() for x in v]
        lines.append(f"| **avg** | {100 * np.mean(e_all):.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Alignment P(y+) on the test split (seed means) behind the relative changes:", "",
              "| Behaviour | " + " | ".join(f"{_label(m)} α={a:+g}" for m in (baselines.SAAS, *ABLATIONS) for a in (-1.0, 1.0)) + " |",
              "|" + "---|" * (1 + 2 * (1 + len(ABLATIONS)))]
    for b in behaviours:
        cells = []
        for m in (baselines.SAAS, *ABLATIONS):
            for a in (-1.0, 1.0):
                v = st[(st["behaviour"] == b) & (st["method"] == m) & (st["alpha"] == a)]["mean"]
                cells.append(f"{float(v.iloc[0]):.3f}" if len(v) else "n/a")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    note = ("\nRelative change of the steering performance vs full SAAS, from the seed means: performance = "
            "P(y+) at α=+1 and 1 − P(y+) at α=−1; negative = the ablation steers less well. "
            "Eligible % = eligible training instances at the chosen layer (κ = 0.5, Fisher axis), mean ± SD over seeds.\n")
    return "\n".join(lines) + "\n" + note, t


def table3(side: pd.DataFrame, methods: Sequence[str]) -> tuple[str, pd.DataFrame]:
    """Table 3: MMLU accuracy (option-text likelihood) and neutral KL, unsteered and at alpha -1 / +1."""
    if side.empty:
        return "(side effects skipped)\n", side
    acc = side[side["metric"] == "mmlu_accuracy"]
    kl = side[side["metric"] == "neutral_kl"]
    base = acc[acc["method"] == "none"]["value"]
    base_txt = f"{float(base.iloc[0]):.3f}" if len(base) else "n/a"
    n_items = int(acc["n"].iloc[0]) if len(acc) else 0
    behaviours = [b for b in dict.fromkeys(side["behaviour"]) if b]
    head = ["Behaviour"] + [f"MMLU {_label(m)} α={a:+g}" for m in methods for a in (-1.0, 1.0)] + \
           [f"KL {_label(m)} α={a:+g}" for m in methods for a in (-1.0, 1.0)]
    lines = [f"MMLU accuracy unsteered: **{base_txt}** ({n_items} items; 0.5 = chance).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in behaviours:
        cells = []
        for frame, fmt in ((acc, "{:.3f}"), (kl, "{:.4f}")):
            for m in methods:
                for a in (-1.0, 1.0):
                    v = frame[(frame["behaviour"] == b) & (frame["method"] == m) & (frame["alpha"] == a)]["value"]
                    cells.append(fmt.format(float(v.iloc[0])) if len(v) else "n/a")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    note = ("\nMMLU in A/B form, scored by comparing the likelihood of the two options' own text "
            "(`correct_full_text` vs `incorrect_full_text`, mean token log-probability after the question with its choices), "
            "not the letter tokens; steering from the last prompt token over the answer tokens, seed-0 vector and layer. "
            "KL = mean KL(unsteered ‖ steered) of next-token distributions over 8 neutral sentences, every position steered.\n")
    return "\n".join(lines) + "\n" + note, side


# --------------------------------------------------------------------------------------------
# plots


def _write_fig(fig: Any, stem: Path, png: bool = True) -> list[str]:
    import plotly.io as pio

    stem.parent.mkdir(parents=True, exist_ok=True)
    pio.write_json(fig, str(stem.with_suffix(".json")))
    written = [f"plots/{stem.with_suffix('.json').name}"]
    if not png:
        return written
    try:
        fig.write_image(str(stem.with_suffix(".png")), width=900, height=520, scale=1)
        written.append(f"plots/{stem.with_suffix('.png').name}")
    except Exception as exc:  # kaleido needs a Chromium; the JSON is the primary artifact
        log.warning("PNG export of %s failed (%s); JSON written", stem.name, exc)
    return written


def _layout(fig: Any, title: str) -> None:
    """Title on top, legend below the plot (the builders' top legend collides with long titles)."""
    fig.update_layout(title={"text": title, "y": 0.97, "x": 0.01}, legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0, "xanchor": "left"},
                      margin={"t": 60, "b": 120})


def write_plots(out: Path, df: pd.DataFrame, layer_df: pd.DataFrame, temp_df: pd.DataFrame, png: bool = True) -> list[str]:
    """Alignment vs alpha per method, layer sweep and temperature sweep, per behaviour (mean ± SD over seeds)."""
    from saas import figures

    written = []
    for b in dict.fromkeys(df["behaviour"]):
        sub = df[(df["behaviour"] == b) & df["method"].isin([*MAIN_METHODS, *EXTRA_METHODS])]
        g = sub.groupby(["method", "alpha"])["alignment"].agg(["mean", "std"]).reset_index()
        g = g.rename(columns={"mean": "alignment"}).fillna({"std": 0.0})
        g["method"] = g["method"].map(_label)
        fig = figures.alignment_vs_alpha(g)
        _layout(fig, f"{b}: alignment vs α (test split; mean ± SD over seeds)")
        written += _write_fig(fig, out / "plots" / f"{b}_alpha", png)
        ls = layer_df[layer_df["behaviour"] == b].groupby(["layer", "alpha"])["alignment"].agg(["mean", "std"]).reset_index()
        ls = ls.rename(columns={"mean": "alignment"}).fillna({"std": 0.0})
        ls["method"] = "CAA"
        fig = figures.layer_sweep(ls)
        _layout(fig, f"{b}: CAA layer sweep (validation; mean ± SD over seeds)")
        written += _write_fig(fig, out / "plots" / f"{b}_layers", png)
        if temp_df is not None and len(temp_df) and (temp_df["behaviour"] == b).any():
            ts = temp_df[temp_df["behaviour"] == b].copy()
            ts = ts.groupby(["factor", "alpha"]).agg(alignment=("alignment", "mean"), std=("alignment", "std"),
                                                     temperature=("temperature", "mean")).reset_index().fillna({"std": 0.0})
            ts["method"] = "SAAS"
            fig = figures.temperature_sweep(ts[["method", "temperature", "alpha", "alignment", "std"]])
            _layout(fig, f"{b}: SAAS temperature sweep (validation; mean over seeds)")
            written += _write_fig(fig, out / "plots" / f"{b}_temperature", png)
    return written


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class ReproduceResult:
    out: Path
    per_seed: pd.DataFrame
    side: pd.DataFrame
    behaviours: list[BehaviourResult]
    wall_seconds: float
    files: list[str]


def run_reproduction(config: ReproduceConfig, *, lm: LoadedModel | None = None, say: Say | None = None,
                     command: str | None = None) -> ReproduceResult:
    """Run the protocol for every behaviour and write the tables, plots and ``run.json`` to ``config.out``."""
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, lm, say, command)
    finally:
        torch.set_num_threads(threads)


def _run(config: ReproduceConfig, lm: LoadedModel | None, say: Say | None, command: str | None) -> ReproduceResult:
    say = say or (lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    behaviours = config.behaviours or default_behaviours(config.quick)
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype)
    timings["load_model"] = time.perf_counter() - t0
    say(f"model {lm.name} ({lm.n_layers} layers, d={lm.hidden_size}, {lm.info.get('device', lm.device)}, {lm.dtype}); "
        f"torch threads {torch.get_num_threads()}; behaviours: {', '.join(Path(b).stem for b in behaviours)}")
    results = []
    for spec in behaviours:
        results.append(evaluate_behaviour(lm, spec, config, say))
        _write_tables(out, results, pd.DataFrame(), config, final=False)  # partial tables after each behaviour
    side, side_t = side_effects(lm, results, config, say)
    timings.update(side_t)
    files = _write_tables(out, results, side, config)
    wall = time.perf_counter() - t_start
    run = {
        "command": command or " ".join(sys.argv),
        "config": config.to_dict(),
        "behaviours": [
            {"name": r.name, "spec": r.spec, "answer_kind": r.answer_kind, "n_instances": r.n,
             "unsteered_answer_mass": r.mass_base, "agents": r.agents,
             "timings_s": {k: round(v, 2) for k, v in r.timings.items()},
             "seeds": [{"seed": s.seed, "layer": s.layer, "temperature": s.temperature, "eligible_fraction": s.eligible_fraction,
                        "n_train": s.n_train, "answer_balance": s.balance, "bipo": s.bipo_history, "timings_s": {k: round(v, 2) for k, v in s.timings.items()},
                        "vector_norms": {m: round(v.norm(), 4) for m, v in s.vectors.items()}} for s in r.seeds]}
            for r in results],
        "model": {"name": lm.name, "fingerprint": lm.fingerprint, "n_layers": lm.n_layers, "d": lm.hidden_size,
                  "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "wall_seconds": round(wall, 1),
        "files": files,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    say(f"done in {wall / 60:.1f} min; wrote {out}")
    return ReproduceResult(out, pd.concat([r.frame() for r in results], ignore_index=True), side, results, wall, files)


def norm_matched_table(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Steering range P(+1) - P(-1) of every method as extracted and rescaled to CAA's norm at the
    same layer, with the per-seed paired difference against CAA (and SAAS against uniform-eligible).

    Returns ``("", empty)`` when the run has no norm-matched rows.
    """
    if not df["method"].astype(str).str.endswith(NORM_MATCHED).any():
        return "", pd.DataFrame()
    pm = df[df["alpha"].isin([-1.0, 1.0])].pivot_table(index=["behaviour", "method", "seed"], columns="alpha",
                                                       values="alignment")
    ranges = (pm[1.0] - pm[-1.0]).rename("range").reset_index()
    wide = ranges.pivot_table(index=["behaviour", "seed"], columns="method", values="range")
    rows = []
    methods = [m for m in (*MAIN_METHODS, *EXTRA_METHODS, NO_ELIGIBILITY, NO_AGENT2) if m in wide.columns
               and m != baselines.CAA]
    for b in dict.fromkeys(df["behaviour"]):
        sub = wide.loc[b]
        caa = sub[baselines.CAA] if baselines.CAA in sub else None
        for m in methods:
            normed = m + NORM_MATCHED
            if normed not in sub:
                continue
            row: dict[str, Any] = {"behaviour": b, "method": m, "n_seeds": int(sub[m].notna().sum()),
                                   "range": float(sub[m].mean()), "range_sd": float(sub[m].std(ddof=1)),
                                   "range_norm_matched": float(sub[normed].mean()),
                                   "range_norm_matched_sd": float(sub[normed].std(ddof=1))}
            if caa is not None:
                d, dn = sub[m] - caa, sub[normed] - caa
                row |= {"minus_caa": float(d.mean()), "minus_caa_wins": int((d > 0).sum()),
                        "norm_matched_minus_caa": float(dn.mean()), "norm_matched_minus_caa_wins": int((dn > 0).sum())}
            if m == baselines.SAAS and baselines.UNIFORM_ELIGIBLE + NORM_MATCHED in sub:
                du = sub[normed] - sub[baselines.UNIFORM_ELIGIBLE + NORM_MATCHED]
                row |= {"norm_matched_minus_uniform": float(du.mean()), "norm_matched_minus_uniform_wins": int((du > 0).sum())}
            rows.append(row)
        if caa is not None:
            rows.append({"behaviour": b, "method": baselines.CAA, "n_seeds": int(caa.notna().sum()),
                         "range": float(caa.mean()), "range_sd": float(caa.std(ddof=1)),
                         "range_norm_matched": float(caa.mean()), "range_norm_matched_sd": float(caa.std(ddof=1))})
    t = pd.DataFrame(rows)
    lines = ["| Behaviour | Method | range as extracted | range at CAA's norm | minus CAA as extracted (seeds won) "
             "| minus CAA at CAA's norm (seeds won) | minus uniform-eligible at CAA's norm (seeds won) |",
             "|---|---|---|---|---|---|---|"]
    for r in t.to_dict("records"):
        def pair(key: str, wins: str, r: dict[str, Any] = r) -> str:
            v = r.get(key)
            return "" if v is None or not np.isfinite(v) else f"{v:+.3f} ({r[wins]}/{r['n_seeds']})"
        lines.append(f"| {r['behaviour']} | {_label(r['method'])} | {_fmt(r['range'], r['range_sd'], r['n_seeds'])} | "
                     f"{_fmt(r['range_norm_matched'], r['range_norm_matched_sd'], r['n_seeds'])} | "
                     f"{pair('minus_caa', 'minus_caa_wins')} | {pair('norm_matched_minus_caa', 'norm_matched_minus_caa_wins')} | "
                     f"{pair('norm_matched_minus_uniform', 'norm_matched_minus_uniform_wins')} |")
    note = ("\nSteering range P(y+ | α=+1) − P(y+ | α=−1) on the test split, mean ± SD over seeds. \"At CAA's norm\": each "
            "method's vector rescaled to the CAA vector's norm at the same layer and seed before steering, so that "
            "only the directions differ. Paired differences are per seed; (k/n) = seeds in which the method's range "
            "was larger.\n")
    return "\n".join(lines) + "\n" + note, t


def _write_tables(out: Path, results: list[BehaviourResult], side: pd.DataFrame, config: ReproduceConfig,
                  final: bool = True) -> list[str]:
    """Write the tables (and, when ``final``, Table 3 and the plots); returns the file names."""
    df = pd.concat([r.frame() for r in results], ignore_index=True)
    df.insert(2, "label", df["method"].map(_label))
    layer_df = pd.concat([s.layer_df.assign(behaviour=r.name) for r in results for s in r.seeds], ignore_index=True)
    tparts = [s.temp_df.assign(behaviour=r.name) for r in results for s in r.seeds if s.temp_df is not None]
    temp_df = pd.concat(tparts, ignore_index=True) if tparts else pd.DataFrame()
    eligible = {r.name: [s.eligible_fraction for s in r.seeds] for r in results}
    masses = {r.name: r.mass_base for r in results}
    return write_outputs(out, df, layer_df, temp_df, side if final else None, eligible, masses,
                         list(config.mmlu_methods), config.png)


def write_outputs(out: Path, df: pd.DataFrame, layer_df: pd.DataFrame, temp_df: pd.DataFrame, side: pd.DataFrame | None,
                  eligible: dict[str, list[float]], masses: dict[str, float], mmlu_methods: list[str],
                  png: bool = True) -> list[str]:
    """Tables 1-2 (+ Table 3 and the plots when ``side`` is given) and the CSVs behind them."""
    df.to_csv(out / "per_seed.csv", index=False)
    layer_df.to_csv(out / "layer_sweep.csv", index=False)
    if len(temp_df):
        temp_df.to_csv(out / "temperature_sweep.csv", index=False)
    md1, csv1 = table1(df)
    md2, csv2 = table2(df, eligible)
    seeds = int(df["seed"].nunique())
    mass_txt = ", ".join(f"{b} {m:.2f}" for b, m in masses.items() if m is not None and np.isfinite(m))
    head = (f"Behaviour alignment on the test split, {seeds} seed(s) (7:2:1 splits), mean ± SD over seeds; "
            "layer and temperature chosen on validation per seed. Single-token answers: P(y+)/(P(y+)+P(y-)); "
            "sentence answers: sigmoid(mean log p(y+) − mean log p(y−)). "
            + (f"Unsteered probability mass on the two answers: {mass_txt}. " if mass_txt else "") + "\n\n")
    (out / "table1.md").write_text("# Table 1: steering methods\n\n" + head + md1)
    csv1.to_csv(out / "table1.csv", index=False)
    (out / "table2.md").write_text("# Table 2: ablations\n\n" + md2)
    csv2.to_csv(out / "table2.csv", index=False)
    files = ["table1.md", "table1.csv", "table2.md", "table2.csv", "per_seed.csv", "layer_sweep.csv"]
    md_n, csv_n = norm_matched_table(df)
    if md_n:
        (out / "table1_norm_matched.md").write_text("# Table 1b: as extracted vs norm-matched to CAA\n\n" + md_n)
        csv_n.to_csv(out / "table1_norm_matched.csv", index=False)
        files += ["table1_norm_matched.md", "table1_norm_matched.csv"]
    if len(temp_df):
        files.append("temperature_sweep.csv")
    if side is not None:
        md3, csv3 = table3(side, mmlu_methods)
        (out / "table3.md").write_text("# Table 3: side effects\n\n" + md3)
        csv3.to_csv(out / "table3.csv", index=False)
        files += ["table3.md", "table3.csv"]
        files += write_plots(out, df, layer_df, temp_df, png)
    return files


def render_outputs(out: str | Path, png: bool = True) -> list[str]:
    """Rebuild every table and plot of a finished run from its CSVs and ``run.json`` (no model)."""
    out = Path(out)
    run = json.loads((out / "run.json").read_text())
    df = pd.read_csv(out / "per_seed.csv")
    layer_df = pd.read_csv(out / "layer_sweep.csv")
    temp_df = pd.read_csv(out / "temperature_sweep.csv") if (out / "temperature_sweep.csv").is_file() else pd.DataFrame()
    side = pd.read_csv(out / "table3.csv").fillna({"behaviour": ""}) if (out / "table3.csv").is_file() else pd.DataFrame()
    eligible = {b["name"]: [s["eligible_fraction"] for s in b["seeds"]] for b in run["behaviours"]}
    masses = {b["name"]: b.get("unsteered_answer_mass") for b in run["behaviours"]}
    return write_outputs(out, df, layer_df, temp_df, side, eligible, masses, list(run["config"]["mmlu_methods"]), png)
