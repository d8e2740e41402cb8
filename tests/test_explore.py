"""saas.explore: the numbers behind the app's views, on planted data (no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from saas import explore
from saas.activations import ActivationSet
from saas.agents import AgentRun, Behaviour, RelevanceTable, SubBehaviour
from saas.data import BehaviourDataset, Instance
from saas.eligibility import apply_cutoff, project
from saas.pipeline import Prepared, RunConfig, compute, split_indices


def planted(n: int = 40, d: int = 32, n_layers: int = 4, signal_layer: int = 2, seed: int = 0):
    """[N, L, d] activations whose pairs differ along one direction u, strongly at ``signal_layer``."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    base = rng.standard_normal((n, n_layers, d))
    pos = base + 0.3 * rng.standard_normal((n, n_layers, d))
    neg = base + 0.3 * rng.standard_normal((n, n_layers, d))
    for layer in range(n_layers):
        amp = 4.0 if layer == signal_layer else 0.5
        pos[:, layer] += amp * (1 + 0.1 * rng.standard_normal(n))[:, None] * u
    return pos.astype(np.float32), neg.astype(np.float32), u


def instances(n: int) -> list[Instance]:
    return [Instance(f"x:{i}", f"prompt {i} about the weather", f"good answer {i}", f"bad answer {i}") for i in range(n)]


def test_map_coordinates_pca_separates_the_planted_direction() -> None:
    pos, neg, _ = planted()
    coords = explore.map_coordinates(pos[:, 2], neg[:, 2], "PCA")
    assert coords.shape == (80, 2)
    first = coords[:, 0]
    # PC 1 is the planted direction: positives on one side, negatives on the other.
    assert (np.sign(first[:40]) != np.sign(first[40:].mean())).mean() > 0.95
    with pytest.raises(ValueError, match="unknown map method"):
        explore.map_coordinates(pos[:, 2], neg[:, 2], "tSNE")


def test_map_coordinates_umap_shape() -> None:
    pos, neg, _ = planted(n=20)
    coords = explore.map_coordinates(pos[:, 2], neg[:, 2], "UMAP", seed=0)
    assert coords.shape == (40, 2) and np.isfinite(coords).all()


def test_map_rows_and_row_instance() -> None:
    insts = instances(3)
    rows = explore.map_rows(insts, np.array([True, False, True]))
    assert rows.is_positive.tolist() == [True] * 3 + [False] * 3
    assert rows.eligible.tolist() == [True, False, True] * 2
    assert rows.ids == ["x:0", "x:1", "x:2"] * 2
    assert "good answer 1" in rows.hover[1] and "bad answer 1" in rows.hover[4]
    assert [explore.map_row_instance(r, 3) for r in range(6)] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(IndexError):
        explore.map_row_instance(6, 3)
    with pytest.raises(ValueError):
        explore.map_rows(insts, np.array([True]))


def test_standardized_separation_known_value() -> None:
    # gaps along the mean difference are 1, 2, 3 -> mean 2, std sqrt(2/3)
    pos = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    neg = np.zeros((3, 2))
    assert explore.standardized_separation(pos, neg) == pytest.approx(2.0 / np.sqrt(2.0 / 3.0))
    assert explore.standardized_separation(neg, neg) == 0.0


def test_layer_stats_finds_the_planted_layer() -> None:
    pos, neg, u = planted(signal_layer=2)
    train = list(range(30))
    stats = explore.layer_stats(pos, neg, train, kappa=0.5)
    assert list(stats.columns) == ["layer", "D", "eligible_fraction", "caa_norm", "snr", "error"]
    assert stats["layer"].tolist() == [0, 1, 2, 3]
    assert explore.suggest_layer(stats) == 2
    caa = (pos[train, 2] - neg[train, 2]).astype(np.float64).mean(axis=0)
    assert stats.loc[2, "caa_norm"] == pytest.approx(np.linalg.norm(caa), rel=1e-5)
    proj = project(pos[train, 2], neg[train, 2])
    assert stats.loc[2, "D"] == pytest.approx(proj.D)
    assert stats.loc[2, "eligible_fraction"] == pytest.approx(apply_cutoff(proj, 0.5).eligible.mean())


def test_layer_stats_reuses_projections_across_kappa() -> None:
    pos, neg, _ = planted()
    train = list(range(30))
    projections = explore.layer_projections(pos, neg, train, "mean_diff")
    for kappa in (0.2, 0.9):
        fresh = explore.layer_stats(pos, neg, train, kappa, "mean_diff")
        reused = explore.layer_stats(pos, neg, train, kappa, "mean_diff", projections=projections)
        pd.testing.assert_frame_equal(fresh, reused)
    assert (explore.layer_stats(pos, neg, train, 0.9, projections=projections)["eligible_fraction"]
            <= explore.layer_stats(pos, neg, train, 0.2, projections=projections)["eligible_fraction"]).all()


def test_layer_stats_reports_an_unprojectable_layer() -> None:
    pos, neg, _ = planted()
    neg[:, 0] = pos[:, 0]  # layer 0: positive == negative, D = 0
    stats = explore.layer_stats(pos, neg, list(range(40)))
    assert stats.loc[0, "error"] != "" and stats.loc[0, "eligible_fraction"] == 0.0
    assert explore.suggest_layer(stats) == 2


def test_tables() -> None:
    ds = BehaviourDataset("demo", "a behaviour", instances(5), "sentence")
    df = explore.instance_frame(ds, {"train": [0, 1, 2], "val": [3], "test": [4]})
    assert df["split"].tolist() == ["train", "train", "train", "val", "test"]
    assert list(df.columns) == ["id", "split", "prompt", "positive", "negative"]
    stats = explore.dataset_stats(ds)
    assert stats["instances"] == 5 and stats["answer_kind"] == "sentence" and stats["positive_words"] == 3.0


def test_dropped_frame_lists_reasons() -> None:
    pos, neg, _ = planted(n=30)
    p2, n2 = pos[:, 2].copy(), neg[:, 2].copy()
    p2[:3], n2[:3] = neg[:3, 2], pos[:3, 2]  # three flipped pairs
    el = apply_cutoff(project(p2, n2), 0.5, ids=[f"x:{i}" for i in range(30)])
    df = explore.dropped_frame(el, instances(30))
    assert {"x:0", "x:1", "x:2"} <= set(df["id"])
    assert all(df["reasons"].str.len() > 0)
    assert (df["cutoff"] == el.cutoff).all()
    assert df.loc[df["id"] == "x:0", "prompt"].item() == "prompt 0 about the weather"


def test_selected_point() -> None:
    assert explore.selected_point(None) is None
    assert explore.selected_point([]) is None
    assert explore.selected_point([{"customdata": 4}]) == 4
    assert explore.selected_point([{"customdata": [7, "x"]}]) == 7
    assert explore.selected_point([{"point_index": 1}, {"customdata": "3"}]) == 3


def test_temperature_range_and_slider_value() -> None:
    lo, hi, ref = explore.temperature_range(np.array([0.0, 10.0, 20.0, np.nan]))
    assert ref == pytest.approx(round(np.log10(np.std([0.0, 10.0, 20.0])), 1))
    assert (lo, hi) == (pytest.approx(ref - 2), pytest.approx(ref + 3))
    assert explore.temperature_range(None) == (-2.0, 3.0, 0.0)
    assert explore.slider_log_t(100.0, -1.0, 3.0) == 2.0
    assert explore.slider_log_t(1e9, -1.0, 3.0) == 3.0


def test_weight_grid_rows_are_softmax_weights() -> None:
    s = np.array([1.0, 2.0, 3.0, 100.0])
    eligible = np.array([True, True, True, False])
    temps, w, ids = explore.weight_grid(s, eligible, ["a", "b", "c", "d"], -1.0, 4.0, n=6)
    assert temps.shape == (6,) and w.shape == (6, 3) and ids == ["a", "b", "c"]
    assert np.allclose(w.sum(axis=1), 1.0)
    assert w[0].argmax() == 2 and np.allclose(w[-1], 1 / 3, atol=1e-3)  # sharp at t=0.1, uniform at 1e4
    _, w0, ids0 = explore.weight_grid(s, np.zeros(4, bool), ["a", "b", "c", "d"], -1.0, 4.0, n=6)
    assert w0.shape == (6, 0) and ids0 == []


def test_top_bottom() -> None:
    w = np.array([0.1, 0.5, 0.0, 0.4])
    top, bottom = explore.top_bottom(w, np.array([True, True, False, True]), instances(4), np.arange(4.0), k=2)
    assert top["id"].tolist() == ["x:1", "x:3"]
    assert bottom["id"].tolist() == ["x:0", "x:3"]
    assert "positive" in top.columns and top["score"].tolist() == [1.0, 3.0]


def agent_run() -> AgentRun:
    subs = [SubBehaviour("S1", "hope", "expects good things", 8.0, "central", True),
            SubBehaviour("S2", "effort", "credits preparation", 5.0, "related", True),
            SubBehaviour("S3", "weather", "talks about rain", 1.0, "off topic", False)]
    table = RelevanceTable(["x:0", "x:1", "x:2"], ["S1", "S2"], np.array([[9.0, 1.0], [5.0, 5.0], [0.0, 10.0]]))
    return AgentRun(Behaviour("optimism", "hope"), "offline", "enc", "v1", 0, 2.0, ["x:0"], subs, subs, [], table)


def test_relevance_view_uses_kept_subbehaviours() -> None:
    scores, names = explore.relevance_view(agent_run(), ["x:2", "x:0", "x:9"])
    assert names == ["hope", "effort"]
    assert scores[:2].tolist() == [[0.0, 10.0], [9.0, 1.0]]
    assert np.isnan(scores[2]).all()


def test_overlay_from_edits() -> None:
    run = agent_run()
    df = explore.subbehaviour_frame(run.subs)
    assert list(df.columns) == list(explore.SUB_COLUMNS) and not df["remove"].any()
    assert not explore.overlay_from_edits(run.agent_subs, None, df)  # nothing changed -> empty overlay
    df.loc[0, "name"] = "hopefulness"
    df.loc[1, "contribution"] = 1.0
    df.loc[2, "remove"] = True
    ov = explore.overlay_from_edits(run.agent_subs, None, df)
    after = {s.id: s for s in ov.apply(run.agent_subs, 2.0)}
    assert after["S1"].name == "hopefulness" and after["S1"].provenance == "edited"
    assert after["S2"].contribution == 1.0 and not after["S2"].kept
    assert "S3" not in after
    # a later edit keeps the earlier ones
    df2 = explore.subbehaviour_frame(ov.apply(run.agent_subs, 2.0))
    df2.loc[df2["id"] == "S2", "description"] = "credits hard work"
    ov2 = explore.overlay_from_edits(run.agent_subs, ov, df2)
    after2 = {s.id: s for s in ov2.apply(run.agent_subs, 2.0)}
    assert after2["S1"].name == "hopefulness" and after2["S2"].description == "credits hard work"


def test_table1() -> None:
    df = pd.DataFrame({"method": ["caa", "caa", "saas", "saas"], "alpha": [-1.0, 1.0, -1.0, 1.0],
                       "alignment": [0.4, 0.6, 0.3, 0.8], "mass": [np.nan] * 4, "n": [9] * 4})
    t = explore.table1(df, {"caa": "CAA", "saas": "SAAS"})
    assert t["method"].tolist() == ["CAA", "SAAS"]
    assert list(t.columns) == ["method", "alpha=-1", "alpha=+1", "delta", "mass"]
    assert t["delta"].tolist() == pytest.approx([0.2, 0.5])
    assert explore.table1(df.iloc[:0]).empty


def test_keys_are_content_hashes() -> None:
    from saas.steering import SteeringVector

    a = {"caa": SteeringVector.from_array(np.ones(4, np.float32), 3, "caa")}
    b = {"caa": SteeringVector.from_array(np.ones(4, np.float32), 3, "caa")}
    c = {"caa": SteeringVector.from_array(np.full(4, 2.0, np.float32), 3, "caa")}
    assert explore.vectors_key(a) == explore.vectors_key(b) != explore.vectors_key(c)
    assert explore.array_key(np.arange(3.0)) == explore.array_key(np.arange(3)) != explore.array_key(np.arange(4.0))
    assert explore.array_key(None) == "none"


def test_sweep_helpers() -> None:
    assert explore.sweep_layers(30) == [1, 6, 12, 17, 23, 28]
    assert explore.sweep_layers(2) == [0, 1]
    assert explore.sweep_temperatures(0.0, 2.0, 3) == pytest.approx([1.0, 10.0, 100.0])


def synthetic_prepared(n: int = 40) -> Prepared:
    pos, neg, _ = planted(n=n)
    ds = BehaviourDataset("demo", "a behaviour", instances(n), "sentence")
    acts = ActivationSet(pos, neg, [i.id for i in ds.instances], "fp")
    lm = SimpleNamespace(name="fake", fingerprint="fp")
    prep = Prepared(RunConfig(layer=2, agents="none"), lm, ds, acts, split_indices(n, 0))  # type: ignore[arg-type]
    prep.importance = np.linspace(0.0, 10.0, n)
    return prep


def test_run_summary_and_sweep_inputs() -> None:
    prep = synthetic_prepared()
    res = compute(prep, layer=2, kappa=0.5)
    s = explore.run_summary(prep, res)
    assert s["instances"] == 40 and s["n_train"] == len(prep.train) and s["layer"] == 2
    assert s["n_eligible"] == int(res.eligibility.eligible.sum())
    assert s["norms"]["caa"] == pytest.approx(res.vectors["caa"].norm())
    assert 0.9 < s["cos_saas_caa"] <= 1.0
    diffs, imp, elig = explore.sweep_inputs(prep, res)
    assert diffs.shape == (len(prep.train), 32)
    assert np.allclose(diffs, prep.acts.diffs(2)[prep.train])
    assert imp.shape == elig.shape == (len(prep.train),)
