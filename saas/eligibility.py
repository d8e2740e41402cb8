"""Eligibility of behavioural instances: Fisher projection, separability cutoff, consistency.

The method (DESIGN.md section 1) keeps an instance i only if it is

- *separable* (Eq. 4): its own gap g_i = p_i - n_i on the projection axis is at least
  kappa * D, where p_i = w . a_i+, n_i = w . a_i-, and D = mean(p) - mean(n) is the mean
  separation. The axis w is the Fisher direction S_w^-1 (mu+ - mu-) (default) or the plain
  mean-difference direction;
- *consistent*: cos(v_i, vbar) > 0, with v_i = a_i+ - a_i- and vbar the mean of ALL v_i.

Option (DESIGN.md section 5, not the method's default): ``consistency="polarity-balanced"`` for
token answers. The reference direction is then the mean over positive-answer tokens t of the unit
mean directions u_t = vbar_t / ||vbar_t||, vbar_t the mean of v_i over the pairs whose positive
answer is t, so that the answer token's identity (v_i ~ +-(a(Yes) - a(No))) cannot become the
reference. Our reading of "the mean direction per token, averaged": the directions are normalised
before they are averaged. Measured on persona openness, averaging the raw means does not balance
the test: the "Yes" group's mean is longer than the "No" group's, their average leans to "Yes",
and 99 % of the eligible pairs stayed "Yes" (RESULTS.md); with unit directions and two tokens
(Yes/No, (A)/(B)) each token's own mean lies on the positive side of the reference
(u_1 . (u_1 + u_2) = 1 + cos(u_1, u_2) >= 0); with three or more tokens that is no longer
guaranteed. With one token this equals the default. A token whose mean local vector is exactly
zero has no direction and does not enter the reference.

The work is split so that a kappa slider never redoes the solve:

- :func:`project` (expensive: one (2N)x(2N) solve) returns a :class:`Projection`;
- :func:`apply_cutoff` (cheap: O(N)) turns a projection and a kappa into an
  :class:`EligibilityResult`.

Shrinkage. With d (hidden size) larger than N the pooled within-class covariance is singular, so
it is shrunk towards a multiple of the identity. Here the pooled within-class covariance is

    S = Xc^T Xc / (2N),   Xc = [a_i+ - mu+ ; a_i- - mu-]   (2N x d, rows centred by class mean)

(the maximum-likelihood scaling, as ``sklearn.covariance.LedoitWolf(assume_centered=True)`` uses
on Xc). The regularised matrix is

- Ledoit-Wolf: Sigma = (1 - rho) S + rho * m I,  m = trace(S) / d, rho the Ledoit-Wolf
  coefficient (``sklearn.covariance.ledoit_wolf_shrinkage`` semantics), or
- ridge: Sigma = S + lambda I (lambda in the units of S, i.e. of a per-dimension variance),

and w = Sigma^-1 (mu+ - mu-), normalised to unit length with w . (mu+ - mu-) > 0. When
d > 2N no d x d matrix is formed: Sigma = a I + b Xc^T Xc, so by the Woodbury identity

    Sigma^-1 m = (m - Xc^T (c I + G)^-1 Xc m) / a,   G = Xc Xc^T (2N x 2N),  c = a / b,

and rho is computed from G alone (||S||_F^2 = ||G||_F^2 / (2N)^2, see :func:`_ledoit_wolf`).
When d <= 2N the d x d matrix is formed directly (cheaper then). Both SPD solves use Cholesky.
For d > 2N the big products (G, and the [N, d] matrix-vector products that give p, n and the
cosines) run in the input's floating precision (float32 activations stay float32 there, float64
input gives float64); means, the Gram/scatter statistics and the solves run in float64.

Caveat (measured on planted data): Ledoit-Wolf assumes independent rows, but the two answers of
an instance share their prompt, so the rows of Xc come in correlated pairs. When the per-prompt
variation is large compared with the answer-specific noise, rho comes out too small and the Fisher
direction is noisier than the mean difference; a larger ridge lambda or ``axis="mean_diff"`` is
the remedy, and the UI shows the coefficient used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy.linalg import solve_triangular

if TYPE_CHECKING:
    import pandas as pd

Axis = Literal["fisher", "mean_diff"]
Shrinkage = Literal["ledoit-wolf"] | float
Consistency = Literal["mean", "polarity-balanced"]

AXES: tuple[str, ...] = ("fisher", "mean_diff")
CONSISTENCIES: tuple[str, ...] = ("mean", "polarity-balanced")
LEDOIT_WOLF = "ledoit-wolf"
RIDGE = "ridge"
NO_SHRINKAGE = "none"

#: Reason strings carried by dropped instances (fixed, human-readable; the UI shows them as is).
REASON_GAP = "not separable: gap p-n below kappa*D"
REASON_AGAINST = "inconsistent: points against the mean difference (cos <= 0)"
REASON_ZERO = "inconsistent: local vector is zero (positive and negative activations coincide)"

# Relative tolerances (squared-norm ratios) below which a quantity counts as exactly zero. Rounding
# in a float64 mean gives ratios near 1e-32; genuine float32 signal gives ratios above ~1e-14.
_ZERO_RATIO = 1e-20


class EligibilityError(ValueError):
    """Inputs on which eligibility is undefined (too few instances, bad shapes, NaN, ...)."""


# --------------------------------------------------------------------------------------------
# Projection (expensive stage)
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Projection:
    """Instances projected on one axis; everything a kappa slider needs, nothing it must redo.

    Attributes:
        axis: ``"fisher"`` or ``"mean_diff"``.
        direction: [d] float64 unit vector w with w . (mu+ - mu-) > 0.
        p: [N] projections of the positive activations, p_i = w . a_i+.
        n: [N] projections of the negative activations, n_i = w . a_i-.
        D: Mean separation mean(p) - mean(n) = w . (mu+ - mu-) > 0.
        shrinkage: The Ledoit-Wolf coefficient rho or the ridge lambda actually used (0.0 for the
            mean-difference axis).
        shrinkage_method: ``"ledoit-wolf"``, ``"ridge"`` or ``"none"`` (mean-difference axis).
        cosine: [N] cos(v_i, r) with the consistency reference r (vbar = mean of all v_i by
            default); 0.0 where v_i = 0.
        consistency: ``"mean"`` (the method) or ``"polarity-balanced"`` (r = mean over
            positive-answer tokens of their mean v_i).
    """

    axis: str
    direction: np.ndarray
    p: np.ndarray
    n: np.ndarray
    D: float
    shrinkage: float
    shrinkage_method: str
    cosine: np.ndarray
    consistency: str = "mean"

    @property
    def gap(self) -> np.ndarray:
        """[N] per-instance gaps g_i = p_i - n_i."""
        return self.p - self.n

    def __len__(self) -> int:
        return int(self.p.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (arrays as lists)."""
        return {
            "axis": self.axis,
            "direction": self.direction.tolist(),
            "p": self.p.tolist(),
            "n": self.n.tolist(),
            "D": self.D,
            "shrinkage": self.shrinkage,
            "shrinkage_method": self.shrinkage_method,
            "cosine": self.cosine.tolist(),
            "consistency": self.consistency,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Projection:
        """Inverse of :meth:`to_dict`."""
        return cls(
            axis=str(d["axis"]),
            direction=np.asarray(d["direction"], dtype=np.float64),
            p=np.asarray(d["p"], dtype=np.float64),
            n=np.asarray(d["n"], dtype=np.float64),
            D=float(d["D"]),
            shrinkage=float(d["shrinkage"]),
            shrinkage_method=str(d["shrinkage_method"]),
            cosine=np.asarray(d["cosine"], dtype=np.float64),
            consistency=str(d.get("consistency", "mean")),
        )


def _check_pair(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate paired activations; returns them as floating arrays (float32 kept as is)."""
    pos = np.asarray(pos)
    neg = np.asarray(neg)
    if pos.ndim != 2 or neg.ndim != 2:
        raise EligibilityError(f"activations must be 2-D [N, d]; got pos {pos.shape} and neg {neg.shape}")
    if pos.shape != neg.shape:
        raise EligibilityError(f"positive and negative activations differ in shape: {pos.shape} vs {neg.shape}")
    n_inst, d = pos.shape
    if n_inst < 2:
        raise EligibilityError(f"need at least 2 instances, got {n_inst}")
    if d < 1:
        raise EligibilityError("activations have zero width (d = 0)")
    if not np.issubdtype(pos.dtype, np.floating):
        pos = pos.astype(np.float64)
    if not np.issubdtype(neg.dtype, np.floating):
        neg = neg.astype(np.float64)
    for name, arr in (("positive", pos), ("negative", neg)):
        if not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
            raise EligibilityError(
                f"{name} activations contain NaN or inf (instances {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''})"
            )
    return pos, neg


def _gemm_dtype(pos: np.ndarray, neg: np.ndarray) -> type[np.floating[Any]]:
    """Precision of the d-dimensional products: float32 only if both inputs are float32 (or less)."""
    if np.result_type(pos.dtype, neg.dtype, np.float32) == np.float32:
        return np.float32
    return np.float64


def _ledoit_wolf(sq_fro: float, row_sq: np.ndarray, d: int) -> float:
    """Ledoit-Wolf coefficient rho of centred data X [n, d], from small sufficient statistics.

    Follows ``sklearn.covariance.ledoit_wolf_shrinkage(X, assume_centered=True)`` exactly, with
    its two d x d sums rewritten so that no d x d matrix is needed when d > n:

        sum_fg ((X^T X)_fg)^2  = ||X^T X||_F^2 = ||G||_F^2              (G = X X^T, n x n)
        sum_fg (X2^T X2)_fg    = sum_i (sum_f X_if^2)^2 = sum_i G_ii^2  (X2 = X**2)

    Args:
        sq_fro: ||X^T X||_F^2 (equivalently ||X X^T||_F^2).
        row_sq: [n] squared row norms sum_f X_if^2 (= diag(G)).
        d: Number of features.

    Returns:
        rho in [0, 1].
    """
    n = float(row_sq.shape[0])
    if d == 1:
        return 0.0
    trace_s = float(row_sq.sum()) / n  # trace(S) = sum of sklearn's emp_cov_trace
    mu = trace_s / d
    beta_ = float(np.dot(row_sq, row_sq))
    delta_ = sq_fro / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace_s + d * mu**2) / d
    beta = min(beta, delta)
    if beta == 0.0 or delta <= 0.0:
        return 0.0
    return float(min(max(beta / delta, 0.0), 1.0))


def fisher_direction(
    pos: np.ndarray, neg: np.ndarray, shrinkage: Shrinkage = "ledoit-wolf"
) -> tuple[np.ndarray, float]:
    """Fisher discriminant direction w = Sigma^-1 (mu+ - mu-) with a shrunk pooled covariance.

    Sigma = (1 - rho) S + rho * (trace(S)/d) I (Ledoit-Wolf) or S + lambda I (ridge), with
    S = Xc^T Xc / (2N) the pooled within-class covariance (positives centred by mu+, negatives by
    mu-). See the module docstring for the Woodbury route used when d > 2N.

    Args:
        pos: [N, d] activations of the positive answers a_i+.
        neg: [N, d] activations of the negative answers a_i-.
        shrinkage: ``"ledoit-wolf"`` (default) or a ridge lambda >= 0 (float).

    Returns:
        (w, used): w is the [d] float64 unit vector with w . (mu+ - mu-) > 0; used is the
        Ledoit-Wolf coefficient rho or the ridge lambda.

    Raises:
        EligibilityError: bad shapes, fewer than 2 instances, NaN/inf, zero within-class variance,
            coinciding class means, or a singular covariance (ridge 0 with d >= 2N - 1).
    """
    pos, neg = _check_pair(pos, neg)
    mu_pos, mu_neg = _class_means(pos, neg)
    return _fisher(pos, neg, mu_pos, mu_neg, shrinkage)


def _class_means(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 class means; raises when they coincide (D would be 0)."""
    mu_pos = pos.mean(axis=0, dtype=np.float64)
    mu_neg = neg.mean(axis=0, dtype=np.float64)
    m = mu_pos - mu_neg
    if float(m @ m) <= _ZERO_RATIO * _second_moment(pos, neg):
        raise EligibilityError(
            "the positive and negative means coincide (mu+ = mu-): mean separation D <= 0, nothing to separate"
        )
    return mu_pos, mu_neg


def _fisher(
    pos: np.ndarray,
    neg: np.ndarray,
    mu_pos: np.ndarray,
    mu_neg: np.ndarray,
    shrinkage: Shrinkage,
) -> tuple[np.ndarray, float]:
    """:func:`fisher_direction` on validated inputs with precomputed float64 class means."""
    n_inst, d = pos.shape
    n_samples = 2 * n_inst
    method, lam = _parse_shrinkage(shrinkage)
    m = mu_pos - mu_neg
    scale = _second_moment(pos, neg)

    gdt = _gemm_dtype(pos, neg)
    xc = np.empty((n_samples, d), dtype=gdt)
    np.subtract(pos, mu_pos.astype(gdt), out=xc[:n_inst], casting="unsafe")
    np.subtract(neg, mu_neg.astype(gdt), out=xc[n_inst:], casting="unsafe")
    row_sq = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
    trace_s = float(row_sq.sum()) / n_samples
    if trace_s <= _ZERO_RATIO * scale:
        raise EligibilityError(
            "zero within-class variance: every positive equals mu+ and every negative equals mu-, "
            "so the Fisher direction is undefined; use axis='mean_diff'"
        )

    # Sigma = a I + b Xc^T Xc. Small d: form it (d x d). Large d: Woodbury in the 2N-dim span.
    small = d <= n_samples
    if small:
        x64 = xc.astype(np.float64, copy=False)
        gram = x64.T @ x64  # d x d scatter Xc^T Xc
    else:
        gram = np.asarray(xc @ xc.T, dtype=np.float64)  # 2N x 2N Gram Xc Xc^T
    if method == LEDOIT_WOLF:
        rho = _ledoit_wolf(float(np.einsum("ij,ij->", gram, gram)), row_sq, d)
        a = rho * trace_s / d  # weight of I
        b = (1.0 - rho) / n_samples  # weight of Xc^T Xc
        used = rho
    else:
        a = lam
        b = 1.0 / n_samples
        used = lam
    if a <= 0.0 and d > n_samples - 2:  # rank(Xc) <= 2N - 2 < d: S is singular
        raise EligibilityError(
            f"the pooled within-class covariance is singular (d = {d}, 2N = {n_samples}) and the "
            f"shrinkage adds nothing ({method} {used:g}); use shrinkage='ledoit-wolf' or a "
            "ridge lambda > 0"
        )

    try:
        if small:
            sigma = b * gram
            sigma[np.diag_indices_from(sigma)] += a
            w = _spd_solve(sigma, m)
        elif b == 0.0:
            w = m / a
        else:
            k = gram  # c I + G, c = a / b > 0: symmetric positive definite
            k[np.diag_indices_from(k)] += a / b
            xm = np.asarray(xc @ m.astype(gdt), dtype=np.float64)
            y = _spd_solve(k, xm)
            w = (m - np.asarray(xc.T @ y.astype(gdt), dtype=np.float64)) / a
    except np.linalg.LinAlgError as exc:
        raise EligibilityError(
            "the pooled within-class covariance is singular; use shrinkage='ledoit-wolf' or a larger ridge lambda"
        ) from exc

    norm = float(np.linalg.norm(w))
    if not np.isfinite(norm) or norm == 0.0:
        raise EligibilityError(
            "the Fisher solve produced no usable direction (singular covariance?); increase the "
            "shrinkage or use axis='mean_diff'"
        )
    w = w / norm
    if float(w @ m) < 0.0:
        w = -w
    return w, float(used)


def _spd_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a x = b for symmetric positive definite a (float64) by Cholesky.

    The factorisation runs in numpy's LAPACK (the BLAS that just computed a, so no second thread
    pool wakes up); the two O(n^2) triangular solves in scipy. Raises LinAlgError if a is not PD.
    """
    low = np.linalg.cholesky(a)
    z = solve_triangular(low, b, lower=True, check_finite=False)
    return np.asarray(solve_triangular(low.T, z, lower=False, check_finite=False))


def _parse_shrinkage(shrinkage: Shrinkage) -> tuple[str, float]:
    if isinstance(shrinkage, str):
        if shrinkage.lower() in (LEDOIT_WOLF, "ledoit_wolf", "lw"):
            return LEDOIT_WOLF, float("nan")
        raise EligibilityError(f"unknown shrinkage {shrinkage!r}: use 'ledoit-wolf' or a ridge lambda (float >= 0)")
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float, np.floating)):
        raise EligibilityError(f"shrinkage must be 'ledoit-wolf' or a float, got {shrinkage!r}")
    lam = float(shrinkage)
    if not np.isfinite(lam) or lam < 0.0:
        raise EligibilityError(f"ridge lambda must be finite and >= 0, got {lam}")
    return RIDGE, lam


def _second_moment(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mean squared activation norm (the scale against which 'zero' is judged)."""
    s = np.einsum("ij,ij->", pos, pos, dtype=np.float64) + np.einsum("ij,ij->", neg, neg, dtype=np.float64)
    return float(s) / (2 * pos.shape[0]) + np.finfo(np.float64).tiny


def _cosines(diffs: np.ndarray, vbar: np.ndarray) -> np.ndarray:
    """[N] cos(v_i, vbar); 0.0 where v_i = 0 (vbar is non-zero by the time this is called)."""
    norms = np.sqrt(np.einsum("ij,ij->i", diffs, diffs, dtype=np.float64))
    dots = np.asarray(diffs @ vbar.astype(diffs.dtype), dtype=np.float64)
    out = np.zeros(diffs.shape[0], dtype=np.float64)
    nz = norms > 0
    out[nz] = dots[nz] / (norms[nz] * float(np.linalg.norm(vbar)))
    return np.clip(out, -1.0, 1.0)


def consistency_reference(
    diffs: np.ndarray, consistency: Consistency = "mean", groups: Sequence[str] | None = None
) -> np.ndarray:
    """The direction the consistency test compares every local vector with.

    Args:
        diffs: [N, d] local vectors v_i.
        consistency: ``"mean"``: vbar = mean_i v_i (the method); ``"polarity-balanced"``:
            (1/T) sum_t vbar_t / ||vbar_t|| with vbar_t the mean of v_i over the pairs whose
            positive answer is token t (``groups[i]``).
        groups: [N] positive-answer token of each pair (needed for ``"polarity-balanced"``).

    Returns:
        [d] float64 reference direction.
    """
    if consistency not in CONSISTENCIES:
        raise EligibilityError(f"unknown consistency {consistency!r}: use one of {CONSISTENCIES}")
    if consistency == "mean":
        return np.asarray(diffs.mean(axis=0, dtype=np.float64))
    if groups is None or len(groups) != diffs.shape[0]:
        raise EligibilityError(
            "polarity-balanced consistency needs the positive answer token of every pair (token answers "
            "such as Yes/No or (A)/(B)); got none" if groups is None else
            f"got {len(groups)} positive-answer tokens for {diffs.shape[0]} pairs"
        )
    g = np.asarray([str(x) for x in groups])
    units = []
    for t in sorted(set(g.tolist())):
        mean_t = diffs[g == t].mean(axis=0, dtype=np.float64)
        norm = float(np.linalg.norm(mean_t))
        if norm > 0.0:
            units.append(mean_t / norm)
    if not units:
        raise EligibilityError("every per-token mean local vector is zero: there is no direction to test against")
    return np.asarray(np.mean(units, axis=0))


def project(
    pos: np.ndarray,
    neg: np.ndarray,
    axis: Axis = "fisher",
    shrinkage: Shrinkage = "ledoit-wolf",
    consistency: Consistency = "mean",
    groups: Sequence[str] | None = None,
) -> Projection:
    """Project both sides of every instance on the chosen axis (the expensive stage).

    Args:
        pos: [N, d] positive activations a_i+.
        neg: [N, d] negative activations a_i-.
        axis: ``"fisher"`` (w = Sigma^-1 (mu+ - mu-), default) or ``"mean_diff"``
            (w = (mu+ - mu-) / ||mu+ - mu-||).
        shrinkage: For the Fisher axis: ``"ledoit-wolf"`` or a ridge lambda (float). Ignored for
            the mean-difference axis.
        consistency: The reference of the consistency test (:func:`consistency_reference`).
        groups: [N] positive-answer tokens, for ``consistency="polarity-balanced"``.

    Returns:
        A :class:`Projection` with p_i = w . a_i+, n_i = w . a_i-, D = mean(p) - mean(n) and
        cos(v_i, vbar).

    Raises:
        EligibilityError: degenerate inputs (see :func:`fisher_direction`) or D <= 0.
    """
    pos, neg = _check_pair(pos, neg)
    if axis not in AXES:
        raise EligibilityError(f"unknown axis {axis!r}: use one of {AXES}")
    mu_pos, mu_neg = _class_means(pos, neg)
    m = mu_pos - mu_neg
    if axis == "fisher":
        w, used = _fisher(pos, neg, mu_pos, mu_neg, shrinkage)
        method = _parse_shrinkage(shrinkage)[0]
    else:
        w = m / float(np.linalg.norm(m))
        used, method = 0.0, NO_SHRINKAGE

    p = np.asarray(pos @ w.astype(pos.dtype), dtype=np.float64)
    n = np.asarray(neg @ w.astype(neg.dtype), dtype=np.float64)
    big_d = float(p.mean() - n.mean())
    if not big_d > 0.0:
        raise EligibilityError(
            f"mean separation D = {big_d:.3g} <= 0 on the {axis} axis: the classes do not separate along it"
        )
    diffs = pos - neg
    ref = m if consistency == "mean" else consistency_reference(diffs, consistency, groups)
    if consistency != "mean" and float(ref @ ref) <= 1e-12:  # a mean of unit vectors: |ref| <= 1, no units
        raise EligibilityError("the polarity-balanced reference direction is zero: the per-token means cancel")
    return Projection(
        axis=axis,
        direction=w,
        p=p,
        n=n,
        D=big_d,
        shrinkage=float(used),
        shrinkage_method=method,
        cosine=_cosines(diffs, ref),
        consistency=consistency,
    )


# --------------------------------------------------------------------------------------------
# Cutoff (cheap stage)
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class EligibilityResult:
    """Per-instance eligibility with the reasons for every drop.

    Attributes:
        ids: [N] instance ids (strings).
        p: [N] positive projections p_i.
        n: [N] negative projections n_i.
        gap: [N] g_i = p_i - n_i.
        cosine: [N] cos(v_i, vbar).
        separable: [N] bool, g_i >= kappa * D.
        consistent: [N] bool, cos(v_i, vbar) > 0.
        eligible: [N] bool, separable AND consistent.
        reasons: [N] lists of reason strings (empty for eligible instances); the strings are the
            module constants REASON_GAP, REASON_AGAINST, REASON_ZERO.
        D: Mean separation mean(p) - mean(n).
        kappa: Cutoff factor.
        cutoff: kappa * D.
        axis: ``"fisher"`` or ``"mean_diff"``.
        shrinkage: Ledoit-Wolf rho or ridge lambda used (0.0 on the mean-difference axis).
        shrinkage_method: ``"ledoit-wolf"``, ``"ridge"`` or ``"none"``.
        counts: ``n_total``, ``n_eligible``, ``n_not_separable``, ``n_inconsistent``.
        empty: True when no instance is eligible.
        message: Why the result is empty ("" otherwise).
    """

    ids: list[str]
    p: np.ndarray
    n: np.ndarray
    gap: np.ndarray
    cosine: np.ndarray
    separable: np.ndarray
    consistent: np.ndarray
    eligible: np.ndarray
    reasons: list[list[str]]
    D: float
    kappa: float
    cutoff: float
    axis: str
    shrinkage: float
    shrinkage_method: str
    counts: dict[str, int] = field(default_factory=dict)
    empty: bool = False
    message: str = ""
    consistency: str = "mean"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def eligible_ids(self) -> list[str]:
        """Ids of the eligible instances, in input order."""
        return [i for i, e in zip(self.ids, self.eligible) if e]

    @property
    def rule(self) -> str:
        """The rule in words, to print next to the plot that draws it."""
        if self.axis == "fisher":
            if self.shrinkage_method == LEDOIT_WOLF:
                ax = f"Fisher axis (Ledoit-Wolf shrinkage {self.shrinkage:.3g})"
            else:
                ax = f"Fisher axis (ridge lambda {self.shrinkage:.3g})"
        else:
            ax = "mean-difference axis"
        ref = "mean v" if self.consistency == "mean" else "mean over positive-answer tokens of their mean v"
        return (
            f"eligible iff p_i - n_i >= kappa*D = {self.kappa:g} x {self.D:.4g} = "
            f"{self.cutoff:.4g} on the {ax}, and cos(v_i, {ref}) > 0"
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per instance: id, p, n, gap, cosine, separable, consistent, eligible, reasons."""
        import pandas as pd

        return pd.DataFrame(
            {
                "id": self.ids,
                "p": self.p,
                "n": self.n,
                "gap": self.gap,
                "cosine": self.cosine,
                "separable": self.separable,
                "consistent": self.consistent,
                "eligible": self.eligible,
                "reasons": ["; ".join(r) for r in self.reasons],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (arrays as lists)."""
        return {
            "ids": list(self.ids),
            "p": self.p.tolist(),
            "n": self.n.tolist(),
            "gap": self.gap.tolist(),
            "cosine": self.cosine.tolist(),
            "separable": self.separable.tolist(),
            "consistent": self.consistent.tolist(),
            "eligible": self.eligible.tolist(),
            "reasons": [list(r) for r in self.reasons],
            "D": self.D,
            "kappa": self.kappa,
            "cutoff": self.cutoff,
            "axis": self.axis,
            "shrinkage": self.shrinkage,
            "shrinkage_method": self.shrinkage_method,
            "counts": dict(self.counts),
            "empty": self.empty,
            "message": self.message,
            "consistency": self.consistency,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EligibilityResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            ids=[str(i) for i in d["ids"]],
            p=np.asarray(d["p"], dtype=np.float64),
            n=np.asarray(d["n"], dtype=np.float64),
            gap=np.asarray(d["gap"], dtype=np.float64),
            cosine=np.asarray(d["cosine"], dtype=np.float64),
            separable=np.asarray(d["separable"], dtype=bool),
            consistent=np.asarray(d["consistent"], dtype=bool),
            eligible=np.asarray(d["eligible"], dtype=bool),
            reasons=[list(r) for r in d["reasons"]],
            D=float(d["D"]),
            kappa=float(d["kappa"]),
            cutoff=float(d["cutoff"]),
            axis=str(d["axis"]),
            shrinkage=float(d["shrinkage"]),
            shrinkage_method=str(d["shrinkage_method"]),
            counts={k: int(v) for k, v in d["counts"].items()},
            empty=bool(d["empty"]),
            message=str(d["message"]),
            consistency=str(d.get("consistency", "mean")),
        )


def apply_cutoff(
    projection: Projection, kappa: float = 0.5, ids: Sequence[str | int] | None = None
) -> EligibilityResult:
    """Apply the separability cutoff and the consistency test (cheap: O(N), no solve).

    separable_i = (p_i - n_i >= kappa * D); consistent_i = (cos(v_i, vbar) > 0);
    eligible_i = separable_i AND consistent_i.

    Args:
        projection: Output of :func:`project`.
        kappa: Cutoff factor (default 0.5, "within half of the mean separation distance").
            kappa = 0 keeps every instance whose gap is non-negative.
        ids: [N] instance ids; default ``"0" .. "N-1"``.

    Returns:
        An :class:`EligibilityResult`; when nothing survives, ``empty`` is True and ``message``
        says why (no NaN anywhere).

    Raises:
        EligibilityError: non-finite kappa or ids of the wrong length.
    """
    kappa = float(kappa)
    if not np.isfinite(kappa):
        raise EligibilityError(f"kappa must be finite, got {kappa}")
    n_inst = len(projection)
    if ids is None:
        id_list = [str(i) for i in range(n_inst)]
    else:
        id_list = [str(i) for i in ids]
        if len(id_list) != n_inst:
            raise EligibilityError(f"got {len(id_list)} ids for {n_inst} instances")

    gap = projection.p - projection.n
    cutoff = kappa * projection.D
    separable = gap >= cutoff
    cosine = projection.cosine
    consistent = cosine > 0.0
    eligible = separable & consistent
    zero = cosine == 0.0

    reasons: list[list[str]] = [[] for _ in range(n_inst)]
    for i in np.flatnonzero(~eligible).tolist():
        r = reasons[i]
        if not separable[i]:
            r.append(REASON_GAP)
        if not consistent[i]:
            r.append(REASON_ZERO if zero[i] else REASON_AGAINST)

    n_eligible = int(eligible.sum())
    n_not_sep = int((~separable).sum())
    n_inc = int((~consistent).sum())
    counts = {
        "n_total": n_inst,
        "n_eligible": n_eligible,
        "n_not_separable": n_not_sep,
        "n_inconsistent": n_inc,
    }
    empty = n_eligible == 0
    message = ""
    if empty:
        message = (
            f"No instance is eligible at kappa = {kappa:g} (cutoff kappa*D = {cutoff:.4g}): "
            f"{n_not_sep} of {n_inst} not separable, {n_inc} inconsistent. Lower kappa, switch "
            "the projection axis, or check the data."
        )
    return EligibilityResult(
        ids=id_list,
        p=projection.p,
        n=projection.n,
        gap=gap,
        cosine=cosine,
        separable=separable,
        consistent=consistent,
        eligible=eligible,
        reasons=reasons,
        D=projection.D,
        kappa=kappa,
        cutoff=cutoff,
        axis=projection.axis,
        shrinkage=projection.shrinkage,
        shrinkage_method=projection.shrinkage_method,
        counts=counts,
        empty=empty,
        message=message,
        consistency=projection.consistency,
    )


def eligibility(
    pos: np.ndarray,
    neg: np.ndarray,
    ids: Sequence[str | int] | None = None,
    kappa: float = 0.5,
    axis: Axis = "fisher",
    shrinkage: Shrinkage = "ledoit-wolf",
    consistency: Consistency = "mean",
    groups: Sequence[str] | None = None,
) -> EligibilityResult:
    """:func:`project` followed by :func:`apply_cutoff`.

    Args:
        pos: [N, d] positive activations a_i+.
        neg: [N, d] negative activations a_i-.
        ids: [N] instance ids (default ``"0" .. "N-1"``).
        kappa: Cutoff factor, separable iff p_i - n_i >= kappa * D.
        axis: ``"fisher"`` or ``"mean_diff"``.
        shrinkage: ``"ledoit-wolf"`` or a ridge lambda (Fisher axis only).
        consistency, groups: see :func:`project`.

    Returns:
        The :class:`EligibilityResult`.
    """
    projection = project(pos, neg, axis=axis, shrinkage=shrinkage, consistency=consistency, groups=groups)
    return apply_cutoff(projection, kappa=kappa, ids=ids)
