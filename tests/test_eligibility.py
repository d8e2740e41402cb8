"""Eligibility: Fisher direction (vs sklearn), planted truth, cutoff, reasons, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

from saas.eligibility import (
    REASON_AGAINST,
    REASON_GAP,
    REASON_ZERO,
    EligibilityError,
    EligibilityResult,
    Projection,
    apply_cutoff,
    eligibility,
    fisher_direction,
    project,
)


def planted(
    n: int = 200,
    d: int = 64,
    scale: float = 5.0,
    noise: float = 0.2,
    base_sd: float = 0.1,
    amp_sd: float = 0.02,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planted truth: pos = base + (1 + amp_sd xi_i) scale u + noise, neg = base + noise.

    base = b0 + base_sd * N(0, I) is shared by the two answers of an instance (b0 a large constant
    offset, like the residual stream's constant dimensions). Returns (pos, neg, u) with u unit.
    """
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    base = 3.0 * rng.standard_normal(d) + base_sd * rng.standard_normal((n, d))
    amp = 1.0 + amp_sd * rng.standard_normal(n)
    pos = base + np.outer(amp, u) * scale + noise * rng.standard_normal((n, d))
    neg = base + noise * rng.standard_normal((n, d))
    return pos.astype(np.float32), neg.astype(np.float32), u


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _sklearn_fisher(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, float]:
    pos = pos.astype(np.float64)
    neg = neg.astype(np.float64)
    m = pos.mean(0) - neg.mean(0)
    xc = np.vstack([pos - pos.mean(0), neg - neg.mean(0)])
    lw = LedoitWolf(assume_centered=True).fit(xc)
    w = np.linalg.solve(lw.covariance_, m)
    rho = ledoit_wolf_shrinkage(xc, assume_centered=True)
    assert np.isclose(rho, lw.shrinkage_)
    return w / np.linalg.norm(w), float(rho)


@pytest.mark.parametrize(("d", "n"), [(50, 30), (300, 40), (20, 5)])
def test_fisher_matches_sklearn_ledoit_wolf(d: int, n: int) -> None:
    # d <= 2N takes the direct d x d route, d > 2N the Woodbury route; both must equal sklearn.
    rng = np.random.default_rng(d + n)
    mix = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)  # anisotropic covariance
    pos = rng.standard_normal((n, d)) @ mix + 0.5
    neg = rng.standard_normal((n, d)) @ mix
    w, rho = fisher_direction(pos, neg)
    w_ref, rho_ref = _sklearn_fisher(pos, neg)
    assert 0.0 < rho < 1.0
    assert rho == pytest.approx(rho_ref, rel=1e-5)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-5 * np.abs(w_ref).max())
    assert np.linalg.norm(w) == pytest.approx(1.0)
    assert w @ (pos.mean(0) - neg.mean(0)) > 0


@pytest.mark.parametrize(("d", "n", "lam"), [(50, 30, 0.37), (300, 40, 0.37), (50, 30, 0.0)])
def test_fisher_ridge_matches_direct_solve(d: int, n: int, lam: float) -> None:
    rng = np.random.default_rng(7)
    pos = rng.standard_normal((n, d)) + 0.3
    neg = rng.standard_normal((n, d))
    w, used = fisher_direction(pos, neg, shrinkage=lam)
    xc = np.vstack([pos - pos.mean(0), neg - neg.mean(0)])
    ref = np.linalg.solve(xc.T @ xc / (2 * n) + lam * np.eye(d), pos.mean(0) - neg.mean(0))
    ref /= np.linalg.norm(ref)
    assert used == lam
    np.testing.assert_allclose(w, ref, rtol=1e-6, atol=1e-8)


def test_fisher_float32_input_agrees_with_float64() -> None:
    # float32 activations keep the big (2N x 2N x d) product in float32; the answer must not move.
    pos, neg, _ = planted(n=100, d=1000, seed=3)
    w32, rho32 = fisher_direction(pos, neg)
    w64, rho64 = fisher_direction(pos.astype(np.float64), neg.astype(np.float64))
    assert cos(w32, w64) > 0.99999
    assert rho32 == pytest.approx(rho64, rel=1e-4)


def test_fisher_beats_mean_difference_under_correlated_noise() -> None:
    # The classes differ along e0 only, but a large nuisance variance lives along (e0 + e1): the
    # mean difference is tilted by nothing, yet Fisher must whiten the nuisance away. Check Fisher
    # separates better than the mean difference (smaller spread of gaps relative to D).
    rng = np.random.default_rng(1)
    n, d = 400, 10
    nuisance = np.zeros(d)
    nuisance[:2] = 1 / np.sqrt(2)
    shift = np.zeros(d)
    shift[0] = 1.0
    shift[1] = 0.5

    def draw(offset: np.ndarray) -> np.ndarray:
        return offset + 0.1 * rng.standard_normal((n, d)) + np.outer(3 * rng.standard_normal(n), nuisance)

    pos, neg = draw(shift), draw(np.zeros(d))
    fisher = project(pos, neg, axis="fisher")
    md = project(pos, neg, axis="mean_diff")
    z_f = fisher.D / np.std(np.r_[fisher.p - fisher.p.mean(), fisher.n - fisher.n.mean()])
    z_m = md.D / np.std(np.r_[md.p - md.p.mean(), md.n - md.n.mean()])
    assert z_f > 3 * z_m
    assert abs(fisher.direction @ nuisance) < 0.05


def test_planted_direction_recovered() -> None:
    pos, neg, u = planted()
    proj = project(pos, neg)
    assert proj.axis == "fisher" and proj.shrinkage_method == "ledoit-wolf"
    assert 0.0 <= proj.shrinkage <= 1.0
    assert cos(proj.direction, u) > 0.99
    assert proj.D == pytest.approx(proj.p.mean() - proj.n.mean())
    assert proj.D > 0
    np.testing.assert_allclose(proj.direction @ (pos.mean(0) - neg.mean(0)), proj.D, rtol=1e-4)
    md = project(pos, neg, axis="mean_diff")
    assert md.shrinkage_method == "none"
    assert cos(md.direction, u) > 0.99


def test_large_d_woodbury_path_recovers_planted_direction() -> None:
    pos, neg, u = planted(n=150, d=1000, noise=0.05, base_sd=0.01, seed=5)
    w, rho = fisher_direction(pos, neg)
    assert cos(w, u) > 0.99
    assert 0.0 < rho <= 1.0


def test_planted_bad_instances_dropped_with_reasons() -> None:
    pos, neg, u = planted(n=100, d=32, seed=2)
    swapped = [3, 40]
    for i in swapped:
        pos[i], neg[i] = neg[i].copy(), pos[i].copy()
    tiny = 7
    neg[tiny] = pos[tiny] - (0.1 * 5.0 * u).astype(np.float32)  # right sign, tenth of the gap
    ids = [f"x{i}" for i in range(100)]
    res = eligibility(pos, neg, ids=ids, kappa=0.5)

    assert isinstance(res, EligibilityResult)
    assert res.cutoff == pytest.approx(0.5 * res.D)
    assert res.rule.startswith("eligible iff p_i - n_i >= kappa*D")
    for i in swapped:
        assert not res.eligible[i] and not res.consistent[i] and not res.separable[i]
        assert res.reasons[i] == [REASON_GAP, REASON_AGAINST]
        assert res.cosine[i] < 0
    assert not res.eligible[tiny] and res.consistent[tiny] and not res.separable[tiny]
    assert res.reasons[tiny] == [REASON_GAP]
    good = np.setdiff1d(np.arange(100), [*swapped, tiny])
    assert res.eligible[good].all()
    assert all(res.reasons[i] == [] for i in good)
    assert res.counts == {
        "n_total": 100,
        "n_eligible": 97,
        "n_not_separable": 3,
        "n_inconsistent": 2,
    }
    assert res.eligible_ids == [ids[i] for i in good]
    assert not res.empty and res.message == ""

    df = res.to_frame()
    assert list(df.columns) == [
        "id",
        "p",
        "n",
        "gap",
        "cosine",
        "separable",
        "consistent",
        "eligible",
        "reasons",
    ]
    assert df.loc[3, "reasons"] == f"{REASON_GAP}; {REASON_AGAINST}"
    assert df.loc[0, "reasons"] == ""
    np.testing.assert_allclose(df["gap"], df["p"] - df["n"])

    back = EligibilityResult.from_dict(res.to_dict())
    assert back.ids == res.ids and back.reasons == res.reasons
    np.testing.assert_array_equal(back.eligible, res.eligible)


def test_kappa_zero_keeps_all_consistent_and_slider_reuses_projection() -> None:
    pos, neg, _ = planted(n=50, d=16, seed=4)
    pos[0], neg[0] = neg[0].copy(), pos[0].copy()
    proj = project(pos, neg)
    r0 = apply_cutoff(proj, kappa=0.0)
    assert r0.eligible.sum() == 49 and not r0.eligible[0]
    assert r0.reasons[0] == [REASON_GAP, REASON_AGAINST]
    # kappa only moves the cutoff: eligibility is monotone in kappa.
    prev = r0.eligible
    for kappa in (0.25, 0.5, 0.9, 1.5):
        r = apply_cutoff(proj, kappa=kappa)
        assert not (r.eligible & ~prev).any()
        prev = r.eligible
    np.testing.assert_array_equal(r0.p, proj.p)


def test_everything_dropped_gives_empty_result_not_nan() -> None:
    pos, neg, _ = planted(n=20, d=8, seed=6)
    res = eligibility(pos, neg, kappa=100.0)
    assert res.empty and res.counts["n_eligible"] == 0
    assert "No instance is eligible" in res.message
    assert all(REASON_GAP in r for r in res.reasons)
    assert np.isfinite(res.p).all() and np.isfinite(res.cosine).all()


def test_zero_local_vector_is_inconsistent() -> None:
    pos, neg, _ = planted(n=30, d=8, seed=8)
    neg[5] = pos[5]
    res = eligibility(pos, neg, kappa=0.0)
    assert res.cosine[5] == 0.0 and not res.consistent[5]
    assert REASON_ZERO in res.reasons[5]


def test_projection_roundtrip() -> None:
    pos, neg, _ = planted(n=10, d=4, seed=9)
    proj = project(pos, neg, shrinkage=0.1)
    assert proj.shrinkage_method == "ridge" and proj.shrinkage == 0.1
    back = Projection.from_dict(proj.to_dict())
    np.testing.assert_array_equal(back.p, proj.p)
    assert back.D == proj.D


def test_degenerate_inputs_raise() -> None:
    pos, neg, _ = planted(n=10, d=6)
    with pytest.raises(EligibilityError, match="at least 2"):
        project(pos[:1], neg[:1])
    with pytest.raises(EligibilityError, match="shape"):
        project(pos, neg[:, :5])
    with pytest.raises(EligibilityError, match="2-D"):
        project(pos[0], neg[0])
    bad = pos.copy()
    bad[2, 3] = np.nan
    with pytest.raises(EligibilityError, match="NaN"):
        project(bad, neg)
    bad[2, 3] = np.inf
    with pytest.raises(EligibilityError, match="NaN or inf"):
        eligibility(pos, bad)
    # means coincide: negatives are a permutation of the positives
    with pytest.raises(EligibilityError, match="coincide"):
        project(pos, pos[::-1].copy())
    # zero within-class variance (Fisher undefined); the mean-difference axis still works
    flat_pos = np.tile(np.arange(6, dtype=np.float32), (10, 1))
    flat_neg = np.zeros((10, 6), dtype=np.float32)
    with pytest.raises(EligibilityError, match="within-class variance"):
        project(flat_pos, flat_neg)
    assert eligibility(flat_pos, flat_neg, axis="mean_diff").eligible.all()
    # singular covariance without shrinkage, d > 2N
    p2, n2, _ = planted(n=5, d=40)
    with pytest.raises(EligibilityError, match="singular"):
        fisher_direction(p2, n2, shrinkage=0.0)
    with pytest.raises(EligibilityError, match="unknown shrinkage"):
        project(pos, neg, shrinkage="oas")  # type: ignore[arg-type]
    with pytest.raises(EligibilityError, match="lambda"):
        project(pos, neg, shrinkage=-1.0)
    with pytest.raises(EligibilityError, match="axis"):
        project(pos, neg, axis="pca")  # type: ignore[arg-type]
    proj = project(pos, neg)
    with pytest.raises(EligibilityError, match="ids"):
        apply_cutoff(proj, ids=["a"])
    with pytest.raises(EligibilityError, match="kappa"):
        apply_cutoff(proj, kappa=float("nan"))
    assert issubclass(EligibilityError, ValueError)


# --------------------------------------------------------------------------------------------
# independent oracles (numpy written out here), the exact cutoff boundary, polarity balance


def test_consistency_cosines_equal_numpy_against_the_mean_local_vector() -> None:
    rng = np.random.default_rng(3)
    pos = rng.normal(size=(40, 16)) + rng.normal(size=16)
    neg = rng.normal(size=(40, 16))
    diffs = pos - neg
    vbar = diffs.mean(axis=0)
    expected = diffs @ vbar / (np.linalg.norm(diffs, axis=1) * np.linalg.norm(vbar))
    for axis in ("fisher", "mean_diff"):
        proj = project(pos, neg, axis=axis)
        np.testing.assert_allclose(proj.cosine, expected, rtol=1e-10, atol=1e-12)
        if axis == "fisher":  # the reference is the mean local vector, NOT the Fisher axis (they differ)
            against_axis = diffs @ proj.direction / np.linalg.norm(diffs, axis=1)
            assert np.max(np.abs(against_axis - expected)) > 1e-3
        np.testing.assert_array_equal(apply_cutoff(proj, 0.0).consistent, expected > 0)


def test_cutoff_boundary_is_inclusive_exactly_at_kappa_times_d() -> None:
    # Gaps 1, 2, 3 on a mean-difference axis: D = 2, kappa = 0.5 -> cutoff exactly 1.0 (binary exact).
    proj = Projection(axis="mean_diff", direction=np.array([1.0]), p=np.array([1.0, 2.0, 3.0]),
                      n=np.zeros(3), D=2.0, shrinkage=0.0, shrinkage_method="none", cosine=np.ones(3))
    res = apply_cutoff(proj, kappa=0.5)
    assert res.cutoff == 1.0
    assert res.separable.tolist() == [True, True, True]  # gap == cutoff is separable (>=)
    assert apply_cutoff(proj, kappa=0.5 + 1e-12).separable.tolist() == [False, True, True]
    # Consistency is strict: cos == 0 is not consistent.
    zero = Projection.from_dict({**proj.to_dict(), "cosine": [0.0, 1e-300, -1e-300]})
    assert apply_cutoff(zero, 0.0).consistent.tolist() == [False, True, False]


def test_polarity_balanced_reference_equals_numpy_and_stops_the_majority_token_winning() -> None:
    # Yes/No-style data: v_i = s_i * t + b, t the answer-token direction (large), b the behaviour
    # direction (small), s_i = +1 for "Yes" positives, -1 for "No". 52 % Yes: the plain mean is
    # dominated by 0.04 t and keeps the Yes polarity only; the balanced mean is b.
    rng = np.random.default_rng(0)
    d, n = 32, 100
    t = np.zeros(d)
    t[0] = 30.0
    b = np.zeros(d)
    b[1] = 1.0
    tokens = np.array(["Yes"] * 52 + ["No"] * 48)
    sign = np.where(tokens == "Yes", 1.0, -1.0)
    diffs = sign[:, None] * t + b + 0.05 * rng.normal(size=(n, d))
    neg = rng.normal(size=(n, d))
    pos = neg + diffs
    mean_proj = project(pos, neg, axis="mean_diff")
    kept_mean = apply_cutoff(mean_proj, 0.0).consistent
    assert set(tokens[kept_mean]) == {"Yes"}  # the method as specified: one polarity survives
    bal = project(pos, neg, axis="mean_diff", consistency="polarity-balanced", groups=tokens.tolist())
    unit = [diffs[tokens == t].mean(axis=0) / np.linalg.norm(diffs[tokens == t].mean(axis=0)) for t in ("No", "Yes")]
    ref = (unit[0] + unit[1]) / 2  # the unit per-token mean directions, averaged
    expected = diffs @ ref / (np.linalg.norm(diffs, axis=1) * np.linalg.norm(ref))
    np.testing.assert_allclose(bal.cosine, expected, rtol=1e-9, atol=1e-12)
    res = apply_cutoff(bal, 0.0)
    assert set(tokens[res.consistent]) == {"Yes", "No"} and res.consistent.mean() > 0.9
    assert res.consistency == "polarity-balanced" and "positive-answer tokens" in res.rule
    # Unequal group means (the "Yes" mean longer, as measured on persona openness): averaging the RAW
    # means would lean to "Yes" and drop the "No" pairs; the unit directions keep both.
    skew = np.where(tokens == "Yes", 1.0, -1.0)[:, None] * t * np.where(tokens == "Yes", 1.5, 1.0)[:, None]
    diffs2 = skew + b * np.where(tokens == "Yes", 1.0, 0.3)[:, None] + 0.05 * rng.normal(size=(n, d))
    raw_ref = diffs2[tokens == "Yes"].mean(axis=0) + diffs2[tokens == "No"].mean(axis=0)
    assert (diffs2[tokens == "No"] @ raw_ref < 0).all()  # the raw average would drop every "No" pair
    bal2 = apply_cutoff(project(neg + diffs2, neg, axis="mean_diff", consistency="polarity-balanced",
                                groups=tokens.tolist()), 0.0)
    assert set(tokens[bal2.consistent]) == {"Yes", "No"}
    # One token: identical to the default; no tokens: a clear error.
    same = project(pos, neg, axis="mean_diff", consistency="polarity-balanced", groups=["Yes"] * n)
    np.testing.assert_allclose(same.cosine, mean_proj.cosine)
    with pytest.raises(EligibilityError, match="needs the positive answer token"):
        project(pos, neg, consistency="polarity-balanced")
    with pytest.raises(EligibilityError, match="unknown consistency"):
        project(pos, neg, consistency="median")  # type: ignore[arg-type]
