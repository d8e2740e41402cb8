"""Steering vectors of SAAS and of the baselines, all from the same activations of one layer.

Every function returns a [d] vector to be added as h' = h + alpha * v (no re-normalisation).

- ``caa``: mean difference over all instances, v = mean_i v_i (Eq. 1).
- ``pca-center``: first principal component of all 2N activations after subtracting their
  global mean.
- ``pca-midpoint``: repeng's ``pca_center`` variant: each pair's midpoint (a_i+ + a_i-)/2 is
  subtracted from its two activations (leaving +-v_i/2), then the first principal component.
- ``pca-diff``: first principal component of the local vectors v_i. Like repeng's ``pca_diff``
  (which hands the raw differences to ``sklearn.decomposition.PCA``), the differences are
  centred by that PCA, so this is the direction of largest *variance* of the v_i around their
  mean, not of their uncentred second moment (which would mostly re-find the mean difference).
- PCA directions have no sign or scale: each unit direction u is oriented so that
  u . vbar > 0 and scaled to the length of vbar's projection on it, v = u (u . vbar), vbar the
  mean difference.
- ``uniform-eligible`` (ablation): plain mean of v_i over the eligible instances.
- ``saas``: v = sum_i w_i v_i, w = softmax(s / t) over the eligible instances (Eq. 5-7).
- ``logit-diff`` / ``conf``: the same softmax(score / t) weighting as SAAS, but the per-instance
  score is the model's own logit(y+) - logit(y-) (logit-diff) or softmax probability of y+
  (conf) at the answer position, and ALL instances are used (no eligibility filter): only the
  source of the score differs from SAAS.
- ``bipo`` is optimised, not computed from activations; it lives in its own module.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from saas.weighting import softmax_weights, weighted_vector

CAA = "caa"
PCA_CENTER = "pca-center"
PCA_MIDPOINT = "pca-midpoint"
PCA_DIFF = "pca-diff"
UNIFORM_ELIGIBLE = "uniform-eligible"
SAAS = "saas"
LOGIT_DIFF = "logit-diff"
CONF = "conf"
BIPO = "bipo"

#: Methods computed by :func:`compute_vectors` (logit-diff and conf only when scores are given).
ACTIVATION_METHODS: tuple[str, ...] = (
    CAA,
    PCA_CENTER,
    PCA_MIDPOINT,
    PCA_DIFF,
    UNIFORM_ELIGIBLE,
    SAAS,
    LOGIT_DIFF,
    CONF,
)
#: Every method name, BiPO included.
METHODS: tuple[str, ...] = (*ACTIVATION_METHODS, BIPO)


def _check_diffs(diffs: np.ndarray) -> np.ndarray:
    diffs = np.asarray(diffs)
    if diffs.ndim != 2 or diffs.shape[0] < 1:
        raise ValueError(f"local vectors must be [N, d] with N >= 1, got {diffs.shape}")
    if not np.issubdtype(diffs.dtype, np.floating):
        diffs = diffs.astype(np.float64)
    return diffs


def _check_pair(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = _check_diffs(pos)
    neg = _check_diffs(neg)
    if pos.shape != neg.shape:
        raise ValueError(f"positive and negative activations differ in shape: {pos.shape} vs {neg.shape}")
    return pos, neg


def caa(diffs: np.ndarray) -> np.ndarray:
    """Mean difference / CAA (Eq. 1): v = (1/N) sum_i v_i.

    Args:
        diffs: [N, d] local vectors v_i = a_i+ - a_i-.

    Returns:
        [d] float64 mean difference.
    """
    return np.asarray(_check_diffs(diffs).mean(axis=0, dtype=np.float64))


def orient_and_scale(u: np.ndarray, vbar: np.ndarray) -> np.ndarray:
    """Give a sign-less, scale-less direction the mean difference's sign and projected length.

    v = u_hat (u_hat . vbar), u_hat = u / ||u||, so that v . vbar >= 0 and ||v|| = |u_hat . vbar|.

    Args:
        u: [d] direction (any sign, any non-zero length).
        vbar: [d] mean difference.

    Returns:
        [d] float64 oriented, scaled vector (zero if u is orthogonal to vbar).
    """
    u = np.asarray(u, dtype=np.float64)
    norm = float(np.linalg.norm(u))
    if norm == 0.0:
        raise ValueError("cannot orient a zero direction")
    u_hat = u / norm
    return u_hat * float(u_hat @ np.asarray(vbar, dtype=np.float64))


def _first_pc(x: np.ndarray) -> np.ndarray:
    """[d] unit first principal component of the rows of x (sklearn PCA, which centres x).

    The exact LAPACK solver (``svd_solver="full"``): sklearn's automatic choice is a randomised
    solver for these shapes, which drifts when the first two singular values are close (0.5 % of
    PCA-diff's length on the demo); this runs in milliseconds at our sizes."""
    if x.shape[0] < 2:
        raise ValueError("PCA needs at least 2 rows")
    pca = PCA(n_components=1, svd_solver="full").fit(x)
    return np.asarray(pca.components_[0], dtype=np.float64)


def pca_center(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """First principal component of all 2N activations after subtracting their global mean.

    Args:
        pos: [N, d] positive activations.
        neg: [N, d] negative activations.

    Returns:
        [d] float64 u (u . vbar) with u the oriented unit PC and vbar = mean(pos - neg).
    """
    pos, neg = _check_pair(pos, neg)
    u = _first_pc(np.concatenate([pos, neg], axis=0))
    return orient_and_scale(u, caa(pos - neg))


def pca_midpoint(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """repeng's "pca_center": subtract each pair's midpoint, then take the first PC.

    a_i+ - (a_i+ + a_i-)/2 = v_i/2 and a_i- - (a_i+ + a_i-)/2 = -v_i/2, so this is the first PC of
    {+-v_i/2} (whose mean is 0: the PCA is effectively uncentred in v).

    Args:
        pos: [N, d] positive activations.
        neg: [N, d] negative activations.

    Returns:
        [d] float64 oriented, scaled first PC (see :func:`orient_and_scale`).
    """
    pos, neg = _check_pair(pos, neg)
    mid = (pos + neg) / 2
    u = _first_pc(np.concatenate([pos - mid, neg - mid], axis=0))
    return orient_and_scale(u, caa(pos - neg))


def pca_diff(diffs: np.ndarray) -> np.ndarray:
    """First principal component of the local vectors v_i (centred, as repeng's ``pca_diff``).

    Args:
        diffs: [N, d] local vectors v_i, N >= 2.

    Returns:
        [d] float64 oriented, scaled first PC (see :func:`orient_and_scale`).
    """
    diffs = _check_diffs(diffs)
    return orient_and_scale(_first_pc(diffs), caa(diffs))


def uniform_eligible(diffs: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Plain mean of v_i over the eligible instances (ablation of SAAS without the agents).

    Args:
        diffs: [N, d] local vectors.
        eligible: [N] bool eligibility mask.

    Returns:
        [d] float64 mean over eligible rows.

    Raises:
        ValueError: no eligible instance (there is nothing to average).
    """
    diffs = _check_diffs(diffs)
    e = _check_mask(eligible, diffs.shape[0])
    if not e.any():
        raise ValueError("no eligible instance: the uniform-eligible vector is undefined")
    return np.asarray(diffs[e].mean(axis=0, dtype=np.float64))


def _check_mask(mask: np.ndarray, n: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ValueError(f"eligible must be a boolean array of shape ({n},), got {m.dtype} {m.shape}")
    return m


def score_weighted(diffs: np.ndarray, scores: np.ndarray, t: float, mask: np.ndarray | None = None) -> np.ndarray:
    """v = sum_i w_i v_i with w = softmax(score / t) (the logit-diff and conf baselines).

    The per-instance score is the model's own number (logit(y+) - logit(y-) for logit-diff,
    P(y+) for conf); the weighting is exactly SAAS's Eq. 6, so only the score source differs.
    The baselines use all instances (mask None).

    Args:
        diffs: [N, d] local vectors.
        scores: [N] per-instance scores.
        t: Temperature > 0.
        mask: [N] bool instances allowed to get weight; default all.

    Returns:
        [d] vector (dtype of diffs).
    """
    diffs = _check_diffs(diffs)
    return weighted_vector(diffs, softmax_weights(scores, t, mask))


def saas_vector(diffs: np.ndarray, importance: np.ndarray, t: float, eligible: np.ndarray) -> np.ndarray:
    """SAAS vector (Eq. 7): v = sum_i w_i v_i, w = softmax(s / t) over eligible instances (Eq. 6).

    Args:
        diffs: [N, d] local vectors.
        importance: [N] importance s_i (Eq. 5; entries outside ``eligible`` are ignored).
        t: Temperature > 0 (t -> infinity gives :func:`uniform_eligible`).
        eligible: [N] bool eligibility mask.

    Returns:
        [d] vector (dtype of diffs).

    Raises:
        ValueError: no eligible instance, or t <= 0.
    """
    diffs = _check_diffs(diffs)
    e = _check_mask(eligible, diffs.shape[0])
    return weighted_vector(diffs, softmax_weights(importance, t, e))


def unweighted_vectors(pos: np.ndarray, neg: np.ndarray) -> dict[str, np.ndarray]:
    """The vectors that depend on the activations alone, not on eligibility or weights: CAA and the
    three PCA baselines (what a kappa or temperature slider never changes, so a caller may keep them).

    Returns:
        ``{"caa", "pca-center", "pca-midpoint", "pca-diff": [d] float64}``.
    """
    pos, neg = _check_pair(pos, neg)
    diffs = pos - neg
    return {CAA: caa(diffs), PCA_CENTER: pca_center(pos, neg), PCA_MIDPOINT: pca_midpoint(pos, neg),
            PCA_DIFF: pca_diff(diffs)}


def compute_vectors(
    pos: np.ndarray,
    neg: np.ndarray,
    *,
    eligible: np.ndarray,
    importance: np.ndarray | None = None,
    t: float = 1.0,
    logit_diff: np.ndarray | None = None,
    conf: np.ndarray | None = None,
    fixed: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Every activation-based steering vector for one layer.

    Args:
        pos: [N, d] positive activations a_i+.
        neg: [N, d] negative activations a_i-.
        eligible: [N] bool eligibility mask (from :func:`saas.eligibility.eligibility`).
        importance: [N] SAAS importance s_i; None -> uniform over eligible (SAAS equals
            uniform-eligible then).
        t: Temperature shared by SAAS, logit-diff and conf.
        logit_diff: [N] logit(y+) - logit(y-) per instance, or None to skip that baseline.
        conf: [N] P(y+) per instance, or None to skip that baseline.
        fixed: :func:`unweighted_vectors` of the same ``pos``/``neg``, when the caller kept them.

    Returns:
        ``{method: [d] float64 vector}`` with keys "caa", "pca-center", "pca-midpoint",
        "pca-diff", "uniform-eligible", "saas" and, when their scores are given, "logit-diff",
        "conf". When no instance is eligible, "uniform-eligible" and "saas" are absent (there is
        nothing to average; the eligibility result's ``message`` says why).
    """
    pos, neg = _check_pair(pos, neg)
    diffs = pos - neg
    e = _check_mask(eligible, diffs.shape[0])
    out: dict[str, np.ndarray] = dict(fixed) if fixed is not None else unweighted_vectors(pos, neg)
    if e.any():
        out[UNIFORM_ELIGIBLE] = uniform_eligible(diffs, e)
        s = np.zeros(diffs.shape[0]) if importance is None else importance
        out[SAAS] = saas_vector(diffs, s, t, e).astype(np.float64)
    if logit_diff is not None:
        out[LOGIT_DIFF] = score_weighted(diffs, logit_diff, t).astype(np.float64)
    if conf is not None:
        out[CONF] = score_weighted(diffs, conf, t).astype(np.float64)
    return out
