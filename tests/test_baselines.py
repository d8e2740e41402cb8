"""Baselines: planted-direction recovery, PCA orientation and scale, compute_vectors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from saas.baselines import (
    CAA,
    METHODS,
    PCA_CENTER,
    PCA_DIFF,
    PCA_MIDPOINT,
    SAAS,
    UNIFORM_ELIGIBLE,
    caa,
    compute_vectors,
    orient_and_scale,
    pca_center,
    pca_diff,
    pca_midpoint,
    saas_vector,
    score_weighted,
    uniform_eligible,
)
from saas.eligibility import eligibility


def planted(
    n: int = 300, d: int = 32, scale: float = 5.0, noise: float = 0.1, amp_sd: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pos = base + (1 + amp_sd xi_i) scale u + noise, neg = base + noise (u unit).

    amp_sd > 0 gives the local vectors a variance along u, which a centred PCA of the v_i needs.
    """
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    base = 3.0 * rng.standard_normal(d) + 0.5 * rng.standard_normal((n, d))
    amp = 1.0 + amp_sd * rng.standard_normal(n)
    pos = base + np.outer(amp, u) * scale + noise * rng.standard_normal((n, d))
    neg = base + noise * rng.standard_normal((n, d))
    return pos.astype(np.float32), neg.astype(np.float32), u


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_method_names() -> None:
    assert METHODS[:6] == (CAA, PCA_CENTER, PCA_MIDPOINT, PCA_DIFF, UNIFORM_ELIGIBLE, SAAS)
    assert "logit-diff" in METHODS and "conf" in METHODS and "bipo" in METHODS


def test_planted_direction_recovered_by_every_method() -> None:
    pos, neg, u = planted()
    diffs = pos - neg
    eligible = np.ones(len(pos), dtype=bool)
    rng = np.random.default_rng(1)
    vecs = compute_vectors(
        pos,
        neg,
        eligible=eligible,
        importance=rng.uniform(0, 100, len(pos)),
        t=10.0,
        logit_diff=rng.normal(size=len(pos)),
        conf=rng.uniform(size=len(pos)),
    )
    assert set(vecs) == {CAA, PCA_CENTER, PCA_MIDPOINT, PCA_DIFF, UNIFORM_ELIGIBLE, SAAS, "logit-diff", "conf"}
    for name, v in vecs.items():
        assert v.shape == (32,) and v.dtype == np.float64, name
        assert cos(v, u) > 0.99, name
    np.testing.assert_allclose(vecs[CAA], diffs.mean(0), rtol=1e-5)
    # every vector has about the planted scale (alpha = 1 means one mean difference)
    for name in (CAA, PCA_DIFF, PCA_CENTER, PCA_MIDPOINT, SAAS):
        assert np.linalg.norm(vecs[name]) == pytest.approx(5.0, rel=0.1), name


def test_pca_vectors_oriented_and_scaled() -> None:
    pos, neg, _ = planted(seed=2)
    diffs = pos - neg
    vbar = caa(diffs)
    refs = {
        "center": (pca_center(pos, neg), np.vstack([pos, neg])),
        "diff": (pca_diff(diffs), diffs),
        "midpoint": (pca_midpoint(pos, neg), np.vstack([diffs / 2, -diffs / 2])),
    }
    for name, (v, data) in refs.items():
        u = PCA(n_components=1, svd_solver="full").fit(data.astype(np.float64)).components_[0]
        assert abs(cos(v, u)) > 0.9999, name  # same axis as sklearn's exact first PC
        assert v @ vbar > 0, name  # oriented with the mean difference
        u_hat = v / np.linalg.norm(v)
        assert np.linalg.norm(v) == pytest.approx(u_hat @ vbar, rel=1e-6), name  # scaled
    # swapping the classes flips every vector (orientation follows the mean difference)
    np.testing.assert_allclose(pca_diff(-diffs), -pca_diff(diffs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pca_center(neg, pos), -pca_center(pos, neg), rtol=1e-4, atol=1e-5)


def test_pca_first_component_equals_numpy_svd_with_close_singular_values() -> None:
    # A nearly flat spectrum (close leading singular values, the demo's shape N=63, d=576): sklearn's
    # automatic (randomised) solver returns a direction with cos ~0.9 to the exact one here; the
    # first PC must be numpy's exact first right singular vector of the centred data.
    rng = np.random.default_rng(9)
    n, d = 63, 576
    diffs = rng.normal(size=(n, d)) * np.linspace(1.0, 0.97, d) + 0.05
    u = np.linalg.svd(diffs - diffs.mean(axis=0), full_matrices=False)[2][0]
    vbar = diffs.mean(axis=0)
    expected = u * (u @ vbar)  # oriented with, and scaled to the projection of, the mean difference
    np.testing.assert_allclose(pca_diff(diffs), expected, rtol=1e-6, atol=1e-9)
    neg = rng.normal(size=(n, d))
    pos = neg + diffs
    allx = np.vstack([pos, neg])
    u2 = np.linalg.svd(allx - allx.mean(axis=0), full_matrices=False)[2][0]
    np.testing.assert_allclose(pca_center(pos, neg), u2 * (u2 @ vbar), rtol=1e-6, atol=1e-9)


def test_orient_and_scale() -> None:
    vbar = np.array([3.0, 4.0])
    np.testing.assert_allclose(orient_and_scale(np.array([-2.0, 0.0]), vbar), [3.0, 0.0])
    np.testing.assert_allclose(orient_and_scale(np.array([0.0, 7.0]), vbar), [0.0, 4.0])
    with pytest.raises(ValueError):
        orient_and_scale(np.zeros(2), vbar)


def test_eligibility_filter_removes_planted_bad_instances() -> None:
    # A quarter of the pairs are flipped: CAA is dragged towards zero, the eligible mean is not.
    pos, neg, u = planted(amp_sd=0.05, seed=3)
    flipped = np.arange(0, 300, 4)
    pos[flipped], neg[flipped] = neg[flipped].copy(), pos[flipped].copy()
    diffs = pos - neg
    res = eligibility(pos, neg)
    assert not res.eligible[flipped].any() and res.eligible.sum() == 225
    v_ue = uniform_eligible(diffs, res.eligible)
    v_caa = caa(diffs)
    assert cos(v_ue, u) > 0.99
    assert np.linalg.norm(v_ue) == pytest.approx(5.0, rel=0.05)
    assert np.linalg.norm(v_caa) == pytest.approx(2.5, rel=0.1)
    # SAAS with no importance = uniform over eligible
    np.testing.assert_allclose(saas_vector(diffs, np.zeros(300), 1.0, res.eligible), v_ue, rtol=1e-5)


def test_saas_temperature_interpolates_between_argmax_and_uniform() -> None:
    pos, neg, _ = planted(seed=4)
    diffs = pos - neg
    eligible = np.ones(300, dtype=bool)
    eligible[:10] = False
    s = np.arange(300, dtype=np.float64)
    s[5] = 1e9  # ineligible: must be ignored however large
    cold = saas_vector(diffs, s, 1e-3, eligible)
    np.testing.assert_allclose(cold, diffs[299], rtol=1e-6)
    hot = saas_vector(diffs, s, 1e6, eligible)
    np.testing.assert_allclose(hot, diffs[10:].mean(0), rtol=1e-3, atol=1e-4)
    # logit-diff / conf use all instances
    np.testing.assert_allclose(score_weighted(diffs, np.zeros(300), 1.0), diffs.mean(0), rtol=1e-5, atol=1e-6)


def test_no_eligible_instance() -> None:
    pos, neg, _ = planted(n=20, d=4)
    none = np.zeros(20, dtype=bool)
    vecs = compute_vectors(pos, neg, eligible=none)
    assert UNIFORM_ELIGIBLE not in vecs and SAAS not in vecs
    assert all(np.isfinite(v).all() for v in vecs.values())
    with pytest.raises(ValueError, match="no eligible"):
        uniform_eligible(pos - neg, none)
    with pytest.raises(ValueError, match="empty"):
        saas_vector(pos - neg, np.zeros(20), 1.0, none)
    with pytest.raises(ValueError, match="boolean"):
        compute_vectors(pos, neg, eligible=np.ones(20))
