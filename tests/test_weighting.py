"""Weighting: importance (Eq. 5), stable softmax weights (Eq. 6), weighted vector (Eq. 7), tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saas.weighting import (
    ScoresTable,
    WeightSummary,
    importance,
    load_scores_table,
    softmax_weights,
    summarize,
    temperature_grid,
    weighted_vector,
    weights_over_temperatures,
)


def test_importance_is_contribution_weighted_sum() -> None:
    scores = np.array([[1.0, 0.0, 10.0], [2.0, 3.0, 0.0]])
    c = np.array([2.0, 5.0, 0.5])
    np.testing.assert_allclose(importance(scores, c), [2 + 0 + 5, 4 + 15 + 0])
    with pytest.raises(ValueError, match="contributions"):
        importance(scores, c[:2])


def test_softmax_matches_definition_and_respects_mask() -> None:
    s = np.array([1.0, 2.0, 3.0, 100.0])
    mask = np.array([True, True, True, False])
    w = softmax_weights(s, t=2.0, mask=mask)
    e = np.exp(s[:3] / 2.0)
    np.testing.assert_allclose(w[:3], e / e.sum())
    assert w[3] == 0.0
    assert w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("t", [1e-3, 1e-2, 1.0, 1e3, 1e6])
def test_extreme_temperatures_are_finite_and_normalised(t: float) -> None:
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1000, size=500)  # the range of sum_k c_k s_ik with c, s in [0, 10]
    mask = rng.random(500) > 0.3
    w = softmax_weights(s, t, mask)
    assert np.isfinite(w).all() and (w >= 0).all()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert (w[~mask] == 0).all()


def test_temperature_limits_uniform_and_argmax() -> None:
    rng = np.random.default_rng(1)
    s = rng.uniform(0, 100, size=50)
    mask = np.ones(50, dtype=bool)
    mask[:5] = False
    hot = softmax_weights(s, 1e6, mask)
    np.testing.assert_allclose(hot[mask], 1 / 45, rtol=1e-3)
    cold = softmax_weights(s, 1e-3, mask)
    best = np.flatnonzero(mask)[np.argmax(s[mask])]
    assert cold[best] == pytest.approx(1.0)
    # ties at the top share the weight
    tie = softmax_weights(np.array([5.0, 5.0, 1.0]), 1e-3)
    np.testing.assert_allclose(tie, [0.5, 0.5, 0.0])


def test_softmax_rejects_bad_input() -> None:
    s = np.zeros(3)
    for t in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            softmax_weights(s, t)
    with pytest.raises(ValueError, match="empty"):
        softmax_weights(s, 1.0, np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        softmax_weights(s, 1.0, np.array([1, 0, 1]))
    # NaN outside the mask is fine (unscored ineligible instances), inside it is not
    s_nan = np.array([1.0, np.nan, 2.0])
    w = softmax_weights(s_nan, 1.0, np.array([True, False, True]))
    assert np.isfinite(w).all()
    with pytest.raises(ValueError, match="NaN"):
        softmax_weights(s_nan, 1.0)


def test_weighted_vector_and_uniform_limit_is_mean() -> None:
    rng = np.random.default_rng(2)
    diffs = rng.standard_normal((20, 8)).astype(np.float32)
    w = softmax_weights(np.zeros(20), 1.0)
    v = weighted_vector(diffs, w)
    assert v.dtype == np.float32 and v.shape == (8,)
    np.testing.assert_allclose(v, diffs.mean(0), rtol=1e-5, atol=1e-6)
    onehot = np.zeros(20)
    onehot[4] = 1.0
    np.testing.assert_array_equal(weighted_vector(diffs, onehot), diffs[4])
    with pytest.raises(ValueError):
        weighted_vector(diffs, w[:5])


def test_summary() -> None:
    u = summarize(np.full(4, 0.25), t=3.0)
    assert u == WeightSummary(t=3.0, n=4, entropy=pytest.approx(np.log(4)), ess=pytest.approx(4.0), max_weight=0.25)
    one = summarize(np.array([0.0, 1.0, 0.0]), t=0.1)
    assert (one.n, one.entropy, one.ess, one.max_weight) == (1, 0.0, 1.0, 1.0)
    assert one.to_dict()["ess"] == 1.0


def test_grid_and_vectorised_weights_match_loop() -> None:
    temps = temperature_grid()
    assert temps.shape == (25,) and temps[0] == pytest.approx(0.1) and temps[-1] == pytest.approx(1e4)
    np.testing.assert_allclose(np.diff(np.log(temps)), np.log(1e5) / 24)
    rng = np.random.default_rng(3)
    s = rng.uniform(0, 300, size=30)
    mask = rng.random(30) > 0.2
    grid = weights_over_temperatures(s, np.r_[1e-3, temps, 1e6], mask)
    assert grid.shape == (27, 30)
    for j, t in enumerate(np.r_[1e-3, temps, 1e6]):
        np.testing.assert_allclose(grid[j], softmax_weights(s, t, mask), rtol=1e-12, atol=1e-300)
    with pytest.raises(ValueError):
        temperature_grid(0.0, 1.0)


def test_load_scores_table_final_scores(tmp_path: Path) -> None:
    f = tmp_path / "scores.csv"
    f.write_text("id,score\na,3\nb,1.5\n7,0\n")
    table = load_scores_table(f)
    assert table.ids == ["a", "b", "7"] and not table.uniform
    np.testing.assert_allclose(table.align(["7", "a", "zz"]), [0.0, 3.0, np.nan])


def test_load_scores_table_sub_behaviours(tmp_path: Path) -> None:
    f = tmp_path / "sub.csv"
    f.write_text("id,warmth,hope\na,10,0\nb,2,4\n")
    t1 = load_scores_table(f, contributions={"hope": 1.0, "warmth": 2.0})
    np.testing.assert_allclose(t1.scores, [20.0, 8.0])
    assert t1.sub_behaviours == ["warmth", "hope"] and t1.sub_scores is not None
    t2 = load_scores_table(f, contributions=[2.0, 1.0])
    np.testing.assert_allclose(t2.scores, t1.scores)
    with pytest.raises(ValueError, match="contributions"):
        load_scores_table(f)
    (tmp_path / "sub.contributions.json").write_text(json.dumps({"warmth": 2, "hope": 1}))
    np.testing.assert_allclose(load_scores_table(f).scores, t1.scores)
    with pytest.raises(ValueError, match="hope"):
        load_scores_table(f, contributions={"warmth": 1.0})


def test_missing_table_is_uniform(tmp_path: Path) -> None:
    table = load_scores_table(None)
    assert isinstance(table, ScoresTable) and table.uniform
    np.testing.assert_array_equal(table.align(["a", "b"]), [0.0, 0.0])
    with pytest.raises(FileNotFoundError):
        load_scores_table(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,score\na,1\n")
    with pytest.raises(ValueError, match="'id'"):
        load_scores_table(bad)


def test_bad_scores_tables_name_the_line_and_column(tmp_path: Path) -> None:
    from saas.data import DatasetError

    p = tmp_path / "s.csv"
    p.write_text("id,score\na,1.5\nb,high\n")
    with pytest.raises(DatasetError) as err:
        load_scores_table(p)
    assert str(err.value) == "s.csv, line 3, field 'score': expected a number, got 'high'"
    p.write_text("id,score\na,1\na,2\n")
    with pytest.raises(DatasetError, match="s.csv, line 3, field 'id': duplicate id 'a' \\(also on line 2\\)"):
        load_scores_table(p)
    p.write_text("name,score\na,1\n")
    with pytest.raises(DatasetError, match="needs an 'id' column"):
        load_scores_table(p)
