"""Diagnostics that tell a researcher whether to trust an instance selection.

- :func:`steerability`: per-instance steerability (after Tan et al. 2024, DESIGN.md section 5): for
  pair i, the least-squares slope of its own preference m_i(alpha) against alpha, where m_i is the
  log-ratio of its two answers (logit(y+) - logit(y-) at the answer position for token answers, the
  mean token log-likelihood difference for sentences), steering with a vector (the CAA vector of
  the training split at the run's layer) at alpha in {-1, -0.5, 0, 0.5, 1}, at the positions the
  evaluation steers. Anti-steerable: slope < 0 (adding the vector makes the pair prefer its
  negative answer more). It runs on the prompt KV cache (:class:`saas.forward.PromptCache`): the
  prompt runs once, each alpha only re-runs the last prompt token and the answer tokens. Cached on
  disk like every other model score (``cache/scores/steer-<key>.npz``).
- :func:`answer_token_split` / :func:`confound_check`: for token answers (Yes/No, A/B), how the
  eligible pairs and the SAAS weight split by the positive answer's token. The local vector of a
  Yes/No pair read at the answer token is dominated by the token's identity,
  v_i ~ +-(a(Yes) - a(No)) + a small behaviour part, with the sign set by the statement's polarity;
  CAA's mean over a balanced dataset cancels it, a selection that keeps one polarity does not
  (RESULTS.md measured exactly that on the persona files). The warning fires when the dataset is
  balanced but one token holds most of the eligible pairs or of the weight.

Everything here is pure numpy / pandas on arrays the pipeline already has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from saas.data import Instance
from saas.paths import cache_dir

if TYPE_CHECKING:
    from saas.forward import PromptCache
    from saas.models import LoadedModel
    from saas.steering import SteeringVector

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]

#: The alpha grid of :func:`steerability` (DESIGN.md section 5).
STEER_ALPHAS: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
STEER_VERSION = "1"

#: One positive-answer token holding at least this share of the eligible pairs or of the weight ...
CONFOUND_SHARE = 0.8
#: ... while no token holds more than this share of all training pairs (a balanced dataset).
BALANCED_SHARE = 0.6

REMEDIES = (
    "Remedies: use the polarity-balanced consistency test (CLI --consistency polarity-balanced; the "
    "consistency option on this page), which compares every pair with the mean of the per-token mean "
    "local vectors; randomise which letter carries the positive answer (A/B data); or read the result "
    "next to CAA, whose mean over both polarities cancels the answer token."
)
WEIGHT_REMEDIES = (
    "The eligible pairs themselves are not one-sided: the importance scores put the weight there. "
    "Remedies: a larger temperature (Weights page, CLI --temperature) moves the weights towards "
    "uniform over the eligible pairs; compare with uniform-eligible; or use agents that score the "
    "statement's behaviour rather than its answer (the Anthropic backend reads both answers)."
)


def positive_tokens(instances: Sequence[Instance]) -> list[str]:
    """Each pair's positive answer token (``" Yes"`` -> ``"Yes"``): the key of the answer-token
    confound check and of the polarity-balanced consistency groups."""
    return [i.positive.strip() for i in instances]


def answer_token_split(instances: Sequence[Instance], eligible: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    """Per positive-answer token: pairs, eligible pairs and SAAS weight, as counts and shares.

    Args:
        instances: The training pairs (token answers: Yes/No or A/B labels).
        eligible: [N] bool eligibility mask.
        weights: [N] SAAS weights (0 outside the eligible set).

    Returns:
        One row per token (most frequent first): ``token, pairs, pairs %, eligible, eligible %,
        saas weight %``. Shares are of all pairs, of the eligible pairs and of the total weight.
    """
    keep = np.asarray(eligible, dtype=bool)
    w = np.asarray(weights, dtype=np.float64)
    if keep.shape != (len(instances),) or w.shape != keep.shape:
        raise ValueError(f"eligible {keep.shape} and weights {w.shape} must both be [{len(instances)}]")
    tokens = np.asarray(positive_tokens(instances))
    n_elig, total_w = int(keep.sum()), float(w.sum())
    rows = []
    for tok in sorted(set(tokens.tolist()), key=lambda t: (-int((tokens == t).sum()), t)):
        m = tokens == tok
        rows.append({"token": tok, "pairs": int(m.sum()), "pairs %": 100.0 * m.mean(),
                     "eligible": int((m & keep).sum()),
                     "eligible %": 100.0 * int((m & keep).sum()) / n_elig if n_elig else float("nan"),
                     "saas weight %": 100.0 * float(w[m].sum()) / total_w if total_w > 0 else float("nan")})
    return pd.DataFrame(rows, columns=["token", "pairs", "pairs %", "eligible", "eligible %", "saas weight %"])


@dataclass(frozen=True)
class ConfoundCheck:
    """The answer-token confound check of one selection.

    Attributes:
        flagged: True when the dataset is balanced but one token dominates the selection.
        token: The dominating token ("" when not flagged).
        message: The warning with its remedies ("" when not flagged).
        split: The :func:`answer_token_split` table it was computed from.
    """

    flagged: bool
    token: str
    message: str
    split: pd.DataFrame

    def to_dict(self) -> dict[str, object]:
        return {"flagged": self.flagged, "token": self.token, "message": self.message,
                "split": self.split.to_dict("records")}


def confound_check(instances: Sequence[Instance], eligible: np.ndarray, weights: np.ndarray,
                   share: float = CONFOUND_SHARE, balanced: float = BALANCED_SHARE) -> ConfoundCheck:
    """Warn when one positive-answer token holds >= ``share`` of the eligible pairs or of the SAAS
    weight while no token holds more than ``balanced`` of all pairs (the dataset is balanced)."""
    split = answer_token_split(instances, eligible, weights)
    if len(split) < 2:
        return ConfoundCheck(False, "", "", split)
    if split["pairs %"].max() > 100.0 * balanced:
        return ConfoundCheck(False, "", "", split)
    for col, what, remedies in (("eligible %", "of the eligible pairs have", REMEDIES),
                                ("saas weight %", "of the SAAS weight is on pairs with", WEIGHT_REMEDIES)):
        top = split.loc[split[col].idxmax()] if split[col].notna().any() else None
        if top is not None and float(top[col]) >= 100.0 * share:
            msg = (f"Answer-token confound: {float(top[col]):.0f}% {what} the positive answer "
                   f"{top['token']!r}, although the training pairs are balanced "
                   f"({', '.join(f'{r.token!r} {r._3:.0f}%' for r in split.itertuples())}). The local vectors "
                   "of token answers carry the answer token's identity, so this selection steers towards "
                   f"saying {top['token']!r} rather than towards the behaviour. {remedies}")
            return ConfoundCheck(True, str(top["token"]), msg, split)
    return ConfoundCheck(False, "", "", split)


# --------------------------------------------------------------------------------------------
# per-instance steerability


@dataclass
class Steerability:
    """Per-instance steerability of some pairs under one steering vector.

    Attributes:
        ids: [N] instance ids.
        alphas: [A] the multipliers.
        margins: [N, A] each pair's log-ratio m_i(alpha) of its two answers.
        slopes: [N] least-squares slope of m_i against alpha.
        method, layer: which vector (e.g. ``"caa"``) at which layer.
        seconds: wall time of the computation (0 when read from the cache).
        from_cache: whether it was read from disk.
    """

    ids: list[str]
    alphas: np.ndarray
    margins: np.ndarray
    slopes: np.ndarray
    method: str = ""
    layer: int = -1
    seconds: float = 0.0
    from_cache: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def anti(self) -> np.ndarray:
        """[N] bool, slope < 0."""
        return np.asarray(self.slopes < 0.0)

    def align(self, ids: Sequence[str]) -> np.ndarray:
        """Slopes in the order of ``ids`` (NaN for an id it has no slope for)."""
        where = {i: k for k, i in enumerate(self.ids)}
        return np.array([self.slopes[where[i]] if i in where else np.nan for i in ids], dtype=np.float64)


def slopes_of(alphas: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Least-squares slopes of every row of ``margins`` [N, A] against ``alphas`` [A]."""
    a = np.asarray(alphas, dtype=np.float64)
    m = np.asarray(margins, dtype=np.float64)
    centred = a - a.mean()
    denom = float(centred @ centred)
    if denom == 0.0:
        raise ValueError("steerability needs at least two different alphas")
    return np.asarray((m - m.mean(axis=1, keepdims=True)) @ centred / denom)


def steerability_key(lm: LoadedModel, instances: Sequence[Instance], vector: SteeringVector,
                     alphas: Sequence[float]) -> str:
    """Cache key: model fingerprint and dtype, the pairs' texts, the vector's values and layers, the alphas."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": STEER_VERSION, "model": lm.fingerprint, "dtype": str(lm.dtype),
                         "alphas": [float(a) for a in alphas], "layers": vector.layers}).encode())
    for layer in vector.layers:
        h.update(np.ascontiguousarray(vector.numpy(layer)).tobytes())
    for inst in instances:
        h.update(json.dumps([inst.id, inst.prompt, inst.positive, inst.negative, list(inst.options)]).encode())
    return h.hexdigest()[:24]


def steerability(
    lm: LoadedModel,
    instances: Sequence[Instance],
    answer_kind: str,
    vector: SteeringVector,
    alphas: Sequence[float] = STEER_ALPHAS,
    *,
    prompt_cache: PromptCache | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    only_cached: bool = False,
    progress: Progress | None = None,
) -> Steerability | None:
    """Per-instance steerability of ``instances`` under ``vector`` (module doc).

    Args:
        lm: the model.
        instances: the pairs (e.g. the training split).
        answer_kind: ``"ab"``, ``"yesno"`` or ``"sentence"`` (which log-ratio; see
            :func:`saas.evaluation.instance_scores`).
        vector: the steering vector (the run's CAA vector by convention).
        alphas: the multipliers (at least two different values).
        prompt_cache: a :class:`saas.forward.PromptCache` holding these instances, to reuse its
            prefix caches (default: one is built and dropped batch by batch).
        batch_size: instances per prefix forward.
        use_cache: read/write ``cache/scores/steer-<key>.npz``.
        only_cached: return the cached result or None, never run the model (for a page render).
        progress: ``progress(done, total, message)``.

    Returns:
        A :class:`Steerability`, or None when ``only_cached`` and nothing is cached.
    """
    from saas.evaluation import instance_scores
    from saas.forward import PromptCache

    insts = list(instances)
    if not insts:
        raise ValueError("no instances")
    alphas_arr = np.asarray([float(a) for a in alphas], dtype=np.float64)
    ids = [i.id for i in insts]
    key = steerability_key(lm, insts, vector, alphas_arr.tolist())
    path = cache_dir("scores") / f"steer-{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                margins = np.asarray(z["margins"], dtype=np.float64)
            if margins.shape == (len(insts), len(alphas_arr)) and np.isfinite(margins).all():
                return Steerability(ids, alphas_arr, margins, slopes_of(alphas_arr, margins), vector.method,
                                    vector.layers[0], 0.0, True, {"key": key})
            raise ValueError(f"cached margins have shape {margins.shape}")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("steerability cache %s is unreadable (%s); recomputing", path.name, exc)
            path.unlink(missing_ok=True)
    if only_cached:
        return None
    t0 = time.perf_counter()
    pc = prompt_cache if prompt_cache is not None else PromptCache(lm, insts, batch_size=batch_size, keep=False)
    conditions = [(None, 0.0) if a == 0.0 else (vector, float(a)) for a in alphas_arr]
    indices = pc.index_of(ids) if prompt_cache is not None else None
    if progress:
        progress(0, 1, f"Steerability: {len(insts)} pairs x {len(conditions)} alphas on the prompt cache")
    per_condition = pc.logprobs(conditions, indices, progress=progress)
    margins = np.array([[instance_scores(lp, answer_kind)[2] for lp in lps] for lps in per_condition],
                       dtype=np.float64).T
    result = Steerability(ids, alphas_arr, margins, slopes_of(alphas_arr, margins), vector.method,
                          vector.layers[0], time.perf_counter() - t0, False, {"key": key})
    if use_cache:
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, margins=margins, alphas=alphas_arr)
        tmp.replace(path)
    return result


def steerability_shares(slopes: np.ndarray, eligible: np.ndarray) -> dict[str, Any]:
    """The anti-steerable share among eligible and among dropped pairs (NaN when a group is empty)."""
    s = np.asarray(slopes, dtype=np.float64)
    keep = np.asarray(eligible, dtype=bool)
    anti = s < 0.0

    def share(mask: np.ndarray) -> float:
        return float(anti[mask].mean()) if mask.any() else float("nan")

    return {"anti_steerable_eligible": share(keep), "anti_steerable_dropped": share(~keep),
            "anti_steerable_all": share(np.ones_like(keep)), "n_eligible": int(keep.sum()),
            "n_dropped": int((~keep).sum()), "median_slope": float(np.median(s)) if s.size else float("nan")}
