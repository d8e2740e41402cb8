"""Unit tests for the pure plotly figure builders in ``saas.figures`` (no model, no streamlit)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from saas import figures


def _serialises(fig: go.Figure) -> None:
    """The figure is a Figure, uses the shared template, has a title, and survives to_json."""
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text
    assert fig.layout.template.layout.paper_bgcolor is not None  # template was applied
    assert isinstance(fig.to_json(), str)


def _traces(fig: go.Figure, name_start: str) -> list:
    return [t for t in fig.data if t.name and t.name.startswith(name_start)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# eligibility stage


def test_activation_map_traces_axes_and_customdata(rng: np.random.Generator) -> None:
    n = 6
    coords = rng.normal(size=(2 * n, 2))
    is_pos = np.array([True] * n + [False] * n)
    eligible = np.array([True, True, False, True, True, True] * 2)
    ids = [f"inst:{i % n}" for i in range(2 * n)]
    fig = figures.activation_map(coords, is_pos, eligible, ids, hover=[f"text {i}" for i in ids])
    _serialises(fig)
    assert [t.name for t in fig.data] == [
        "positive (y+)",
        "negative (y−)",
        "positive, dropped",
        "negative, dropped",
    ]
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    assert fig.layout.xaxis.title.text == "PC 1"
    assert fig.layout.yaxis.title.text == "PC 2"
    # customdata maps every point back to its row; together they cover all rows exactly once.
    rows = np.concatenate([np.asarray(t.customdata) for t in fig.data])
    assert sorted(rows.tolist()) == list(range(2 * n))
    for t in fig.data:
        np.testing.assert_allclose(np.asarray(t.x), coords[np.asarray(t.customdata), 0])
    dropped = fig.data[2]
    assert dropped.marker.symbol == "circle-open"
    assert list(dropped.customdata) == [2]
    assert "inst:2" in dropped.hovertext[0] and "dropped" in dropped.hovertext[0]


def test_activation_map_umap_axis_titles_and_no_dropped(rng: np.random.Generator) -> None:
    coords = rng.normal(size=(4, 2))
    fig = figures.activation_map(
        coords, np.array([1, 0, 1, 0], bool), np.ones(4, bool), ["a", "a", "b", "b"], method="UMAP"
    )
    assert fig.layout.xaxis.title.text == "UMAP 1"
    assert fig.layout.yaxis.title.text == "UMAP 2"
    assert len(fig.data) == 2  # empty dropped groups are not drawn


def test_activation_map_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="coords"):
        figures.activation_map(np.zeros((4, 3)), np.ones(4, bool), np.ones(4, bool), list("abcd"))
    with pytest.raises(ValueError, match="ids"):
        figures.activation_map(np.zeros((4, 2)), np.ones(4, bool), np.ones(4, bool), list("abc"))


def test_layer_chart_axes_markers() -> None:
    layers = [0, 5, 10, 15]
    fig = figures.layer_chart(
        layers,
        [1.0, 3.0, 5.0, 2.0],
        [0.5, 0.7, 0.9, 0.6],
        [2.0, 4.0, 7.0, 6.0],
        selected=10,
        best=10,
    )
    _serialises(fig)
    names = [t.name for t in fig.data]
    assert names[:3] == ["separation D", "CAA norm ‖v̄‖", "eligible fraction"]
    assert names[3] == "suggested layer 10"
    assert fig.data[3].marker.symbol == "star"
    assert (fig.data[3].x[0], fig.data[3].y[0]) == (10, 5.0)
    # D and CAA norm share the left axis, the eligible fraction has the secondary one.
    assert fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y"
    assert fig.data[2].yaxis == "y2"
    assert fig.layout.xaxis.title.text == "layer"
    assert fig.layout.yaxis.title.text == "distance (activation units)"
    assert fig.layout.yaxis2.title.text == "eligible fraction"
    vlines = [s for s in fig.layout.shapes if s.x0 == s.x1 == 10]
    assert len(vlines) == 1
    assert any("suggested" in (a.text or "") for a in fig.layout.annotations)


def test_layer_chart_without_markers() -> None:
    fig = figures.layer_chart([1, 2], [1.0, 2.0], [1.0, 1.0], [3.0, 4.0])
    assert len(fig.data) == 3
    assert len(fig.layout.shapes) == 0


def test_eligibility_scatter_cutoff_line_is_exact(rng: np.random.Generator) -> None:
    n_inst = 10
    neg = rng.normal(size=n_inst)
    pos = neg + rng.uniform(-1, 4, size=n_inst)
    kappa, D = 0.5, float(pos.mean() - neg.mean())
    eligible = (pos - neg) >= kappa * D
    reasons = ["" if e else "not separable" for e in eligible]
    ids = [f"i{i}" for i in range(n_inst)]
    fig = figures.eligibility_scatter(pos, neg, eligible, reasons, kappa, D, ids)
    _serialises(fig)
    cutoff = _traces(fig, "cutoff")
    assert len(cutoff) == 1
    assert cutoff[0].name == "cutoff p − n = κ·D (κ=0.50)"
    x = np.asarray(cutoff[0].x)
    np.testing.assert_allclose(np.asarray(cutoff[0].y), x + kappa * D, rtol=0, atol=1e-12)
    # The line spans the frame of the x axis, which frames the points (n on x, p on y).
    assert x.min() <= neg.min() and x.max() >= neg.max()
    lo, hi = fig.layout.xaxis.range
    assert lo <= neg.min() and hi >= neg.max() and (lo, hi) == (x.min(), x.max())
    lo, hi = fig.layout.yaxis.range
    assert lo <= pos.min() and hi >= pos.max()
    diag = _traces(fig, "p = n")[0]
    assert diag.line.dash == "dot"
    np.testing.assert_allclose(np.asarray(diag.y), np.asarray(diag.x))
    kept, dropped = _traces(fig, "eligible")[0], _traces(fig, "dropped")[0]
    # x = n, y = p; customdata is the instance index.
    np.testing.assert_allclose(np.asarray(kept.x), neg[np.asarray(kept.customdata)])
    np.testing.assert_allclose(np.asarray(kept.y), pos[np.asarray(kept.customdata)])
    assert len(kept.customdata) + len(dropped.customdata) == n_inst
    assert dropped.marker.color == figures.COLORS["dropped"]
    assert all("not separable" in h for h in dropped.hovertext)
    assert fig.layout.xaxis.title.text.startswith("n_i")
    assert fig.layout.yaxis.title.text.startswith("p_i")
    assert "Fisher" in fig.layout.xaxis.title.text


def test_eligibility_scatter_other_kappa_and_axis_label() -> None:
    p = np.array([2.0, 3.0, 1.0])
    n = np.array([0.0, 0.5, 1.2])
    kappa, D = 0.25, 1.5
    fig = figures.eligibility_scatter(
        p,
        n,
        np.array([True, True, False]),
        ["", "", "inconsistent"],
        kappa,
        D,
        ["a", "b", "c"],
        axis_label="mean-difference",
    )
    cutoff = _traces(fig, "cutoff")[0]
    assert cutoff.name == "cutoff p − n = κ·D (κ=0.25)"
    np.testing.assert_allclose(np.asarray(cutoff.y) - np.asarray(cutoff.x), kappa * D)
    assert "mean-difference" in fig.layout.xaxis.title.text


def test_eligibility_scatter_frames_the_points_not_the_lines() -> None:
    # Positives far above negatives (as on the demo): a joint range would put every point in one
    # corner. Each axis frames its own coordinate instead, and the off-frame cutoff is annotated.
    n = np.array([90.0, 91.0, 92.0, 93.0])
    p = np.array([150.0, 151.0, 152.5, 153.0])
    D = float(p.mean() - n.mean())
    fig = figures.eligibility_scatter(p, n, np.ones(4, bool), [""] * 4, 0.5, D, list("abcd"))
    x_lo, x_hi = fig.layout.xaxis.range
    y_lo, y_hi = fig.layout.yaxis.range
    assert x_lo < 90 and x_hi > 93 and x_hi - x_lo < 5  # the frame hugs the points
    assert y_lo < 150 and y_hi > 153 and y_hi - y_lo < 5
    notes = [a.text for a in fig.layout.annotations]
    assert any("runs below this frame" in t for t in notes)
    # When the line crosses the frame, there is no such note.
    fig2 = figures.eligibility_scatter(np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.0]), np.ones(3, bool),
                                       [""] * 3, 0.5, 0.67, list("abc"))
    assert not [a for a in fig2.layout.annotations if "frame" in (a.text or "")]


def test_eligibility_scatter_coloured_by_annotation() -> None:
    p = np.array([2.0, 3.0, 1.0, 2.5])
    n = np.array([0.0, 0.5, 1.2, 0.1])
    keep = np.array([True, True, False, True])
    quality = ["clean", "clean", "swapped", "weak"]
    fig = figures.eligibility_scatter(p, n, keep, ["", "", "inconsistent", ""], 0.5, 1.5, list("abcd"),
                                      quality=quality)
    _serialises(fig)
    points = [t for t in fig.data if t.mode == "markers"]
    assert [t.name.split(":")[0] for t in points] == ["clean", "swapped", "weak"]  # canonical order
    assert all(figures.ANNOTATION_NOTE in t.name for t in points)
    swapped = points[1]
    assert list(swapped.customdata) == [2] and list(swapped.marker.symbol) == ["x"]  # dropped -> cross
    assert swapped.marker.color == figures.QUALITY_COLORS["swapped"]
    assert "1 dropped" in swapped.name and "annotation: swapped" in swapped.hovertext[0]
    assert sorted(i for t in points for i in t.customdata) == [0, 1, 2, 3]


def test_activation_map_coloured_by_annotation() -> None:
    coords = np.arange(8, dtype=float).reshape(4, 2)
    is_pos = np.array([True, True, False, False])
    keep = np.array([True, False, True, False])
    fig = figures.activation_map(coords, is_pos, keep, ["a", "b", "a", "b"], quality=["clean", "neutral"] * 2)
    _serialises(fig)
    names = [t.name for t in fig.data]
    assert names == [f"clean ({figures.ANNOTATION_NOTE})", f"neutral ({figures.ANNOTATION_NOTE})"]
    clean = fig.data[0]
    assert list(clean.customdata) == [0, 2]
    assert list(clean.marker.symbol) == ["circle", "diamond"]  # y+ circle, y- diamond, both kept
    assert list(fig.data[1].marker.symbol) == ["circle-open", "diamond-open"]  # dropped: hollow


def test_steerability_scatter_marks_anti_steerable_pairs() -> None:
    gap = np.array([1.0, 2.0, -0.5, 3.0])
    slope = np.array([0.4, -0.1, -0.3, 0.2])
    keep = np.array([True, True, False, True])
    fig = figures.steerability_scatter(gap, slope, keep, list("abcd"))
    _serialises(fig)
    kept, dropped = fig.data
    assert kept.name == "eligible (3, 1 anti-steerable)" and dropped.name == "dropped (1, 1 anti-steerable)"
    np.testing.assert_allclose(np.asarray(kept.y), slope[np.asarray(kept.customdata)])
    assert [s.y0 for s in fig.layout.shapes] == [0.0]
    assert "2/4 pairs anti-steerable" in fig.layout.title.text
    assert fig.layout.yaxis.title.text.startswith("steerability")
    fig2 = figures.steerability_scatter(gap, slope, keep, list("abcd"), x_label="cos(v_i, v̄)",
                                        quality=["clean", "swapped", "swapped", "clean"])
    assert [t.name.split(":")[0] for t in fig2.data] == ["clean", "swapped"]
    assert fig2.data[1].name.startswith("swapped: 2 of 2 anti-steerable")
    assert fig2.layout.xaxis.title.text == "cos(v_i, v̄)"


def test_cosine_histogram_zero_line() -> None:
    cos = np.array([-0.3, 0.1, 0.5, 0.8, 0.9])
    fig = figures.cosine_histogram(cos)
    _serialises(fig)
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Histogram)
    assert fig.layout.xaxis.title.text == "cos(v_i, v̄)"
    zero = [s for s in fig.layout.shapes if s.x0 == 0 and s.x1 == 0]
    assert len(zero) == 1
    fig2 = figures.cosine_histogram(cos, eligible=cos > 0)
    assert [type(t) for t in fig2.data] == [go.Histogram, go.Histogram]
    assert len(fig2.data[0].x) == 4 and len(fig2.data[1].x) == 1
    assert any(s.x0 == 0 and s.x1 == 0 for s in fig2.layout.shapes)


def test_gap_dumbbells_sorted_with_customdata() -> None:
    p = np.array([3.0, 1.0, 2.0])
    n = np.array([0.0, 0.8, 0.5])
    fig = figures.gap_dumbbells(p, n, np.array([True, False, True]), ["a", "b", "c"], 1.0)
    _serialises(fig)
    assert len(fig.data) == 5
    p_trace = _traces(fig, "p_i")[0]
    # Sorted by gap ascending (largest on top): b (0.2), c (1.5), a (3.0).
    assert list(p_trace.customdata) == [1, 2, 0]
    assert list(p_trace.y) == ["b", "c", "a"]
    required = _traces(fig, "required")[0]
    np.testing.assert_allclose(np.asarray(required.x), n[[1, 2, 0]] + 1.0)
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


# ---------------------------------------------------------------------------------------------
# agents stage


def test_subbehaviour_tree_greys_dropped() -> None:
    names = ["hope", "gratitude", "cheer", "noise"]
    contrib = [8.0, 6.0, 0.0, 1.0]
    kept = [True, True, False, False]
    fig = figures.subbehaviour_tree(
        "optimism",
        names,
        contrib,
        kept,
        [f"why {s}" for s in names],
        provenance=["offline-encoder"] * 4,
        descriptions=[f"about {s}" for s in names],
    )
    _serialises(fig)
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Treemap)
    tree = fig.data[0]
    assert list(tree.labels) == ["optimism", *names]
    assert list(tree.parents) == ["", "root", "root", "root", "root"]
    colors = list(tree.marker.colors)
    assert colors[3] == colors[4] == figures.COLORS["muted"]
    assert figures.COLORS["muted"] not in colors[1:3]
    assert colors[1] != colors[2]  # colour follows the contribution
    assert all(v > 0 for v in tree.values[1:])  # a zero contribution still shows
    assert tree.values[1] > tree.values[2]
    assert list(tree.customdata) == [-1, 0, 1, 2, 3]
    assert "why cheer" in tree.hovertext[3] and "about cheer" in tree.hovertext[3]
    assert "c = 0.0" in tree.text[3] and "discarded" in tree.text[3]


def test_subbehaviour_tree_escapes_text() -> None:
    fig = figures.subbehaviour_tree("b", ["<x>"], [5.0], [True], ["uses <b>tags</b>"])
    assert "&lt;b&gt;tags" in fig.data[0].hovertext[1]


def test_relevance_heatmap(rng: np.random.Generator) -> None:
    scores = rng.uniform(0, 10, size=(4, 3))
    ids = ["a", "b", "c", "d"]
    fig = figures.relevance_heatmap(scores, ids, ["s1", "s2", "s3"], hover_text=list("wxyz"))
    _serialises(fig)
    hm = fig.data[0]
    assert len(fig.data) == 1 and isinstance(hm, go.Heatmap)
    assert (hm.zmin, hm.zmax) == (0, 10)
    assert list(hm.y) == ids and list(hm.x) == ["s1", "s2", "s3"]
    cd = np.asarray(hm.customdata)
    assert cd.shape == (4, 3) and (cd[:, 0] == np.arange(4)).all()
    assert fig.layout.xaxis.title.text == "sub-behaviour"
    assert fig.layout.yaxis.title.text == "instance"


def test_weight_heatmap_marker_and_sorting() -> None:
    temps = np.array([0.1, 1.0, 10.0])
    weights = np.array([[0.1, 0.7, 0.2], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    fig = figures.weight_heatmap(temps, weights, ["a", "b", "c"], current_t=10.0)
    _serialises(fig)
    hm = fig.data[0]
    np.testing.assert_allclose(np.asarray(hm.y), [-1.0, 0.0, 1.0])
    assert list(hm.x) == ["c", "a", "b"]  # sorted by weight at t = 10
    assert np.asarray(hm.customdata)[0].tolist() == [2, 0, 1]
    np.testing.assert_allclose(np.asarray(hm.z)[:, 0], weights[:, 2])
    hlines = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert len(hlines) == 1 and hlines[0].y0 == pytest.approx(math.log10(10.0))
    assert fig.layout.yaxis.title.text == "log10 t"
    assert "instance" in fig.layout.xaxis.title.text

    fig2 = figures.weight_heatmap(temps, weights, ["a", "b", "c"], current_t=0.5)
    hline = [s for s in fig2.layout.shapes if s.y0 == s.y1][0]
    assert hline.y0 == pytest.approx(math.log10(0.5))
    assert list(fig2.data[0].x) == ["b", "c", "a"]  # nearest row in log t: t = 1

    fig3 = figures.weight_heatmap(temps, weights, ["a", "b", "c"])
    assert list(fig3.data[0].x) == ["a", "b", "c"] and len(fig3.layout.shapes) == 0


def test_weight_bars_top_and_bottom() -> None:
    w = np.linspace(1, 40, 40)
    w = w / w.sum()
    ids = [f"i{i}" for i in range(40)]
    fig = figures.weight_bars(w, ids, top=5)
    _serialises(fig)
    assert [type(t) for t in fig.data] == [go.Bar, go.Bar]
    high, low = fig.data
    assert list(high.customdata) == [39, 38, 37, 36, 35]
    assert list(low.customdata) == [4, 3, 2, 1, 0]
    assert high.orientation == "h"
    assert fig.layout.xaxis.title.text == "weight w_i"
    assert any(s.x0 == pytest.approx(1 / 40) for s in fig.layout.shapes)
    small = figures.weight_bars(np.array([0.5, 0.3, 0.2]), ["a", "b", "c"], top=15)
    assert len(small.data[0].x) + len(small.data[1].x) == 3


# ---------------------------------------------------------------------------------------------
# evaluation stage


def test_alignment_vs_alpha_lines_and_error_bars() -> None:
    df = pd.DataFrame(
        {
            "method": ["CAA"] * 3 + ["SAAS"] * 3,
            "alpha": [1.0, -1.0, 0.0] * 2,
            "alignment": [0.6, 0.4, 0.5, 0.7, 0.3, 0.5],
            "std": [0.02] * 6,
        }
    )
    fig = figures.alignment_vs_alpha(df)
    _serialises(fig)
    assert [t.name for t in fig.data] == ["CAA", "SAAS"]
    assert list(fig.data[0].x) == [-1.0, 0.0, 1.0]  # sorted by alpha
    assert fig.data[0].error_y.array is not None
    assert fig.data[0].line.color == figures.METHOD_COLORS["CAA"]
    assert fig.data[1].line.color == figures.METHOD_COLORS["SAAS"]
    assert fig.data[0].line.color != fig.data[1].line.color
    assert tuple(fig.layout.yaxis.range) == (0, 1)
    assert fig.layout.yaxis.title.text == "behaviour alignment P(y+)"
    chance = [s for s in fig.layout.shapes if s.y0 == s.y1 == 0.5]
    assert len(chance) == 1 and chance[0].line.dash == "dot"
    no_std = figures.alignment_vs_alpha(df.drop(columns="std"))
    assert no_std.data[0].error_y.array is None


def test_alignment_vs_alpha_missing_column() -> None:
    with pytest.raises(ValueError, match="alpha"):
        figures.alignment_vs_alpha(pd.DataFrame({"method": ["CAA"], "alignment": [0.5]}))


def test_layer_sweep() -> None:
    df = pd.DataFrame({"layer": [10, 5, 15], "alignment": [0.6, 0.55, 0.5]})
    fig = figures.layer_sweep(df)
    _serialises(fig)
    assert len(fig.data) == 1 and list(fig.data[0].x) == [5, 10, 15]
    assert fig.layout.xaxis.title.text == "layer"
    grouped = pd.DataFrame(
        {
            "layer": [5, 10] * 4,
            "alignment": np.linspace(0.3, 0.7, 8),
            "method": ["CAA"] * 4 + ["SAAS"] * 4,
            "alpha": [-1, -1, 1, 1] * 2,
        }
    )
    fig2 = figures.layer_sweep(grouped)
    assert [t.name for t in fig2.data] == ["CAA, α=-1", "CAA, α=+1", "SAAS, α=-1", "SAAS, α=+1"]


def test_temperature_sweep_log_x() -> None:
    df = pd.DataFrame(
        {
            "temperature": [0.1, 1.0, 10.0] * 2,
            "alignment": np.linspace(0.4, 0.8, 6),
            "alpha": [-1.0] * 3 + [1.0] * 3,
        }
    )
    fig = figures.temperature_sweep(df)
    _serialises(fig)
    assert fig.layout.xaxis.type == "log"
    assert len(fig.data) == 2
    assert fig.layout.xaxis.title.text.startswith("temperature")
    assert fig.layout.yaxis.title.text == "behaviour alignment P(y+)"


def test_cosine_matrix() -> None:
    m = np.array([[1.0, 0.2, -0.5], [0.2, 1.0, 0.1], [-0.5, 0.1, 1.0]])
    fig = figures.cosine_matrix(["CAA", "SAAS", "PCA-diff"], m)
    _serialises(fig)
    hm = fig.data[0]
    assert isinstance(hm, go.Heatmap)
    assert (hm.zmin, hm.zmax) == (-1, 1)
    assert hm.texttemplate == "%{z:.2f}"
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    with pytest.raises(ValueError):
        figures.cosine_matrix(["a"], np.zeros((2, 3)))


def test_method_color() -> None:
    assert figures.method_color("caa") == figures.METHOD_COLORS["CAA"]
    assert figures.method_color("saas") != figures.method_color("CAA")
    assert figures.method_color("mystery") == figures.method_color("mystery")


def test_no_streamlit_import() -> None:
    source = open(figures.__file__, encoding="utf-8").read()
    assert "import streamlit" not in source
