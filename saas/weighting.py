"""Importance scores -> softmax(t) instance weights -> the weighted steering vector.

The method (DESIGN.md section 1):

- importance (Eq. 5): s_i = sum_k c_k * s_ik, c_k the contribution of sub-behaviour k (Agent-2),
  s_ik the relevance of instance i to sub-behaviour k (Agent-3);
- weights (Eq. 6): w_i = softmax(s_i / t) over the eligible instances (zero elsewhere), computed
  stably by subtracting the maximum; t -> infinity is the uniform mean over eligible instances,
  t -> 0 puts all the weight on the argmax;
- vector (Eq. 7): v = sum_i w_i v_i.

Everything here is cheap numpy on [N] and [N, d] arrays, so a temperature slider never reruns a
model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saas.data import DatasetError

#: Temperatures in [T_MIN, T_MAX] are guaranteed to give finite weights that sum to 1. Larger t
#: work too; t <= 0 is rejected.
T_MIN = 1e-3
T_MAX = 1e6


def importance(scores: np.ndarray, contributions: np.ndarray) -> np.ndarray:
    """Instance importance (Eq. 5): s_i = sum_k c_k * s_ik.

    Args:
        scores: [N, K] relevance s_ik of instance i to sub-behaviour k (NaN for instances that
            were not scored, e.g. ineligible ones; NaN propagates to s_i).
        contributions: [K] contribution c_k of each kept sub-behaviour.

    Returns:
        [N] float64 importance s_i.

    Raises:
        ValueError: shapes do not match.
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(contributions, dtype=np.float64)
    if s.ndim != 2 or c.ndim != 1 or s.shape[1] != c.shape[0]:
        raise ValueError(f"scores must be [N, K] and contributions [K]; got {s.shape} and {c.shape}")
    return s @ c


def _check_t(t: float) -> float:
    t = float(t)
    if not np.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature t must be finite and > 0, got {t}")
    return t


def _check_mask(s: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(s.shape[0], dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != s.shape:
        raise ValueError(f"mask must be a boolean array of shape {s.shape}, got {m.dtype} {m.shape}")
    return m


def softmax_weights(s: np.ndarray, t: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Instance weights (Eq. 6): w_i = exp(s_i/t) / sum_{j in mask} exp(s_j/t) for i in mask.

    Stable: the maximum of s/t over the mask is subtracted before exponentiating, so any t in
    [1e-3, 1e6] (and beyond) gives finite weights summing to 1. Ties at the maximum share the
    weight when t is tiny.

    Args:
        s: [N] importance scores (only entries inside the mask must be finite).
        t: Temperature > 0.
        mask: [N] bool, the instances that may get weight (the eligible ones); default all.

    Returns:
        [N] float64 weights: non-negative, summing to 1 over the mask, exactly 0 outside it.

    Raises:
        ValueError: t <= 0 or non-finite, empty mask, bad shapes, or non-finite s inside the mask.
    """
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {s.shape}")
    t = _check_t(t)
    m = _check_mask(s, mask)
    if not m.any():
        raise ValueError("no instance to weight: the mask (eligible set) is empty")
    z = s[m]
    if not np.isfinite(z).all():
        raise ValueError("importance scores contain NaN or inf inside the mask")
    z = z / t
    z = z - z.max()
    e = np.exp(z)
    w = np.zeros_like(s)
    w[m] = e / e.sum()
    return w


def weighted_vector(diffs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted steering vector (Eq. 7): v = sum_i w_i v_i.

    Args:
        diffs: [N, d] local vectors v_i = a_i+ - a_i-.
        w: [N] weights (typically from :func:`softmax_weights`).

    Returns:
        [d] vector, in the floating dtype of ``diffs`` (float32 stays float32: one gemv).

    Raises:
        ValueError: shapes do not match.
    """
    diffs = np.asarray(diffs)
    w = np.asarray(w)
    if diffs.ndim != 2 or w.shape != (diffs.shape[0],):
        raise ValueError(f"diffs must be [N, d] and w [N]; got {diffs.shape} and {w.shape}")
    dt = np.result_type(diffs.dtype, np.float32)
    return np.asarray(w.astype(dt) @ diffs.astype(dt, copy=False))


@dataclass(frozen=True)
class WeightSummary:
    """How concentrated a weight vector is.

    Attributes:
        t: Temperature that produced the weights.
        n: Number of instances with non-zero weight.
        entropy: -sum_i w_i log w_i in nats (log n for uniform weights, 0 for one-hot).
        ess: Effective sample size 1 / sum_i w_i^2 (n for uniform, 1 for one-hot).
        max_weight: max_i w_i.
    """

    t: float
    n: int
    entropy: float
    ess: float
    max_weight: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(w: np.ndarray, t: float) -> WeightSummary:
    """Entropy, effective sample size and maximum of a weight vector.

    Args:
        w: [N] non-negative weights summing to 1.
        t: The temperature that produced them (recorded only).

    Returns:
        A :class:`WeightSummary`.
    """
    w = np.asarray(w, dtype=np.float64)
    pos = w[w > 0]
    if pos.size == 0:
        raise ValueError("weights are all zero")
    return WeightSummary(
        t=float(t),
        n=int(pos.size),
        entropy=float(-(pos * np.log(pos)).sum()),
        ess=float(1.0 / np.square(pos).sum()),
        max_weight=float(pos.max()),
    )


def temperature_grid(lo: float = 0.1, hi: float = 1e4, n: int = 25) -> np.ndarray:
    """Log-spaced temperatures (``np.geomspace(lo, hi, n)``), e.g. for a sweep or a heatmap.

    Args:
        lo: Smallest temperature (> 0).
        hi: Largest temperature (> lo).
        n: Number of temperatures (>= 2).

    Returns:
        [n] float64 temperatures.
    """
    if not (lo > 0 and hi > lo and n >= 2):
        raise ValueError(f"need 0 < lo < hi and n >= 2, got lo={lo}, hi={hi}, n={n}")
    return np.geomspace(lo, hi, int(n))


def weights_over_temperatures(s: np.ndarray, temps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """softmax(s / t) over the mask for many temperatures at once (vectorised; for a heatmap).

    Args:
        s: [N] importance scores.
        temps: [T] temperatures, each > 0.
        mask: [N] bool eligible set; default all.

    Returns:
        [T, N] float64; row j equals ``softmax_weights(s, temps[j], mask)``.
    """
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {s.shape}")
    temps = np.atleast_1d(np.asarray(temps, dtype=np.float64))
    if temps.ndim != 1 or not (np.isfinite(temps).all() and (temps > 0).all()):
        raise ValueError("temperatures must be a 1-D array of finite values > 0")
    m = _check_mask(s, mask)
    if not m.any():
        raise ValueError("no instance to weight: the mask (eligible set) is empty")
    z = s[m]
    if not np.isfinite(z).all():
        raise ValueError("importance scores contain NaN or inf inside the mask")
    zt = z[None, :] / temps[:, None]
    zt -= zt.max(axis=1, keepdims=True)
    e = np.exp(zt)
    out = np.zeros((temps.shape[0], s.shape[0]), dtype=np.float64)
    out[:, m] = e / e.sum(axis=1, keepdims=True)
    return out


# --------------------------------------------------------------------------------------------
# Score tables on disk
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ScoresTable:
    """Importance scores read from disk (or uniform when there is no table).

    Attributes:
        ids: Instance ids in table order (strings).
        scores: [N] final importance s_i.
        sub_behaviours: Names of the per-sub-behaviour columns ([] for an ``id,score`` table).
        sub_scores: [N, K] s_ik, or None for an ``id,score`` table.
        contributions: [K] c_k, or None for an ``id,score`` table.
        source: The path read, or ``"uniform"`` when there was no table.
        uniform: True when there was no table: every instance scores 0, so softmax gives the
            uniform mean at every temperature.
    """

    ids: list[str]
    scores: np.ndarray
    sub_behaviours: list[str] = field(default_factory=list)
    sub_scores: np.ndarray | None = None
    contributions: np.ndarray | None = None
    source: str = ""
    uniform: bool = False

    def align(self, ids: list[str], fill: float = float("nan")) -> np.ndarray:
        """Scores in the order of ``ids``.

        Args:
            ids: [N] ids to look up (compared as strings).
            fill: Value for ids absent from the table (NaN by default, so that a weight over an
                unscored eligible instance fails loudly in :func:`softmax_weights`).

        Returns:
            [N] float64 scores (all 0.0 for a uniform table).
        """
        if self.uniform:
            return np.zeros(len(ids), dtype=np.float64)
        index = {k: i for i, k in enumerate(self.ids)}
        out = np.full(len(ids), fill, dtype=np.float64)
        for j, k in enumerate(ids):
            i = index.get(str(k))
            if i is not None:
                out[j] = self.scores[i]
        return out


def load_scores_table(
    path: str | Path | None,
    contributions: dict[str, float] | list[float] | None = None,
) -> ScoresTable:
    """Read instance importance scores from a CSV.

    Two layouts are accepted (first row is the header):

    1. ``id,score``: the final importance s_i per instance (any other columns are ignored).
    2. ``id,<sub-behaviour 1>,<sub-behaviour 2>,...``: the relevance s_ik per instance and
       sub-behaviour; s_i = sum_k c_k s_ik (Eq. 5) with the contributions c_k taken from the
       ``contributions`` argument (a ``{name: c_k}`` dict or a list in column order) or, if that
       is None, from a sidecar JSON ``<csv stem>.contributions.json`` next to the CSV holding
       ``{name: c_k}``. Missing contributions are an error (no silent equal weighting).

    Args:
        path: The CSV, or None for "no table": every instance then scores 0 (uniform weights).
        contributions: See layout 2.

    Returns:
        A :class:`ScoresTable`; use :meth:`ScoresTable.align` to order it like the activations.

    Raises:
        FileNotFoundError: ``path`` is given but does not exist.
        DatasetError: no ``id`` column, duplicate ids, non-numeric scores, or missing contributions
            (a ValueError naming the file, line and column).
    """
    if path is None:
        return ScoresTable(ids=[], scores=np.zeros(0), source="uniform", uniform=True)
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scores table not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DatasetError(f"not a readable CSV ({str(exc).splitlines()[0]})", path=path) from None
    if "id" not in df.columns:
        raise DatasetError(f"the scores table needs an 'id' column, got {list(df.columns)}", path=path, line=1,
                           field="id")
    ids = [str(i) for i in df["id"]]
    seen: dict[str, int] = {}
    for row, ident in enumerate(ids):
        if ident in seen:
            raise DatasetError(f"duplicate id {ident!r} (also on line {seen[ident] + 2})", path=path, line=row + 2,
                               field="id")
        seen[ident] = row

    def numeric(cols: list[str]) -> np.ndarray:
        for col in cols:
            values = pd.to_numeric(df[col], errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy() & df[col].notna().to_numpy())
            if bad.size:
                raise DatasetError(f"expected a number, got {str(df[col].iloc[bad[0]])!r}", path=path,
                                   line=int(bad[0]) + 2, field=col)
        return df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)

    if "score" in df.columns:
        return ScoresTable(ids=ids, scores=numeric(["score"])[:, 0], source=str(path))

    names = [c for c in df.columns if c != "id"]
    if not names:
        raise DatasetError("no score columns: need 'score' or one column per sub-behaviour", path=path, line=1)
    sub = numeric(names)
    if contributions is None:
        sidecar = path.with_name(path.stem + ".contributions.json")
        if not sidecar.is_file():
            raise DatasetError(
                f"per-sub-behaviour scores need contributions c_k: pass contributions= "
                f"or write {sidecar.name} as {{name: c_k}}", path=path
            )
        try:
            contributions = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"invalid JSON: {exc}", path=sidecar) from None
    if isinstance(contributions, dict):
        missing = [n for n in names if n not in contributions]
        if missing:
            raise DatasetError(f"no contribution for sub-behaviour(s) {missing}", path=path)
        c = np.array([float(contributions[n]) for n in names], dtype=np.float64)
    else:
        c = np.asarray(contributions, dtype=np.float64)
        if c.shape != (len(names),):
            raise DatasetError(f"{c.shape[0]} contributions for {len(names)} columns", path=path)
    return ScoresTable(
        ids=ids,
        scores=importance(sub, c),
        sub_behaviours=names,
        sub_scores=sub,
        contributions=c,
        source=str(path),
    )
