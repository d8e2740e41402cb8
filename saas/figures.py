"""Plotly figure builders for every view of the SAAS pipeline.

Every builder is pure: plain data (numpy arrays, lists, pandas DataFrames) in, a
``plotly.graph_objects.Figure`` out. Nothing here imports streamlit or the rest of ``saas``, so the
figures are unit-testable on their own and the app only has to render them.

Conventions shared by all builders:

- One template (:data:`TEMPLATE`) and one palette (:data:`COLORS`, :data:`METHOD_COLORS`).
- Titles and axis titles are always set.
- Point-like traces carry ``customdata`` = the index of the point in the arrays given to the
  builder (an ``int``), so the app can map a clicked point back to its instance. Heatmaps carry
  the row (instance) index per cell; the sub-behaviour tree carries the sub-behaviour index (``-1``
  for the root). Instance ids and texts are shown on hover.
- User text (ids, instance text, rationales) is HTML-escaped and wrapped before it goes into hover
  labels, because plotly interprets a few HTML tags there.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

__all__ = [
    "ANNOTATION_NOTE",
    "COLORS",
    "METHOD_COLORS",
    "QUALITY_COLORS",
    "TEMPLATE",
    "activation_map",
    "alignment_vs_alpha",
    "cosine_histogram",
    "cosine_matrix",
    "eligibility_scatter",
    "gap_dumbbells",
    "layer_chart",
    "layer_sweep",
    "method_color",
    "relevance_heatmap",
    "steerability_scatter",
    "subbehaviour_tree",
    "temperature_sweep",
    "weight_bars",
    "weight_heatmap",
]

TEMPLATE = "plotly_white"
"""The plotly template every figure uses."""

COLORS: dict[str, str] = {
    "positive": "#0072B2",  # y+ / shows the behaviour (Okabe-Ito blue)
    "negative": "#E69F00",  # y- / does not (Okabe-Ito orange)
    "eligible": "#009E73",  # kept by the eligibility filter (green)
    "dropped": "#D55E00",  # removed by the eligibility filter (vermillion, red-ish)
    "muted": "#B8B8B8",  # greyed out: discarded sub-behaviours, hollow markers
    "cutoff": "#CC3311",  # the separability cutoff line
    "reference": "#7F7F7F",  # diagonals, zero lines, chance level
    "marker": "#332288",  # selected layer / current temperature markers
    "separation": "#882255",  # the mean separation D per layer
    "root": "#DDE6F0",  # the behaviour node of the sub-behaviour tree
}
"""Semantic colours shared by all figures (colour-blind-safe Okabe-Ito / Tol picks)."""

QUALITY_COLORS: dict[str, str] = {
    "clean": "#0072B2",
    "swapped": "#D55E00",
    "neutral": "#7F7F7F",
    "confounded": "#CC79A7",
    "weak": "#E69F00",
    "unannotated": "#B8B8B8",
}
"""One colour per annotated quality (the ``quality`` annotation; never used by the method)."""

ANNOTATION_NOTE = "annotation, not used by the method"

METHOD_COLORS: dict[str, str] = {
    "SAAS": "#CC3311",
    "CAA": "#0077BB",
    "PCA-center": "#33BBEE",
    "PCA-diff": "#009988",
    "logit-diff": "#EE7733",
    "conf": "#EE3377",
    "uniform-eligible": "#AA4499",
    "BiPO": "#332288",
    "none": "#7F7F7F",
}
"""One colour per steering method; CAA and SAAS are deliberately far apart."""

_FALLBACK_COLORS = ("#117733", "#882255", "#44AA99", "#999933", "#661100", "#6699CC", "#888888")

_CONTRIBUTION_SCALE = "Blues"
_RELEVANCE_SCALE = "Viridis"
_WEIGHT_SCALE = "Viridis"
_COSINE_SCALE = "RdBu"


# --------------------------------------------------------------------------------------------
# helpers


def method_color(method: str) -> str:
    """The colour of a steering method (case-insensitive); unknown names get a stable fallback.

    Args:
        method: A method name such as ``"SAAS"``, ``"caa"`` or ``"PCA-diff"``.

    Returns:
        A hex colour string.
    """
    lowered = {k.lower(): v for k, v in METHOD_COLORS.items()}
    key = str(method).lower()
    if key in lowered:
        return lowered[key]
    # A stable (process-independent) hash, unlike the built-in ``hash`` of a str.
    index = sum(ord(ch) for ch in key) % len(_FALLBACK_COLORS)
    return _FALLBACK_COLORS[index]


def _hover(text: object, width: int = 70, max_chars: int = 600) -> str:
    """HTML-escape and wrap one piece of user text for a hover label."""
    s = str(text)
    if len(s) > max_chars:
        s = s[: max_chars - 1] + "…"
    lines = textwrap.wrap(s, width=width) or [""]
    return "<br>".join(html.escape(line) for line in lines)


def _style(fig: go.Figure, title: str, x_title: str, y_title: str, **layout: object) -> go.Figure:
    """Apply the shared template, title and axis titles."""
    settings: dict[str, object] = {
        "template": TEMPLATE,
        "title": {"text": title, "x": 0.0, "xanchor": "left"},
        "margin": {"l": 60, "r": 30, "t": 80, "b": 50},
        "legend": {
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.02,
            "xanchor": "right",
            "x": 1.0,
        },
    }
    settings.update(layout)
    fig.update_layout(**settings)
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def _vector(name: str, values: object, dtype: type | None = float) -> np.ndarray:
    """A 1-D numpy array, with a clear error for anything else."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_len(expected: int, /, **named: Sequence[object] | np.ndarray | None) -> None:
    """Raise ValueError unless every given (non-None) sequence has length ``expected``."""
    for name, seq in named.items():
        if seq is not None and len(seq) != expected:
            raise ValueError(f"{name} has length {len(seq)}, expected {expected}")


def _padded_range(*arrays: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    """The joint [min, max] of finite values, widened by ``pad`` of the span on each side."""
    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.array([])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return (lo - pad * span, hi + pad * span)


def _has_std(df: pd.DataFrame) -> bool:
    return "std" in df.columns and bool(df["std"].notna().any())


def _require_columns(df: pd.DataFrame, required: Sequence[str], builder: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{builder}: missing column(s) {missing}; got {list(df.columns)}")


def _chance_line(fig: go.Figure) -> None:
    """The dotted 0.5 (no preference) reference on an alignment axis."""
    fig.add_hline(
        y=0.5,
        line={"dash": "dot", "color": COLORS["reference"], "width": 1},
        annotation_text="chance 0.5",
        annotation_position="bottom right",
        annotation_font_color=COLORS["reference"],
    )


# --------------------------------------------------------------------------------------------
# eligibility stage


def activation_map(
    coords: np.ndarray,
    is_positive: np.ndarray,
    eligible: np.ndarray,
    ids: list[str],
    method: str = "PCA",
    hover: list[str] | None = None,
    quality: Sequence[str] | None = None,
) -> go.Figure:
    """2-D map of the 2N activations (positive and negative answer of every instance).

    Args:
        coords: [2N, 2] projected activations (PCA or UMAP).
        is_positive: [2N] bool, True for a_i+ rows.
        eligible: [2N] bool, the eligibility of the instance each row belongs to.
        ids: 2N instance ids, one per row.
        method: Name of the projection; ``"PCA"`` gives axis titles "PC 1"/"PC 2", anything else
            ``"<method> 1"``/``"<method> 2"``.
        hover: Optional 2N texts (e.g. prompt + answer) shown on hover.
        quality: Optional 2N annotated qualities (``"clean"``, ``"swapped"``, ...; the row's
            instance's): colour by annotation instead (circles = y+, diamonds = y-, hollow =
            dropped), one trace per quality, named ``"<quality> (annotation, not used by the
            method)"``.

    Returns:
        Up to four scatter traces: positive / negative (filled) and positive / negative dropped
        (hollow, faded); with ``quality``, one trace per quality present. ``customdata`` is the
        row index into ``coords``.
    """
    xy = np.asarray(coords, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must have shape [2N, 2], got {xy.shape}")
    n_rows = xy.shape[0]
    pos = _vector("is_positive", is_positive, dtype=bool)
    keep = _vector("eligible", eligible, dtype=bool)
    _check_len(n_rows, is_positive=pos, eligible=keep, ids=ids, hover=hover, quality=quality)
    label = "PC" if method.upper() == "PCA" else method
    if quality is not None:
        return _annotated_map(xy, pos, keep, ids, hover, list(quality), method, label)

    fig = go.Figure()
    groups = [
        ("positive (y+)", pos & keep, COLORS["positive"], "circle", 0.85),
        ("negative (y−)", ~pos & keep, COLORS["negative"], "circle", 0.85),
        ("positive, dropped", pos & ~keep, COLORS["positive"], "circle-open", 0.45),
        ("negative, dropped", ~pos & ~keep, COLORS["negative"], "circle-open", 0.45),
    ]
    for name, mask, color, symbol, opacity in groups:
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            continue
        hover_texts = [
            f"<b>{_hover(ids[r])}</b>"
            + ("" if keep[r] else " (dropped)")
            + (f"<br>{_hover(hover[r])}" if hover is not None else "")
            for r in rows
        ]
        fig.add_trace(
            go.Scatter(
                x=xy[rows, 0],
                y=xy[rows, 1],
                mode="markers",
                name=name,
                marker={
                    "color": color,
                    "symbol": symbol,
                    "size": 8,
                    "opacity": opacity,
                    "line": {
                        "width": 1.5 if symbol.endswith("open") else 0.5,
                        "color": color if symbol.endswith("open") else "white",
                    },
                },
                customdata=rows,
                hovertext=hover_texts,
                hovertemplate="%{hovertext}<extra>%{fullData.name}</extra>",
            )
        )
    return _style(
        fig,
        f"Activations ({method}): positive vs negative answers",
        f"{label} 1",
        f"{label} 2",
    )


def layer_chart(
    layers: list[int],
    separation: list[float],
    eligible_fraction: list[float],
    caa_norm: list[float],
    selected: int | None = None,
    best: int | None = None,
) -> go.Figure:
    """Per-layer summary: separation D and CAA norm (left axis), eligible fraction (right axis).

    Args:
        layers: Layer indices.
        separation: Mean separation D = mean(p) - mean(n) per layer.
        eligible_fraction: Fraction of eligible instances per layer, in [0, 1].
        caa_norm: ||mean_i v_i|| per layer (same activation units as D).
        selected: Layer currently selected in the app; drawn as a vertical dashed line.
        best: Suggested layer; drawn as a star on the separation curve with an annotation.

    Returns:
        Three line traces (plus a star trace when ``best`` is given); ``customdata`` is the layer.
    """
    n = len(layers)
    _check_len(n, separation=separation, eligible_fraction=eligible_fraction, caa_norm=caa_norm)
    x = np.asarray(layers, dtype=int)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.asarray(separation, dtype=float),
            mode="lines+markers",
            name="separation D",
            line={"color": COLORS["separation"]},
            customdata=x,
            hovertemplate="layer %{x}<br>D = %{y:.3g}<extra></extra>",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.asarray(caa_norm, dtype=float),
            mode="lines+markers",
            name="CAA norm ‖v̄‖",
            line={"color": method_color("CAA"), "dash": "dash"},
            customdata=x,
            hovertemplate="layer %{x}<br>‖v̄‖ = %{y:.3g}<extra></extra>",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.asarray(eligible_fraction, dtype=float),
            mode="lines+markers",
            name="eligible fraction",
            line={"color": COLORS["eligible"]},
            customdata=x,
            hovertemplate="layer %{x}<br>eligible %{y:.0%}<extra></extra>",
        ),
        secondary_y=True,
    )
    if best is not None and best in layers:
        d_best = float(separation[list(layers).index(best)])
        fig.add_trace(
            go.Scatter(
                x=[best],
                y=[d_best],
                mode="markers",
                name=f"suggested layer {best}",
                marker={
                    "symbol": "star",
                    "size": 16,
                    "color": COLORS["cutoff"],
                    "line": {"width": 1, "color": "white"},
                },
                customdata=[best],
                hovertemplate="suggested layer %{x}<br>D = %{y:.3g}<extra></extra>",
            ),
            secondary_y=False,
        )
        fig.add_annotation(
            x=best,
            y=d_best,
            text=f"suggested: {best}",
            showarrow=True,
            arrowhead=2,
            ay=-40,
            yref="y",
        )
    if selected is not None:
        fig.add_vline(
            x=selected,
            line={"dash": "dash", "color": COLORS["marker"], "width": 1.5},
            annotation_text=f"selected {selected}",
            annotation_position="top left",
        )
    _style(fig, "Per-layer separation and eligibility", "layer", "distance (activation units)")
    fig.update_yaxes(
        title_text="eligible fraction",
        range=[0, 1.05],
        secondary_y=True,
        tickformat=".0%",
        tickvals=[0, 0.25, 0.5, 0.75, 1.0],
        showgrid=False,
    )
    fig.update_yaxes(title_text="distance (activation units)", secondary_y=False)
    return fig


def _quality_order(quality: Sequence[str]) -> list[str]:
    known = [q for q in QUALITY_COLORS if q in set(quality)]
    return known + sorted(set(quality) - set(known))


def _annotated_map(xy: np.ndarray, pos: np.ndarray, keep: np.ndarray, ids: list[str], hover: list[str] | None,
                   quality: list[str], method: str, label: str) -> go.Figure:
    """:func:`activation_map` coloured by annotated quality (symbol: answer side; hollow: dropped)."""
    q = np.asarray(quality, dtype=object)
    fig = go.Figure()
    for kind in _quality_order(quality):
        rows = np.flatnonzero(q == kind)
        symbols = [("circle" if pos[r] else "diamond") + ("" if keep[r] else "-open") for r in rows]
        texts = [
            f"<b>{_hover(ids[r])}</b> ({'y+' if pos[r] else 'y−'}{'' if keep[r] else ', dropped'})"
            f"<br>annotation: {_hover(kind)}" + (f"<br>{_hover(hover[r])}" if hover is not None else "")
            for r in rows
        ]
        color = QUALITY_COLORS.get(kind, _FALLBACK_COLORS[0])
        fig.add_trace(go.Scatter(
            x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=f"{kind} ({ANNOTATION_NOTE})",
            marker={"color": color, "symbol": symbols, "size": 8, "opacity": 0.85,
                    "line": {"width": 1.2, "color": color}},
            customdata=rows, hovertext=texts, hovertemplate="%{hovertext}<extra></extra>",
        ))
    return _style(fig, f"Activations ({method}) coloured by annotated quality: ● y+, ◆ y−, hollow = dropped",
                  f"{label} 1", f"{label} 2")


def _framed(values: np.ndarray, pad: float = 0.08) -> tuple[float, float]:
    """A padded range around the finite values (the axis frame of a scatter)."""
    return _padded_range(values, pad=pad)


def _selection_points(
    fig: go.Figure,
    x: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    texts: Callable[[np.ndarray], list[str]],
    quality: Sequence[str] | None,
    group_name: Callable[[str, np.ndarray], str],
) -> None:
    """Add the point traces of an eligibility view: "eligible" / "dropped" (green circles, red
    crosses), or with ``quality`` one trace per annotated quality (its colour; circle = eligible,
    cross = dropped). ``group_name(kind, rows)`` names a trace; ``customdata`` = instance index."""
    groups: list[tuple[str, np.ndarray, str, object]]
    if quality is None:
        groups = [("eligible", np.flatnonzero(keep), COLORS["eligible"], "circle"),
                  ("dropped", np.flatnonzero(~keep), COLORS["dropped"], "x")]
    else:
        q = np.asarray(list(quality), dtype=object)
        groups = []
        for kind in _quality_order(list(quality)):
            rows = np.flatnonzero(q == kind)
            groups.append((kind, rows, QUALITY_COLORS.get(kind, _FALLBACK_COLORS[0]),
                           ["circle" if keep[i] else "x" for i in rows]))
    for kind, rows, color, symbol in groups:
        fig.add_trace(go.Scatter(
            x=x[rows], y=y[rows], mode="markers", name=group_name(kind, rows),
            marker={"color": color, "symbol": symbol, "size": 8, "opacity": 0.85},
            customdata=rows, hovertext=texts(rows), hovertemplate="%{hovertext}<extra></extra>",
        ))


def eligibility_scatter(
    p: np.ndarray,
    n: np.ndarray,
    eligible: np.ndarray,
    reasons: list[str],
    kappa: float,
    D: float,
    ids: list[str],
    hover: list[str] | None = None,
    axis_label: str = "Fisher",
    quality: Sequence[str] | None = None,
) -> go.Figure:
    """Projections of each instance's answers: x = n_i = w·a_i-, y = p_i = w·a_i+.

    The separability rule g_i = p_i - n_i >= kappa * D is the half-plane above the line
    y = x + kappa * D, drawn exactly there; the diagonal p = n is dotted. The axes frame the
    points (each axis its own padded range), not the lines: when the cutoff line runs outside the
    frame, an annotation says on which side it lies.

    Args:
        p: [N] projections of the positive activations.
        n: [N] projections of the negative activations.
        eligible: [N] bool, separable AND consistent.
        reasons: N strings; why an instance was dropped ("" for eligible ones).
        kappa: Cutoff fraction kappa of the mean separation.
        D: Mean separation mean(p) - mean(n).
        ids: N instance ids.
        hover: Optional N instance texts.
        axis_label: Name of the projection axis ("Fisher" or "mean-difference").
        quality: Optional N annotated qualities: colour by annotation (one trace per quality,
            named ``"<quality> (annotation, not used by the method)"``; circles = eligible,
            crosses = dropped) instead of by eligibility.

    Returns:
        Traces: "eligible (k)" and "dropped (m)" scatters, or one per annotated quality
        (``customdata`` = instance index), the cutoff line (named ``"cutoff p − n = κ·D
        (κ=0.50)"``) and the diagonal (named ``"p = n"``).
    """
    pv = _vector("p", p)
    nv = _vector("n", n)
    keep = _vector("eligible", eligible, dtype=bool)
    _check_len(len(pv), n=nv, eligible=keep, reasons=reasons, ids=ids, hover=hover, quality=quality)
    offset = float(kappa) * float(D)

    def texts(rows: np.ndarray) -> list[str]:
        return [
            f"<b>{_hover(ids[i])}</b><br>p = {pv[i]:.3g}, n = {nv[i]:.3g}, "
            f"gap = {pv[i] - nv[i]:.3g} (cutoff {offset:.3g})"
            + (f"<br><i>dropped: {_hover(reasons[i])}</i>" if not keep[i] else "<br>eligible")
            + (f"<br>annotation: {_hover(quality[i])}" if quality is not None else "")
            + (f"<br>{_hover(hover[i])}" if hover is not None else "")
            for i in rows
        ]

    def name(kind: str, rows: np.ndarray) -> str:
        if quality is None:
            return f"{kind} ({rows.size})"
        n_drop = int((~keep[rows]).sum())
        return f"{kind}: {rows.size - n_drop} kept, {n_drop} dropped ({ANNOTATION_NOTE})"

    fig = go.Figure()
    _selection_points(fig, nv, pv, keep, texts, quality, name)
    x_lo, x_hi = _framed(nv)
    y_lo, y_hi = _framed(pv)
    line_x = np.array([x_lo, x_hi])
    fig.add_trace(
        go.Scatter(
            x=line_x,
            y=line_x + offset,
            mode="lines",
            name=f"cutoff p − n = κ·D (κ={kappa:.2f})",
            line={"color": COLORS["cutoff"], "width": 2},
            hovertemplate=f"p − n = {offset:.3g} (κ={kappa:.2f}, D={D:.3g})<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=line_x,
            y=line_x,
            mode="lines",
            name="p = n",
            line={"color": COLORS["reference"], "dash": "dot", "width": 1},
            hoverinfo="skip",
        )
    )
    fig.update_xaxes(range=[x_lo, x_hi])
    fig.update_yaxes(range=[y_lo, y_hi])
    if x_hi + offset < y_lo:
        side = "below"
    elif x_lo + offset > y_hi:
        side = "above"
    else:
        side = ""
    if side:
        fig.add_annotation(
            xref="paper", yref="paper", x=0.01, y=0.0 if side == "below" else 1.0,
            yanchor="bottom" if side == "below" else "top", xanchor="left", showarrow=False,
            text=f"the cutoff line p − n = {offset:.3g} runs {side} this frame: every point is "
                 f"{'above' if side == 'below' else 'below'} it",
            font={"color": COLORS["cutoff"], "size": 11},
        )
    n_keep = int(keep.sum())
    return _style(
        fig,
        f"Separability on the {axis_label} axis: keep p − n ≥ κ·D "
        f"(κ={kappa:.2f}, D={D:.3g}) — {n_keep}/{len(pv)} eligible",
        f"n_i = w·a_i− ({axis_label} projection)",
        f"p_i = w·a_i+ ({axis_label} projection)",
    )


def steerability_scatter(
    x: np.ndarray,
    slope: np.ndarray,
    eligible: np.ndarray,
    ids: list[str],
    x_label: str = "gap p_i − n_i",
    hover: list[str] | None = None,
    quality: Sequence[str] | None = None,
) -> go.Figure:
    """Per-instance steerability (y) against an eligibility statistic (x: the gap or the cosine).

    Steerability is the least-squares slope of the pair's own preference (log-ratio of its two
    answers) against the steering multiplier alpha; below the zero line a pair is anti-steerable:
    adding the vector makes the model prefer its negative answer more.

    Args:
        x: [N] the gap p_i - n_i or cos(v_i, v̄).
        slope: [N] steerability slopes.
        eligible: [N] bool.
        ids: N instance ids.
        x_label: Title of the x axis.
        hover: Optional N instance texts.
        quality: Optional N annotated qualities: colour by annotation (symbol = eligible / dropped).

    Returns:
        Scatter traces ("eligible (k, a anti-steerable)" / "dropped (...)", or one per quality),
        ``customdata`` = instance index, and a dashed horizontal line at slope 0.
    """
    xv = _vector("x", x)
    sv = _vector("slope", slope)
    keep = _vector("eligible", eligible, dtype=bool)
    _check_len(len(xv), slope=sv, eligible=keep, ids=ids, hover=hover, quality=quality)

    def texts(rows: np.ndarray) -> list[str]:
        return [
            f"<b>{_hover(ids[i])}</b><br>{html.escape(x_label)} = {xv[i]:.3g}, steerability = {sv[i]:.3g}"
            + (" (anti-steerable)" if sv[i] < 0 else "") + ("<br>eligible" if keep[i] else "<br>dropped")
            + (f"<br>annotation: {_hover(quality[i])}" if quality is not None else "")
            + (f"<br>{_hover(hover[i])}" if hover is not None else "")
            for i in rows
        ]

    def name(kind: str, rows: np.ndarray) -> str:
        anti = int((sv[rows] < 0).sum())
        if quality is None:
            return f"{kind} ({rows.size}, {anti} anti-steerable)"
        return f"{kind}: {anti} of {rows.size} anti-steerable ({ANNOTATION_NOTE})"

    fig = go.Figure()
    _selection_points(fig, xv, sv, keep, texts, quality, name)
    fig.add_hline(y=0.0, line={"color": COLORS["reference"], "dash": "dash", "width": 1.5},
                  annotation_text="slope 0: below = anti-steerable", annotation_position="bottom right")
    n_anti = int((sv < 0).sum())
    return _style(
        fig,
        f"Steerability vs {x_label}: {n_anti}/{len(sv)} pairs anti-steerable",
        x_label,
        "steerability (slope of the pair's log-ratio vs α)",
    )


def cosine_histogram(cosine: np.ndarray, eligible: np.ndarray | None = None) -> go.Figure:
    """Histogram of cos(v_i, v̄), the consistency test (keep cos > 0).

    Args:
        cosine: [N] cosine of every local vector with the mean local vector.
        eligible: Optional [N] bool; when given the eligible and dropped instances are stacked
            in their own colours.

    Returns:
        One histogram trace (two with ``eligible``) and a vertical line shape at x = 0.
    """
    cos = _vector("cosine", cosine)
    bins = {"start": -1.0, "end": 1.0, "size": 0.05}
    fig = go.Figure()
    if eligible is None:
        fig.add_trace(go.Histogram(x=cos, name="instances", xbins=bins, marker={"color": COLORS["positive"]}))
    else:
        keep = _vector("eligible", eligible, dtype=bool)
        _check_len(len(cos), eligible=keep)
        fig.add_trace(
            go.Histogram(
                x=cos[keep],
                name=f"eligible ({int(keep.sum())})",
                xbins=bins,
                marker={"color": COLORS["eligible"]},
            )
        )
        fig.add_trace(
            go.Histogram(
                x=cos[~keep],
                name=f"dropped ({int((~keep).sum())})",
                xbins=bins,
                marker={"color": COLORS["dropped"]},
            )
        )
        fig.update_layout(barmode="stack")
    fig.add_vline(
        x=0.0,
        line={"color": COLORS["reference"], "dash": "dash", "width": 1.5},
        annotation_text="cos = 0",
        annotation_position="top left",
    )
    n_cons = int((cos > 0).sum())
    _style(
        fig,
        f"Consistency: cos(v_i, v̄) > 0 — {n_cons}/{len(cos)} consistent",
        "cos(v_i, v̄)",
        "instances",
    )
    fig.update_xaxes(range=[-1.05, 1.05])
    return fig


def gap_dumbbells(
    p: np.ndarray,
    n: np.ndarray,
    eligible: np.ndarray,
    ids: list[str],
    cutoff_gap: float,
) -> go.Figure:
    """One dumbbell n_i — p_i per instance, sorted by gap g_i = p_i - n_i (largest on top).

    A small tick at n_i + cutoff_gap marks where p_i has to reach for the instance to be
    separable.

    Args:
        p: [N] positive projections.
        n: [N] negative projections.
        eligible: [N] bool.
        ids: N instance ids.
        cutoff_gap: kappa * D.

    Returns:
        Traces: connectors (eligible), connectors (dropped), "n_i", "p_i" and "required p"
        markers; marker traces carry ``customdata`` = instance index.
    """
    pv = _vector("p", p)
    nv = _vector("n", n)
    keep = _vector("eligible", eligible, dtype=bool)
    _check_len(len(pv), n=nv, eligible=keep, ids=ids)
    order = np.argsort(pv - nv)  # ascending: the largest gap ends up on top of the y axis
    labels = [str(ids[i]) for i in order]
    fig = go.Figure()
    for name, flag, color in (
        ("eligible", True, COLORS["eligible"]),
        ("dropped", False, COLORS["dropped"]),
    ):
        xs: list[float | None] = []
        ys: list[str | None] = []
        for i in order:
            if keep[i] == flag:
                xs += [float(nv[i]), float(pv[i]), None]
                ys += [str(ids[i]), str(ids[i]), None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"gap ({name})",
                line={"color": color, "width": 3},
                hoverinfo="skip",
                connectgaps=False,
            )
        )
    hover = [
        f"<b>{_hover(ids[i])}</b><br>gap = {pv[i] - nv[i]:.3g} (cutoff {cutoff_gap:.3g})"
        + ("" if keep[i] else "<br>dropped")
        for i in order
    ]
    fig.add_trace(
        go.Scatter(
            x=nv[order],
            y=labels,
            mode="markers",
            name="n_i",
            marker={"color": COLORS["negative"], "size": 8},
            customdata=order,
            hovertext=hover,
            hovertemplate="%{hovertext}<br>n = %{x:.3g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=pv[order],
            y=labels,
            mode="markers",
            name="p_i",
            marker={"color": COLORS["positive"], "size": 8},
            customdata=order,
            hovertext=hover,
            hovertemplate="%{hovertext}<br>p = %{x:.3g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=nv[order] + cutoff_gap,
            y=labels,
            mode="markers",
            name="required p = n + κ·D",
            marker={
                "color": COLORS["cutoff"],
                "symbol": "line-ns-open",
                "size": 12,
                "line": {"width": 2},
            },
            customdata=order,
            hovertext=hover,
            hovertemplate="%{hovertext}<br>needs p ≥ %{x:.3g}<extra></extra>",
        )
    )
    _style(
        fig,
        f"Per-instance gaps p − n (cutoff κ·D = {cutoff_gap:.3g})",
        "projection w·a",
        "instance (sorted by gap)",
        height=max(300, 60 + 16 * len(pv)),
    )
    fig.update_yaxes(
        type="category",
        categoryorder="array",
        categoryarray=labels,
        dtick=1 if len(labels) <= 60 else None,
        tickfont={"size": 10},
    )
    return fig


# --------------------------------------------------------------------------------------------
# agents stage


def subbehaviour_tree(
    behaviour: str,
    names: list[str],
    contributions: list[float],
    kept: list[bool],
    rationales: list[str],
    provenance: list[str] | None = None,
    descriptions: list[str] | None = None,
) -> go.Figure:
    """Treemap behaviour -> sub-behaviours; area and colour encode the contribution c_k.

    Kept sub-behaviours are coloured on a blue scale by c_k (0..10); discarded ones are grey
    (:data:`COLORS` ``["muted"]``). A zero contribution still gets a sliver (area 0.25) so that
    every sub-behaviour stays visible.

    Args:
        behaviour: The behaviour name (root node).
        names: K sub-behaviour names.
        contributions: K contributions c_k in [0, 10].
        kept: K bools; False for discarded sub-behaviours (c_k below the threshold).
        rationales: K one-line rationales from Agent-2 (shown on hover).
        provenance: Optional K strings (backend / model / call id).
        descriptions: Optional K one-sentence descriptions from Agent-1.

    Returns:
        One ``go.Treemap`` trace; ``marker.colors[0]`` is the root, then one colour per
        sub-behaviour; ``customdata`` is the sub-behaviour index (-1 for the root).
    """
    k = len(names)
    _check_len(
        k,
        contributions=contributions,
        kept=kept,
        rationales=rationales,
        provenance=provenance,
        descriptions=descriptions,
    )
    contrib = np.asarray(contributions, dtype=float)
    keep = np.asarray(kept, dtype=bool)
    kept_colors = sample_colorscale(_CONTRIBUTION_SCALE, list(0.25 + 0.75 * np.clip(contrib, 0, 10) / 10)) if k else []
    colors = [COLORS["root"]] + [kept_colors[i] if keep[i] else COLORS["muted"] for i in range(k)]
    hover = [f"<b>{_hover(behaviour)}</b><br>{k} sub-behaviours, {int(keep.sum())} kept"]
    text = [""]
    for i in range(k):
        status = "kept" if keep[i] else "discarded"
        parts = [f"<b>{_hover(names[i])}</b> — c = {contrib[i]:.1f} ({status})"]
        if descriptions is not None:
            parts.append(_hover(descriptions[i]))
        parts.append(f"<i>rationale:</i> {_hover(rationales[i])}")
        if provenance is not None:
            parts.append(f"<i>source:</i> {_hover(provenance[i])}")
        hover.append("<br>".join(parts))
        text.append(f"c = {contrib[i]:.1f}" + ("" if keep[i] else " (discarded)"))
    fig = go.Figure(
        go.Treemap(
            ids=["root"] + [f"sub-{i}" for i in range(k)],
            labels=[str(behaviour)] + [str(s) for s in names],
            parents=[""] + ["root"] * k,
            values=[0.0] + [max(float(c), 0.25) for c in contrib],
            branchvalues="remainder",
            marker={"colors": colors, "line": {"color": "white", "width": 2}},
            text=text,
            texttemplate="<b>%{label}</b><br>%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            customdata=np.arange(-1, k),
            root={"color": COLORS["root"]},
            sort=True,
        )
    )
    return _style(
        fig,
        f"Sub-behaviours of “{html.escape(str(behaviour))}” — {int(keep.sum())}/{k} kept "
        "(size and colour = contribution c_k)",
        "",
        "",
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )


def relevance_heatmap(
    scores: np.ndarray,
    ids: list[str],
    sub_names: list[str],
    hover_text: list[str] | None = None,
) -> go.Figure:
    """Agent-3 relevance scores s_ik: instances (rows) x kept sub-behaviours (columns), 0..10.

    Args:
        scores: [N, K] relevance scores in [0, 10].
        ids: N instance ids (row labels).
        sub_names: K sub-behaviour names (column labels).
        hover_text: Optional N instance texts shown on hover.

    Returns:
        One ``go.Heatmap`` (zmin 0, zmax 10) whose ``customdata`` [N, K] holds the row
        (instance) index of every cell.
    """
    z = np.asarray(scores, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"scores must have shape [N, K], got {z.shape}")
    n_rows, n_cols = z.shape
    _check_len(n_rows, ids=ids, hover_text=hover_text)
    _check_len(n_cols, sub_names=sub_names)
    row_hover = [
        f"<b>{_hover(ids[i])}</b>" + (f"<br>{_hover(hover_text[i])}" if hover_text is not None else "")
        for i in range(n_rows)
    ]
    hover = [[row_hover[i]] * n_cols for i in range(n_rows)]
    small = n_rows * n_cols <= 400
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(s) for s in sub_names],
            y=[str(i) for i in ids],
            zmin=0,
            zmax=10,
            colorscale=_RELEVANCE_SCALE,
            colorbar={"title": {"text": "s_ik"}},
            customdata=np.repeat(np.arange(n_rows)[:, None], n_cols, axis=1),
            hovertext=hover,
            hovertemplate="%{hovertext}<br>%{x}: s = %{z:.1f}<extra></extra>",
            texttemplate="%{z:.0f}" if small else None,
            xgap=1,
            ygap=1,
        )
    )
    _style(
        fig,
        "Relevance of each eligible instance to each sub-behaviour (Agent-3, 0–10)",
        "sub-behaviour",
        "instance",
        height=max(300, 120 + 18 * n_rows),
    )
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(type="category", tickangle=-30)
    return fig


# --------------------------------------------------------------------------------------------
# weighting stage


def weight_heatmap(
    temperatures: np.ndarray,
    weights: np.ndarray,
    ids: list[str],
    current_t: float | None = None,
) -> go.Figure:
    """Instance weights w_i(t) = softmax(s_i / t) across temperatures.

    Args:
        temperatures: [T] positive temperatures.
        weights: [T, N] weights, one row per temperature.
        ids: N instance ids.
        current_t: The temperature selected in the app. When given, the instances are sorted by
            their weight at the temperature closest to it (largest first) and a horizontal line
            marks y = log10(current_t); otherwise the given order is kept.

    Returns:
        One ``go.Heatmap`` with y = log10 t; ``customdata`` [T, N] holds the original instance
        index of every cell.
    """
    temps = _vector("temperatures", temperatures)
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape[0] != temps.size:
        raise ValueError(f"weights must have shape [T={temps.size}, N], got {w.shape}")
    if np.any(temps <= 0):
        raise ValueError("temperatures must be > 0")
    _check_len(w.shape[1], ids=ids)
    if current_t is not None and temps.size:
        row = int(np.argmin(np.abs(np.log10(temps) - math.log10(current_t))))
        order = np.argsort(-w[row], kind="stable")
        sort_note = f"sorted by weight at t = {temps[row]:.3g}"
    else:
        order = np.arange(w.shape[1])
        sort_note = "given order"
    labels = [str(ids[i]) for i in order]
    fig = go.Figure(
        go.Heatmap(
            z=w[:, order],
            x=labels,
            y=np.log10(temps),
            colorscale=_WEIGHT_SCALE,
            zmin=0.0,
            colorbar={"title": {"text": "w_i"}},
            customdata=np.repeat(order[None, :], temps.size, axis=0),
            hovertemplate="%{x}<br>log10 t = %{y:.2f}<br>w = %{z:.4f}<extra></extra>",
        )
    )
    if current_t is not None:
        fig.add_hline(
            y=math.log10(current_t),
            line={"color": COLORS["cutoff"], "width": 2, "dash": "dash"},
            annotation_text=f"t = {current_t:.3g}",
            annotation_position="top right",
        )
    _style(
        fig,
        "Instance weights w_i = softmax(s_i / t) across temperatures",
        f"instance ({sort_note})",
        "log10 t",
    )
    fig.update_xaxes(type="category", showticklabels=len(labels) <= 60, tickangle=-45)
    return fig


def weight_bars(weights: np.ndarray, ids: list[str], top: int = 15) -> go.Figure:
    """Horizontal bars of the ``top`` highest and ``top`` lowest weights.

    With N <= 2 * top every instance is shown (split in a higher and a lower half).

    Args:
        weights: [N] instance weights (sum 1 over the eligible instances).
        ids: N instance ids.
        top: How many of the highest (and of the lowest) weights to show.

    Returns:
        Two ``go.Bar`` traces ("highest", "lowest"), ``customdata`` = instance index, and a dotted
        vertical line at the uniform weight 1/N.
    """
    w = _vector("weights", weights)
    _check_len(len(w), ids=ids)
    if top < 1:
        raise ValueError("top must be >= 1")
    order = np.argsort(-w, kind="stable")
    n_high = min(top, math.ceil(len(w) / 2))
    high = order[:n_high]
    low = order[n_high:][-top:]
    fig = go.Figure()
    for name, rows, color in (
        ("highest", high, COLORS["positive"]),
        ("lowest", low, COLORS["negative"]),
    ):
        fig.add_trace(
            go.Bar(
                x=w[rows],
                y=[str(ids[i]) for i in rows],
                orientation="h",
                name=name,
                marker={"color": color},
                customdata=rows,
                hovertext=[f"<b>{_hover(ids[i])}</b>" for i in rows],
                hovertemplate="%{hovertext}<br>w = %{x:.4f}<extra></extra>",
            )
        )
    if len(w):
        fig.add_vline(
            x=1.0 / len(w),
            line={"dash": "dot", "color": COLORS["reference"]},
            annotation_text="uniform 1/N",
            annotation_position="top right",
        )
    labels = [str(ids[i]) for i in np.concatenate([high, low])]
    _style(
        fig,
        f"Highest and lowest instance weights (of {len(w)})",
        "weight w_i",
        "instance",
        height=max(300, 100 + 18 * len(labels)),
    )
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels[::-1])
    return fig


# --------------------------------------------------------------------------------------------
# evaluation stage


def _line_groups(
    fig: go.Figure,
    df: pd.DataFrame,
    x: str,
    group_cols: list[str],
    default_name: str,
) -> None:
    """Add one line (with optional ``std`` error bars) per group of ``df`` to ``fig``."""
    with_std = _has_std(df)
    groups = df.groupby(group_cols, sort=True, dropna=False) if group_cols else [((), df)]
    for key, part in groups:
        key_tuple = key if isinstance(key, tuple) else (key,)
        labels = dict(zip(group_cols, key_tuple, strict=True))
        parts = []
        if "method" in labels:
            parts.append(str(labels["method"]))
        if "alpha" in labels:
            parts.append(f"α={labels['alpha']:+g}")
        name = ", ".join(parts) or default_name
        part = part.sort_values(x)
        if "method" in labels:
            color: str | None = method_color(str(labels["method"]))
        elif "alpha" in labels:
            color = COLORS["positive"] if float(labels["alpha"]) >= 0 else COLORS["negative"]
        else:
            color = None
        dash = None
        if "alpha" in labels and "method" in labels:
            dash = "dash" if float(labels["alpha"]) < 0 else "solid"
        fig.add_trace(
            go.Scatter(
                x=part[x].to_numpy(),
                y=part["alignment"].to_numpy(dtype=float),
                mode="lines+markers",
                name=name,
                line={"color": color, "dash": dash},
                error_y=(
                    {
                        "type": "data",
                        "array": part["std"].fillna(0).to_numpy(dtype=float),
                        "visible": True,
                    }
                    if with_std
                    else None
                ),
                customdata=part.index.to_numpy(),
                hovertemplate=f"{html.escape(name)}<br>{x} = %{{x}}<br>alignment = %{{y:.3f}}<extra></extra>",
            )
        )


def alignment_vs_alpha(df: pd.DataFrame) -> go.Figure:
    """Behaviour alignment P(y+) against the steering multiplier alpha, one line per method.

    Args:
        df: Columns ``method``, ``alpha``, ``alignment`` and optionally ``std`` (error bars).

    Returns:
        One scatter trace per method (``customdata`` = the DataFrame index of each point), y range
        [0, 1] and a dotted 0.5 line.
    """
    _require_columns(df, ["method", "alpha", "alignment"], "alignment_vs_alpha")
    fig = go.Figure()
    _line_groups(fig, df, "alpha", ["method"], "alignment")
    _chance_line(fig)
    _style(
        fig,
        "Behaviour alignment vs steering multiplier α",
        "steering multiplier α",
        "behaviour alignment P(y+)",
    )
    fig.update_yaxes(range=[0, 1])
    return fig


def layer_sweep(df: pd.DataFrame) -> go.Figure:
    """Behaviour alignment per steered layer.

    Args:
        df: Columns ``layer``, ``alignment``; optionally ``method``, ``alpha``, ``std``. One line
            per (method, alpha) combination present.

    Returns:
        One scatter trace per group, y range [0, 1], a dotted 0.5 line, x-title "layer".
    """
    _require_columns(df, ["layer", "alignment"], "layer_sweep")
    groups = [c for c in ("method", "alpha") if c in df.columns]
    fig = go.Figure()
    _line_groups(fig, df, "layer", groups, "alignment")
    _chance_line(fig)
    _style(fig, "Behaviour alignment by steered layer", "layer", "behaviour alignment P(y+)")
    fig.update_yaxes(range=[0, 1])
    fig.update_xaxes(dtick=1 if df["layer"].nunique() <= 16 else None)
    return fig


def temperature_sweep(df: pd.DataFrame) -> go.Figure:
    """Behaviour alignment against the softmax temperature t (log x axis).

    Args:
        df: Columns ``temperature`` (> 0), ``alignment``; optionally ``alpha``, ``method``,
            ``std``. One line per (method, alpha) combination present.

    Returns:
        One scatter trace per group, log-x, y range [0, 1], a dotted 0.5 line.
    """
    _require_columns(df, ["temperature", "alignment"], "temperature_sweep")
    groups = [c for c in ("method", "alpha") if c in df.columns]
    fig = go.Figure()
    _line_groups(fig, df, "temperature", groups, "alignment")
    _chance_line(fig)
    _style(
        fig,
        "Behaviour alignment vs softmax temperature t",
        "temperature t (log scale)",
        "behaviour alignment P(y+)",
    )
    fig.update_xaxes(type="log")
    fig.update_yaxes(range=[0, 1])
    return fig


def cosine_matrix(names: list[str], matrix: np.ndarray) -> go.Figure:
    """Annotated cosine-similarity matrix between steering vectors (diverging, -1..1).

    Args:
        names: M vector names (e.g. methods or layers).
        matrix: [M, M] cosine similarities.

    Returns:
        One ``go.Heatmap`` with zmin -1, zmax 1, zmid 0, each cell annotated with its value.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square [M, M], got {m.shape}")
    _check_len(m.shape[0], names=names)
    labels = [str(s) for s in names]
    fig = go.Figure(
        go.Heatmap(
            z=m,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            zmid=0,
            colorscale=_COSINE_SCALE,
            texttemplate="%{z:.2f}",
            colorbar={"title": {"text": "cos"}},
            hovertemplate="cos(%{y}, %{x}) = %{z:.3f}<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    _style(
        fig,
        "Cosine similarity between steering vectors",
        "vector",
        "vector",
        height=max(300, 150 + 40 * len(labels)),
    )
    fig.update_xaxes(type="category", showgrid=False)
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    return fig
