"""Behaviour alignment under steering, seeded splits, and the layer / temperature / alpha sweeps.

The metric (DESIGN.md section 1, "Evaluation"):

- single-token answers (A/B labels, Yes/No): ``P(y+) / (P(y+) + P(y-))`` at the answer position,
  with the mass ``P(y+) + P(y-)`` reported beside it; multi-option CAA items normalise over every
  option: ``P(y+) / sum_o P(o)``, mass ``sum_o P(o)``;
- sentence answers: the likelihood preference
  ``sigmoid(mean log p(y+ | q) - mean log p(y- | q))`` over the answer tokens (no mass).

Which tokens make up an answer's probability. The answer sits at the start of the assistant turn
(:func:`saas.prompts.encode`). Its probability is the product of the probabilities of its tokens
from the first answer token up to and including the read token (``Encoded.read_index``): for an
A/B label ``"(A)"`` that is ``"("`` then ``"A"`` (the closing parenthesis carries no choice), for
``"Yes"`` the word's token(s), for a sentence every token. A token shared by all options (the
``"("``) cancels in the normalised probability but counts in the mass.

Steering during evaluation covers the last prompt token and every answer token, the same
positions the default generation mode steers (:mod:`saas.steering`), in one batched forward.

The log-probabilities come from the forward engine (:mod:`saas.forward`): :func:`answer_logprobs`
(full forwards, re-exported here) or, when a ``prompt_cache`` is passed to :func:`alignments`,
:func:`alignment` or a sweep, a :class:`saas.forward.PromptCache` that runs only the last prompt
token and the answer tokens per steering condition (same numbers, several times faster).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from saas import baselines
from saas.activations import ActivationSet
from saas.data import BehaviourDataset, Instance
from saas.forward import (
    AnswerLogprobs,
    Condition,
    PromptCache,
    answer_logprobs,
    candidate_answers,
    left_positions,
    pad_id,
    pad_left,
)
from saas.models import LoadedModel
from saas.prompts import is_label
from saas.steering import Positions, SteeringVector
from saas.weighting import softmax_weights, weighted_vector

__all__ = [
    "ANSWER_KINDS", "NEUTRAL_TEXTS", "SINGLE_TOKEN_KINDS", "AlignmentResult", "AnswerLogprobs", "alignment",
    "alignment_from_logprobs", "alignments", "alpha_sweep", "answer_logprobs", "best_layer", "best_temperature",
    "candidate_answers", "infer_answer_kind", "instance_scores", "layer_sweep", "model_scores",
    "model_scores_from_logprobs", "neutral_kl", "split_indices", "temperature_sweep",
]

Progress = Callable[[int, int, str], None]
SINGLE_TOKEN_KINDS = ("ab", "yesno")
ANSWER_KINDS = ("ab", "yesno", "sentence")

NEUTRAL_TEXTS: tuple[str, ...] = (
    "The water cycle describes how water evaporates from the surface, condenses into clouds and falls back as rain or snow.",
    "A triangle has three sides, and the sum of its interior angles is always one hundred and eighty degrees.",
    "The library opens at nine in the morning and closes at six in the evening from Monday to Friday.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "To boil an egg, place it in a pot of water, bring the water to a boil and wait about eight minutes.",
    "The Pacific is the largest ocean on Earth and covers about a third of the planet's surface.",
    "A computer program is a sequence of instructions that a processor executes one after another.",
    "The train from the city centre to the airport leaves every twenty minutes and takes half an hour.",
)
"""Built-in neutral sentences for :func:`neutral_kl` (no behaviour, no data file needed)."""


# --------------------------------------------------------------------------------------------
# alignment


def infer_answer_kind(instances: Sequence[Instance]) -> str:
    """``"ab"`` when every answer is a label like ``"(A)"``, ``"yesno"`` when every answer is one
    word, else ``"sentence"``."""
    answers = [a for inst in instances for a in (inst.positive, inst.negative)]
    if answers and all(is_label(a) for a in answers):
        return "ab"
    if answers and all(len(a.split()) == 1 for a in answers):
        return "yesno"
    return "sentence"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def instance_scores(lp: AnswerLogprobs, answer_kind: str) -> tuple[float, float, float]:
    """(alignment probability, mass, log-ratio) of one instance.

    - single-token kinds: ``log P(o) = sum of the scored token log-probs``; probability
      ``P(y+) / sum_o P(o)`` over the candidate answers (``[y+, y-]`` or every option), mass
      ``sum_o P(o)``, log-ratio ``log P(y+) - log P(y-)``;
    - sentences: log-ratio ``mean log p(y+) - mean log p(y-)``, probability its sigmoid, mass NaN.
    """
    if answer_kind not in ANSWER_KINDS:
        raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {answer_kind!r}")
    if answer_kind == "sentence":
        m = lp.means
        diff = float(m[0] - m[1])
        return _sigmoid(diff), float("nan"), diff
    s = lp.sums
    top = float(s.max())
    lse = top + math.log(float(np.exp(s - top).sum()))
    return math.exp(float(s[0]) - lse), math.exp(lse), float(s[0] - s[1])


@dataclass
class AlignmentResult:
    """Behaviour alignment of a set of instances at one alpha.

    Attributes:
        ids: Instance ids, [N].
        prob: Per-instance alignment probability, [N] (see the module docstring).
        mass: Per-instance probability mass on the candidate answers, [N]; ``None`` for sentences.
        answer_kind: ``"ab"``, ``"yesno"`` or ``"sentence"``.
        alpha: The steering multiplier used.
        method: Name of the steering vector's method (``""`` when unsteered).
    """

    ids: list[str]
    prob: np.ndarray
    mass: np.ndarray | None
    answer_kind: str
    alpha: float = 0.0
    method: str = ""

    @property
    def mean(self) -> float:
        """Mean alignment probability over the instances."""
        return float(np.mean(self.prob)) if len(self.prob) else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.prob)) if len(self.prob) else float("nan")

    @property
    def mass_mean(self) -> float | None:
        return None if self.mass is None or not len(self.mass) else float(np.mean(self.mass))

    def to_frame(self) -> pd.DataFrame:
        """One row per instance: id, prob, mass."""
        return pd.DataFrame({"id": self.ids, "prob": self.prob,
                             "mass": self.mass if self.mass is not None else np.full(len(self.ids), np.nan)})

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "alpha": self.alpha, "answer_kind": self.answer_kind, "n": len(self.ids),
                "alignment": self.mean, "std": self.std, "mass": self.mass_mean}


def _resolve(data: BehaviourDataset | Sequence[Instance], answer_kind: str | None) -> tuple[list[Instance], str]:
    if isinstance(data, BehaviourDataset):
        items, kind = list(data.instances), answer_kind or data.answer_kind
    else:
        items = list(data)
        kind = answer_kind or infer_answer_kind(items)
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if not items:
        raise ValueError("no instances to evaluate")
    return items, kind


def alignment_from_logprobs(lps: Sequence[AnswerLogprobs], answer_kind: str, alpha: float = 0.0, method: str = "") -> AlignmentResult:
    """Turn :func:`answer_logprobs` output into an :class:`AlignmentResult` (no model call)."""
    scores = [instance_scores(lp, answer_kind) for lp in lps]
    prob = np.array([s[0] for s in scores], dtype=np.float64)
    mass = None if answer_kind == "sentence" else np.array([s[1] for s in scores], dtype=np.float64)
    return AlignmentResult([lp.id for lp in lps], prob, mass, answer_kind, float(alpha), method)


def _cache_indices(prompt_cache: PromptCache, items: Sequence[Instance]) -> list[int] | None:
    """Where ``items`` sit in ``prompt_cache`` (``None``: all of them, in order)."""
    ids = [i.id for i in items]
    if ids == [i.id for i in prompt_cache.instances]:
        return None
    if not prompt_cache.keep:
        raise ValueError("a prompt cache built with keep=False can only score all of its instances, in order")
    return prompt_cache.index_of(ids)


def alignments(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None,
    conditions: Sequence[Condition],
    *,
    batch_size: int = 16,
    prompt_cache: PromptCache | None = None,
    progress: Progress | None = None,
) -> list[AlignmentResult]:
    """Behaviour alignment of the same instances under several steering conditions.

    Args:
        data: a dataset (its ``answer_kind`` is used unless one is given) or instances.
        answer_kind: ``"ab"``, ``"yesno"`` or ``"sentence"``; inferred from the answers if omitted.
        conditions: ``(vector, alpha)`` pairs; ``(None, 0.0)`` is the base model.
        prompt_cache: a :class:`saas.forward.PromptCache` holding these instances (by id): every
            condition then runs only the last prompt token and the answer tokens on the cached
            prompts (the same numbers to float32 round-off, several times faster). Without it each
            condition is one :func:`answer_logprobs` pass of full forwards.

    Returns:
        One :class:`AlignmentResult` per condition, in order.
    """
    items, kind = _resolve(data, answer_kind)
    conds = list(conditions)
    if prompt_cache is not None:
        per = prompt_cache.logprobs(conds, _cache_indices(prompt_cache, items), progress=progress)
    else:
        per = []
        for k, (vec, alpha) in enumerate(conds):
            per.append(answer_logprobs(lm, items, vector=vec if alpha != 0 else None, alpha=alpha, batch_size=batch_size))
            if progress:
                progress(k + 1, len(conds), f"Scored condition {k + 1}/{len(conds)}")
    return [alignment_from_logprobs(lps, kind, alpha, vec.method if vec is not None else "")
            for lps, (vec, alpha) in zip(per, conds)]


def alignment(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None = None,
    *,
    vector: SteeringVector | None = None,
    alpha: float = 0.0,
    batch_size: int = 16,
    progress: Progress | None = None,
    prompt_cache: PromptCache | None = None,
) -> AlignmentResult:
    """Behaviour alignment probability of held-out instances under steering with ``alpha``.

    Args:
        data: a dataset (its ``answer_kind`` is used unless one is given) or instances.
        answer_kind: ``"ab"``, ``"yesno"`` or ``"sentence"``; inferred from the answers if omitted.
        vector, alpha: the steering vector and multiplier (``None``: the base model).
        prompt_cache: optional :class:`saas.forward.PromptCache` of these instances (see :func:`alignments`).
    """
    items, kind = _resolve(data, answer_kind)
    if prompt_cache is not None:
        return alignments(lm, items, kind, [(vector, alpha)], prompt_cache=prompt_cache)[0]
    lps = answer_logprobs(lm, items, vector=vector, alpha=alpha, batch_size=batch_size, progress=progress)
    return alignment_from_logprobs(lps, kind, alpha, vector.method if vector is not None else "")


def model_scores_from_logprobs(lps: Sequence[AnswerLogprobs], answer_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(logit_diff [N], conf [N])`` from unsteered answer log-probs (see :func:`model_scores`); no model call."""
    scores = [instance_scores(lp, answer_kind) for lp in lps]
    return np.array([s[2] for s in scores], dtype=np.float64), np.array([s[0] for s in scores], dtype=np.float64)


def model_scores(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None = None,
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's own (unsteered) preference per instance, for the logit-diff and conf baselines.

    :func:`saas.activations.extract_activations` returns the same numbers from its own forward
    pass (:attr:`saas.activations.ActivationSet.logprobs`); this function runs a separate pass.

    Returns:
        ``(logit_diff [N], conf [N])``:

        - ``logit_diff = log P(y+ | q) - log P(y- | q)``. For single-token answers at the same
          position this equals ``logit(y+) - logit(y-)`` (the softmax normaliser cancels; a shared
          ``"("`` prefix cancels too). For sentences it is the mean token log-prob difference
          ``mean log p(y+) - mean log p(y-)``.
        - ``conf`` = the normalised probability of y+, i.e. the alignment probability at alpha 0:
          ``P(y+) / (P(y+) + P(y-))`` (over all options for multi-option items); for sentences
          ``sigmoid(logit_diff)``.
    """
    items, kind = _resolve(data, answer_kind)
    return model_scores_from_logprobs(answer_logprobs(lm, items, batch_size=batch_size, progress=progress), kind)


# --------------------------------------------------------------------------------------------
# splits


def split_indices(n: int, seed: int, ratios: Sequence[float] = (0.7, 0.2, 0.1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random train/val/test split of ``range(n)`` (default 7:2:1).

    Sizes are ``ratio * n`` rounded by largest remainder, and every split with a positive ratio
    gets at least one index when ``n`` allows. The splits are disjoint, cover ``range(n)``, and
    depend only on ``(n, seed, ratios)``. Each is returned sorted.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers with a positive sum, got {ratios}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    r = np.asarray(ratios, dtype=float) / float(sum(ratios))
    exact = r * n
    sizes = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - sizes), kind="stable")[: n - int(sizes.sum())]:
        sizes[k] += 1
    wanted = [k for k in range(3) if r[k] > 0]
    if n >= len(wanted):
        for k in wanted:
            if sizes[k] == 0:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[k] = 1
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(sizes[0]), int(sizes[0] + sizes[1])
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


# --------------------------------------------------------------------------------------------
# sweeps


def _mass(res: AlignmentResult) -> float:
    return res.mass_mean if res.mass_mean is not None else float("nan")


def alpha_sweep(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None,
    vectors: Mapping[str, SteeringVector],
    alphas: Sequence[float],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    prompt_cache: PromptCache | None = None,
) -> pd.DataFrame:
    """Alignment of every method at every alpha. Alpha 0 is the unsteered model for every method
    (bit-identical by construction), so it is evaluated once and shared.

    Args:
        prompt_cache: optional :class:`saas.forward.PromptCache` of ``data`` (see :func:`alignments`).

    Returns:
        Columns ``method, alpha, alignment, mass, n`` (``mass`` NaN for sentences), one row per
        (method, alpha).
    """
    items, kind = _resolve(data, answer_kind)
    alphas = [float(a) for a in alphas]
    conds: list[Condition] = [(None, 0.0)] if 0.0 in alphas else []
    keys: list[tuple[str, float]] = []
    for method, vec in vectors.items():
        for alpha in alphas:
            if alpha != 0.0:
                conds.append((vec, alpha))
                keys.append((method, alpha))
    labels = (["alpha 0 (unsteered)"] if 0.0 in alphas else []) + [f"{m} at alpha {a:+g}" for m, a in keys]
    tick = None if progress is None else (lambda d, t, _m: progress(d, t, labels[d - 1] if prompt_cache is None else _m))
    res = alignments(lm, items, kind, conds, batch_size=batch_size, prompt_cache=prompt_cache, progress=tick)
    base = res[0] if 0.0 in alphas else None
    steered = dict(zip(keys, res[1:] if base is not None else res))
    rows = []
    for method in vectors:
        for alpha in alphas:
            r = base if alpha == 0.0 else steered[(method, alpha)]
            assert r is not None
            rows.append({"method": method, "alpha": alpha, "alignment": r.mean, "mass": _mass(r), "n": len(items)})
    return pd.DataFrame(rows, columns=["method", "alpha", "alignment", "mass", "n"])


def _score_column(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Add ``score`` = alignment at the largest alpha - alignment at the smallest, per ``key``."""
    lo, hi = df["alpha"].min(), df["alpha"].max()
    piv = df.pivot_table(index=key, columns="alpha", values="alignment")
    score = piv[hi] - piv[lo] if hi != lo else piv[hi] * 0.0
    return df.assign(score=df[key].map(score))


def layer_sweep(
    lm: LoadedModel,
    acts: ActivationSet,
    instances_val: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None,
    train_idx: Sequence[int],
    layers: Sequence[int],
    alphas: Sequence[float] = (-1.0, 1.0),
    progress: Progress | None = None,
    *,
    batch_size: int = 16,
    prompt_cache: PromptCache | None = None,
) -> pd.DataFrame:
    """Steer with a CAA vector at each layer and measure alignment on the validation instances.

    The vector of layer ``l`` is the mean of the cached training local vectors
    ``acts.diffs(l)[train_idx]`` (:func:`saas.baselines.caa`): no new extraction. ``score`` =
    alignment at the largest alpha - alignment at the smallest (default +1 vs -1); :func:`best_layer`
    picks its maximum.

    Args:
        prompt_cache: optional :class:`saas.forward.PromptCache` holding the validation instances:
            every (layer, alpha) condition is then scored on the cached prompts (see :func:`alignments`).

    Raises:
        ValueError: a validation instance is also among the training indices.

    Returns:
        Columns ``method, layer, alpha, alignment, mass, score``; one row per (layer, alpha).
    """
    items, kind = _resolve(instances_val, answer_kind)
    train = np.asarray(train_idx, dtype=int)
    overlap = {acts.ids[i] for i in train} & {inst.id for inst in items}
    if overlap:
        raise ValueError(f"{len(overlap)} validation instances are in the training indices, e.g. {sorted(overlap)[:3]}")
    conds: list[Condition] = []
    keys: list[tuple[int, float]] = []
    for layer in layers:
        vec = SteeringVector.from_array(baselines.caa(acts.diffs(layer)[train]).astype(np.float32), layer, "CAA",
                                        model_fingerprint=acts.model_fingerprint, n_train=len(train))
        for alpha in alphas:
            conds.append((vec, float(alpha)))
            keys.append((int(layer), float(alpha)))
    tick = None
    if progress is not None and prompt_cache is None:
        tick = lambda d, t, _m: progress(d, t, f"Layer {keys[d - 1][0]}, alpha {keys[d - 1][1]:+g}")  # noqa: E731
    res = alignments(lm, items, kind, conds, batch_size=batch_size, prompt_cache=prompt_cache, progress=tick or progress)
    rows = [{"method": "CAA", "layer": k[0], "alpha": k[1], "alignment": r.mean, "mass": _mass(r)} for k, r in zip(keys, res)]
    df = pd.DataFrame(rows, columns=["method", "layer", "alpha", "alignment", "mass"])
    return _score_column(df, "layer") if len(df) else df.assign(score=[])


def best_layer(df: pd.DataFrame) -> int:
    """The layer with the largest ``score`` in a :func:`layer_sweep` table (lowest layer on ties)."""
    per = df.groupby("layer")["score"].first().sort_index()
    if per.empty or per.isna().all():
        raise ValueError("the layer sweep table has no scores")
    return int(per.idxmax())


def temperature_sweep(
    lm: LoadedModel,
    instances_val: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None,
    diffs_train: np.ndarray,
    importance_train: np.ndarray,
    eligible_train: np.ndarray,
    layer: int,
    temps: Sequence[float],
    alphas: Sequence[float] = (-1.0, 1.0),
    progress: Progress | None = None,
    *,
    batch_size: int = 16,
    method: str = "SAAS",
    prompt_cache: PromptCache | None = None,
) -> pd.DataFrame:
    """Alignment on the validation instances of the SAAS vector at each softmax temperature.

    For each ``t``: ``w = softmax(importance / t)`` over the eligible training instances (Eq. 6),
    ``v = sum_i w_i v_i`` (Eq. 7) with :func:`saas.weighting.softmax_weights` and
    :func:`saas.weighting.weighted_vector`, steered at ``layer``. ``score`` as in :func:`layer_sweep`.

    Args:
        diffs_train: local vectors v_i of the training instances at ``layer``, [N, d].
        importance_train: s_i, [N].
        eligible_train: bool [N].
        prompt_cache: optional :class:`saas.forward.PromptCache` holding the validation instances.

    Returns:
        Columns ``method, temperature, alpha, alignment, mass, ess, score`` where ``ess`` is the
        effective sample size ``1 / sum w_i^2``.
    """
    items, kind = _resolve(instances_val, answer_kind)
    diffs = np.asarray(diffs_train, dtype=np.float32)
    imp = np.asarray(importance_train, dtype=np.float64)
    elig = np.asarray(eligible_train, dtype=bool)
    if not (diffs.ndim == 2 and diffs.shape[0] == imp.shape[0] == elig.shape[0]):
        raise ValueError(f"shapes disagree: diffs {diffs.shape}, importance {imp.shape}, eligible {elig.shape}")
    conds: list[Condition] = []
    keys: list[tuple[float, float, float]] = []
    for t in temps:
        w = softmax_weights(imp, float(t), elig)
        vec = SteeringVector.from_array(weighted_vector(diffs, w), layer, method, temperature=float(t))
        ess = float(1.0 / np.sum(w**2))
        for alpha in alphas:
            conds.append((vec, float(alpha)))
            keys.append((float(t), float(alpha), ess))
    tick = None
    if progress is not None and prompt_cache is None:
        tick = lambda d, t, _m: progress(d, t, f"t = {keys[d - 1][0]:g}, alpha {keys[d - 1][1]:+g}")  # noqa: E731
    res = alignments(lm, items, kind, conds, batch_size=batch_size, prompt_cache=prompt_cache, progress=tick or progress)
    rows = [{"method": method, "temperature": k[0], "alpha": k[1], "alignment": r.mean, "mass": _mass(r), "ess": k[2]}
            for k, r in zip(keys, res)]
    df = pd.DataFrame(rows, columns=["method", "temperature", "alpha", "alignment", "mass", "ess"])
    return _score_column(df, "temperature") if len(df) else df.assign(score=[])


def best_temperature(df: pd.DataFrame) -> float:
    """The temperature with the largest ``score`` in a :func:`temperature_sweep` table."""
    per = df.groupby("temperature")["score"].first().sort_index()
    if per.empty or per.isna().all():
        raise ValueError("the temperature sweep table has no scores")
    return float(per.idxmax())


# --------------------------------------------------------------------------------------------
# side effects


@torch.inference_mode()
def neutral_kl(
    lm: LoadedModel,
    vector: SteeringVector,
    alpha: float,
    texts: Sequence[str] | None = None,
    *,
    positions: Positions = "all",
    batch_size: int = 8,
) -> float:
    """Side-effect check that needs no data: mean KL(base || steered) of the next-token
    distributions over every position of some neutral sentences (default :data:`NEUTRAL_TEXTS`).

    ``KL = sum_x p_base(x) (log p_base(x) - log p_steered(x))`` per position, averaged over all
    real (non-padding) positions. 0 at ``alpha = 0``; grows as steering disturbs ordinary text.
    Steering covers every position by default (``positions="all"``).
    """
    texts = list(texts or NEUTRAL_TEXTS)
    if not texts:
        raise ValueError("no texts")
    tok = lm.tokenizer
    total_kl, count = 0.0, 0
    for b0 in range(0, len(texts), batch_size):
        seqs = [list(tok(t)["input_ids"]) for t in texts[b0 : b0 + batch_size]]
        ids, mask, _ = pad_left(seqs, pad_id(lm))
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": left_positions(mask), "use_cache": False}
        base = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
        with vector.apply(lm, alpha, positions):
            steered = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
        kl = (base.exp() * (base - steered)).sum(-1)  # [B, T]
        real = mask.bool()
        total_kl += float(kl[real].sum())
        count += int(real.sum())
    return total_kl / max(count, 1)
