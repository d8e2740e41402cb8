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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from saas.activations import ActivationSet, _pad_left
from saas.data import BehaviourDataset, Instance
from saas.models import LoadedModel
from saas.prompts import encode, is_label
from saas.steering import Positions, SteeringVector
from saas.weighting import softmax_weights, weighted_vector

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
# answer log-probabilities


@dataclass
class AnswerLogprobs:
    """Token log-probabilities of each candidate answer of one instance given its prompt.

    Attributes:
        id: The instance id.
        answers: ``[y+, y-, *other options]`` (other options only for multi-option A/B items).
        token_logprobs: Per answer, float64 [n_tokens]: ``log p(token | prompt, earlier tokens)``
            for the answer's scored tokens (first answer token up to and including the read token).
    """

    id: str
    answers: list[str]
    token_logprobs: list[np.ndarray]

    @property
    def sums(self) -> np.ndarray:
        """log P(answer | prompt) per answer, [A]."""
        return np.array([float(t.sum()) for t in self.token_logprobs])

    @property
    def means(self) -> np.ndarray:
        """Mean token log-probability per answer, [A]."""
        return np.array([float(t.mean()) for t in self.token_logprobs])


def candidate_answers(inst: Instance) -> list[str]:
    """``[y+, y-]`` followed by any other options offered in the prompt (multi-option items)."""
    seen = {inst.positive.strip(), inst.negative.strip()}
    extra = [o for o in inst.options if o.strip() not in seen]
    return [inst.positive, inst.negative, *extra]


def _accepts_logits_to_keep(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _steer(vector: SteeringVector | None, lm: LoadedModel, alpha: float, positions: Positions) -> Any:
    return nullcontext() if vector is None else vector.apply(lm, alpha, positions)


@torch.inference_mode()
def answer_logprobs(
    lm: LoadedModel,
    instances: Sequence[Instance] | BehaviourDataset,
    *,
    vector: SteeringVector | None = None,
    alpha: float = 0.0,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[AnswerLogprobs]:
    """Log-probabilities of every candidate answer of every instance, optionally under steering.

    Every ``prompt || answer`` text is one row; rows are sorted by length, left-padded and run in
    batches of ``batch_size`` (one forward with the LM head per batch, logits kept only for the
    answer positions). Steering, when given, covers positions from the last prompt token onward
    (a per-row start tensor, see :mod:`saas.steering`).

    Returns:
        One :class:`AnswerLogprobs` per instance, in input order.
    """
    items = list(instances.instances if isinstance(instances, BehaviourDataset) else instances)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = lm.tokenizer
    rows: list[tuple[int, int, list[int], int, int]] = []  # (instance, answer, ids, first scored, last scored)
    answers: list[list[str]] = []
    for i, inst in enumerate(items):
        cands = candidate_answers(inst)
        answers.append(cands)
        for a, text in enumerate(cands):
            enc = encode(tok, inst.prompt, text)
            if enc.answer_start < 1:
                raise ValueError(f"instance {inst.id!r}: empty prompt, no position predicts the answer")
            rows.append((i, a, enc.ids, enc.answer_start, enc.read_index))
    out: list[list[np.ndarray | None]] = [[None] * len(c) for c in answers]
    order = sorted(range(len(rows)), key=lambda k: len(rows[k][2]))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    keep_ok = _accepts_logits_to_keep(lm.model)
    device = lm.device
    total = len(order)
    for b0 in range(0, total, batch_size):
        chunk = [rows[k] for k in order[b0 : b0 + batch_size]]
        ids, mask, pads = _pad_left([r[2] for r in chunk], pad_id)
        width = ids.shape[1]
        ids, mask = ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # Column of each row's last prompt token (padded coordinates): steering starts there.
        start = torch.tensor([p + r[3] - 1 for p, r in zip(pads, chunk)], dtype=torch.long)
        first_col = int(start.min())
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "use_cache": False}
        offset = 0
        if keep_ok:
            kwargs["logits_to_keep"] = width - first_col
            offset = first_col
        with _steer(vector, lm, alpha, start):
            logits = lm.model(**kwargs).logits
        for r, (pad, row) in enumerate(zip(pads, chunk)):
            i, a, seq, first, last = row
            targets = torch.tensor(seq[first : last + 1], device=logits.device)
            cols = torch.arange(pad + first - 1, pad + last, device=logits.device) - offset
            logp = torch.log_softmax(logits[r, cols].float(), dim=-1)
            out[i][a] = logp.gather(-1, targets[:, None])[:, 0].double().cpu().numpy()
        if progress:
            done = min(b0 + batch_size, total)
            progress(done, total, f"Scoring answers: {done}/{total} texts")
    return [AnswerLogprobs(inst.id, answers[i], [t for t in out[i] if t is not None]) for i, inst in enumerate(items)]


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


def alignment(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None = None,
    *,
    vector: SteeringVector | None = None,
    alpha: float = 0.0,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> AlignmentResult:
    """Behaviour alignment probability of held-out instances under steering with ``alpha``.

    Args:
        data: a dataset (its ``answer_kind`` is used unless one is given) or instances.
        answer_kind: ``"ab"``, ``"yesno"`` or ``"sentence"``; inferred from the answers if omitted.
        vector, alpha: the steering vector and multiplier (``None``: the base model).
    """
    items, kind = _resolve(data, answer_kind)
    lps = answer_logprobs(lm, items, vector=vector, alpha=alpha, batch_size=batch_size, progress=progress)
    return alignment_from_logprobs(lps, kind, alpha, vector.method if vector is not None else "")


def model_scores(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None = None,
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's own (unsteered) preference per instance, for the logit-diff and conf baselines.

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
    lps = answer_logprobs(lm, items, batch_size=batch_size, progress=progress)
    scores = [instance_scores(lp, kind) for lp in lps]
    return np.array([s[2] for s in scores]), np.array([s[0] for s in scores])


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


def alpha_sweep(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    answer_kind: str | None,
    vectors: Mapping[str, SteeringVector],
    alphas: Sequence[float],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Alignment of every method at every alpha. Alpha 0 is the unsteered model for every method
    (bit-identical by construction), so it is evaluated once and shared.

    Returns:
        Columns ``method, alpha, alignment, mass, n`` (``mass`` NaN for sentences), one row per
        (method, alpha).
    """
    items, kind = _resolve(data, answer_kind)
    alphas = [float(a) for a in alphas]
    runs = (1 if 0.0 in alphas else 0) + len(vectors) * sum(a != 0.0 for a in alphas)
    done = 0
    base: AlignmentResult | None = None
    rows = []

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, runs, message)

    for method, vec in vectors.items():
        for alpha in alphas:
            if alpha == 0.0:
                if base is None:
                    base = alignment(lm, items, kind, batch_size=batch_size)
                    tick("alpha 0 (unsteered)")
                res = base
            else:
                res = alignment(lm, items, kind, vector=vec, alpha=alpha, batch_size=batch_size)
                tick(f"{method} at alpha {alpha:+g}")
            rows.append({"method": method, "alpha": alpha, "alignment": res.mean,
                         "mass": res.mass_mean if res.mass_mean is not None else np.nan, "n": len(items)})
    return pd.DataFrame(rows, columns=["method", "alpha", "alignment", "mass", "n"])


def _score_column(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Add ``score`` = alignment at the largest alpha - alignment at the smallest, per ``key``."""
    lo, hi = df["alpha"].min(), df["alpha"].max()
    piv = df.pivot_table(index=key, columns="alpha", values="alignment")
    score = piv[hi] - piv[lo] if hi != lo else piv[hi] * 0.0
    return df.assign(score=df[key].map(score))


def caa_vector(diffs: np.ndarray) -> np.ndarray:
    """Mean difference (Eq. 1) of local vectors [N, d] -> [d]."""
    if diffs.ndim != 2 or diffs.shape[0] == 0:
        raise ValueError(f"need local vectors [N > 0, d], got shape {diffs.shape}")
    return diffs.astype(np.float64).mean(axis=0).astype(np.float32)


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
) -> pd.DataFrame:
    """Steer with a CAA vector at each layer and measure alignment on the validation instances.

    The vector of layer ``l`` is the mean of the cached training local vectors
    ``acts.diffs(l)[train_idx]``: no new extraction. ``score`` = alignment at the largest alpha -
    alignment at the smallest (default +1 vs -1); :func:`best_layer` picks its maximum.

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
    total = len(layers) * len(alphas)
    rows, done = [], 0
    for layer in layers:
        vec = SteeringVector.from_array(caa_vector(acts.diffs(layer)[train]), layer, "CAA",
                                        model_fingerprint=acts.model_fingerprint, n_train=len(train))
        for alpha in alphas:
            res = alignment(lm, items, kind, vector=vec, alpha=alpha, batch_size=batch_size)
            rows.append({"method": "CAA", "layer": int(layer), "alpha": float(alpha), "alignment": res.mean,
                         "mass": res.mass_mean if res.mass_mean is not None else np.nan})
            done += 1
            if progress:
                progress(done, total, f"Layer {layer}, alpha {alpha:+g}: alignment {res.mean:.3f}")
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
) -> pd.DataFrame:
    """Alignment on the validation instances of the SAAS vector at each softmax temperature.

    For each ``t``: ``w = softmax(importance / t)`` over the eligible training instances (Eq. 6),
    ``v = sum_i w_i v_i`` (Eq. 7) with :func:`saas.weighting.softmax_weights` and
    :func:`saas.weighting.weighted_vector`, steered at ``layer``. ``score`` as in :func:`layer_sweep`.

    Args:
        diffs_train: local vectors v_i of the training instances at ``layer``, [N, d].
        importance_train: s_i, [N].
        eligible_train: bool [N].

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
    total = len(temps) * len(alphas)
    rows, done = [], 0
    for t in temps:
        w = softmax_weights(imp, float(t), elig)
        vec = SteeringVector.from_array(weighted_vector(diffs, w), layer, method, temperature=float(t))
        ess = float(1.0 / np.sum(w**2))
        for alpha in alphas:
            res = alignment(lm, items, kind, vector=vec, alpha=alpha, batch_size=batch_size)
            rows.append({"method": method, "temperature": float(t), "alpha": float(alpha), "alignment": res.mean,
                         "mass": res.mass_mean if res.mass_mean is not None else np.nan, "ess": ess})
            done += 1
            if progress:
                progress(done, total, f"t = {t:g}, alpha {alpha:+g}: alignment {res.mean:.3f}")
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
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    total_kl, count = 0.0, 0
    for b0 in range(0, len(texts), batch_size):
        seqs = [list(tok(t)["input_ids"]) for t in texts[b0 : b0 + batch_size]]
        ids, mask, _ = _pad_left(seqs, pad_id)
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "use_cache": False}
        base = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
        with vector.apply(lm, alpha, positions):
            steered = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
        kl = (base.exp() * (base - steered)).sum(-1)  # [B, T]
        real = mask.bool()
        total_kl += float(kl[real].sum())
        count += int(real.sum())
    return total_kl / max(count, 1)
