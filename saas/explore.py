"""Numbers behind the explorer's views: 2-D maps, per-layer statistics, weight views, tables.

Everything here is pure (numpy / pandas / scikit-learn, no streamlit, no plotting): the app's pages
call these functions and hand the results to the figure builders in :mod:`saas.figures`. Nothing
here runs the language model; every function works on cached activations or on results of
:func:`saas.pipeline.compute`.

Conventions: "training split" arrays are in the order of ``Prepared.split["train"]`` (the order
:func:`saas.pipeline.compute` uses); 2-D maps stack the positive rows first, then the negative rows,
so row ``r`` of a map belongs to instance ``r % N``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from saas.data import BehaviourDataset, Instance
from saas.eligibility import EligibilityError, EligibilityResult, Projection, apply_cutoff, project
from saas.weighting import weights_over_temperatures

if TYPE_CHECKING:
    from saas.agents import AgentRun, Overlay, SubBehaviour
    from saas.steering import SteeringVector

MAP_METHODS = ("PCA", "UMAP")

# --------------------------------------------------------------------------------------------
# 2-D maps of activations
# --------------------------------------------------------------------------------------------


def map_coordinates(pos: np.ndarray, neg: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """Project the 2N activations of one layer to 2-D.

    Args:
        pos: [N, d] positive activations a_i+.
        neg: [N, d] negative activations a_i-.
        method: ``"PCA"`` (scikit-learn, centred, ~0.05 s) or ``"UMAP"`` (umap-learn; the first fit
            in a process takes ~20 s on this machine, so callers cache it).
        seed: Random state of UMAP (PCA is deterministic).

    Returns:
        [2N, 2] float64 coordinates: rows 0..N-1 are the positives, N..2N-1 the negatives.
    """
    x = np.concatenate([np.asarray(pos), np.asarray(neg)]).astype(np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"need at least 2 instances of [N, d] activations, got {np.shape(pos)}")
    if method.upper() == "PCA":
        from sklearn.decomposition import PCA

        k = min(2, x.shape[0], x.shape[1])
        coords = PCA(n_components=k, svd_solver="full").fit_transform(x)
    elif method.upper() == "UMAP":
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, x.shape[0] - 1), random_state=seed, n_jobs=1)
        coords = np.asarray(reducer.fit_transform(x), dtype=np.float64)
    else:
        raise ValueError(f"unknown map method {method!r}: use one of {MAP_METHODS}")
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


@dataclass(frozen=True)
class MapRows:
    """Per-row labels of a 2-D map (positives first, then negatives).

    Attributes:
        is_positive: [2N] bool.
        eligible: [2N] bool, the eligibility of the row's instance.
        ids: 2N instance ids.
        hover: 2N texts "prompt -> answer".
    """

    is_positive: np.ndarray
    eligible: np.ndarray
    ids: list[str]
    hover: list[str]
    quality: list[str] | None = None


def map_rows(instances: Sequence[Instance], eligible: np.ndarray) -> MapRows:
    """Labels for :func:`map_coordinates`' rows, for :func:`saas.figures.activation_map`.

    ``quality`` holds each row's annotated quality when the instances are annotated (else None)."""
    from saas.annotated import is_annotated, qualities

    n = len(instances)
    elig = np.asarray(eligible, dtype=bool)
    if elig.shape != (n,):
        raise ValueError(f"eligible must be [N={n}], got {elig.shape}")
    ids = [i.id for i in instances]
    hover = [f"{i.prompt}\n-> (+) {i.positive}" for i in instances] + [f"{i.prompt}\n-> (-) {i.negative}" for i in instances]
    quality = qualities(instances) * 2 if is_annotated(instances) else None
    return MapRows(np.repeat([True, False], n), np.concatenate([elig, elig]), ids + ids, hover, quality)


def map_row_instance(row: int, n: int) -> int:
    """The instance (0..N-1) a map row (0..2N-1) belongs to."""
    if not 0 <= row < 2 * n:
        raise IndexError(f"row {row} outside a map of {2 * n} rows")
    return int(row % n)


# --------------------------------------------------------------------------------------------
# per-layer statistics (to choose the layer)
# --------------------------------------------------------------------------------------------


def standardized_separation(pos: np.ndarray, neg: np.ndarray) -> float:
    """mean(g) / std(g) of the gaps g_i = u . v_i on the unit mean-difference direction u.

    A signal-to-noise ratio of the behaviour direction at one layer: how far the average pair is
    separated compared with how much the pairs disagree. It needs no matrix solve, so (unlike the
    Fisher separation, which is near-perfect on training data whenever d > N) it does not overfit.
    """
    diffs = np.asarray(pos, dtype=np.float64) - np.asarray(neg, dtype=np.float64)
    vbar = diffs.mean(axis=0)
    norm = float(np.sqrt(vbar @ vbar))
    if norm == 0.0:
        return 0.0
    g = diffs @ (vbar / norm)
    sd = float(g.std())
    return float(g.mean() / sd) if sd > 0 else math.inf


def layer_projections(
    positive: np.ndarray,
    negative: np.ndarray,
    train: Sequence[int] | np.ndarray,
    axis: str = "fisher",
    shrinkage: str | float = "ledoit-wolf",
    consistency: str = "mean",
    groups: Sequence[str] | None = None,
) -> list[Projection | str]:
    """The projection of the training instances at every layer (the solves a kappa change reuses).

    Returns:
        One entry per layer: a :class:`~saas.eligibility.Projection`, or the message of the
        :class:`~saas.eligibility.EligibilityError` that made the layer unprojectable.
    """
    idx = np.asarray(train, dtype=int)
    out: list[Projection | str] = []
    for layer in range(positive.shape[1]):
        try:
            out.append(project(positive[idx, layer], negative[idx, layer], axis=axis,  # type: ignore[arg-type]
                               shrinkage=shrinkage, consistency=consistency, groups=groups))  # type: ignore[arg-type]
        except EligibilityError as exc:
            out.append(str(exc))
    return out


def layer_stats(
    positive: np.ndarray,
    negative: np.ndarray,
    train: Sequence[int],
    kappa: float = 0.5,
    axis: str = "fisher",
    shrinkage: str | float = "ledoit-wolf",
    projections: Sequence[Projection | str] | None = None,
) -> pd.DataFrame:
    """Separation D, eligible fraction and CAA norm of the training instances at every layer.

    Args:
        positive: [N, L, d] a_i+ for every layer (``ActivationSet.positive``).
        negative: [N, L, d] a_i-.
        train: Indices of the training instances.
        kappa, axis, shrinkage: The eligibility settings (as in :func:`saas.eligibility.project`).
        projections: :func:`layer_projections` for these settings, to skip the solves.

    Returns:
        One row per layer: ``layer``, ``D`` (mean separation on the axis), ``eligible_fraction``,
        ``caa_norm`` (||mean_i v_i||), ``snr`` (:func:`standardized_separation`) and ``error``
        (why a layer could not be projected, else "").
    """
    idx = np.asarray(train, dtype=int)
    if projections is None:
        projections = layer_projections(positive, negative, idx, axis, shrinkage)
    rows = []
    for layer, proj in enumerate(projections):
        pos, neg = positive[idx, layer], negative[idx, layer]
        caa_norm = float(np.sqrt(np.square((pos.astype(np.float64) - neg).mean(axis=0)).sum()))
        if isinstance(proj, str):
            d_sep, frac, err = float("nan"), 0.0, proj
        else:
            d_sep, frac, err = float(proj.D), float(np.mean(apply_cutoff(proj, kappa).eligible)), ""
        rows.append({"layer": layer, "D": d_sep, "eligible_fraction": frac, "caa_norm": caa_norm,
                     "snr": standardized_separation(pos, neg), "error": err})
    return pd.DataFrame(rows, columns=["layer", "D", "eligible_fraction", "caa_norm", "snr", "error"])


def suggest_layer(stats: pd.DataFrame) -> int:
    """The layer with the largest standardized separation (``snr``) among the projectable layers."""
    ok = stats[(stats["error"] == "") & np.isfinite(stats["snr"])]
    if ok.empty:
        raise ValueError("no layer has a finite separation")
    return int(ok.loc[ok["snr"].idxmax(), "layer"])


# --------------------------------------------------------------------------------------------
# tables of instances
# --------------------------------------------------------------------------------------------


def instance_frame(dataset: BehaviourDataset, split: Mapping[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """The dataset as a table: id, split (if given), prompt, positive, negative."""
    where = {int(i): name for name, idx in (split or {}).items() for i in idx}
    df = pd.DataFrame({
        "id": [i.id for i in dataset.instances],
        "prompt": [i.prompt for i in dataset.instances],
        "positive": [i.positive for i in dataset.instances],
        "negative": [i.negative for i in dataset.instances],
    })
    if split is not None:
        df.insert(1, "split", [where.get(k, "") for k in range(len(dataset))])
    return _with_annotation(df, dataset.instances, range(len(dataset)), at=len(df.columns))


def dataset_stats(dataset: BehaviourDataset) -> dict[str, Any]:
    """Size and text lengths (in words) of a dataset, for the overview."""
    def words(texts: list[str]) -> float:
        return float(np.mean([len(t.split()) for t in texts])) if texts else 0.0

    insts = dataset.instances
    return {
        "name": dataset.name,
        "instances": len(insts),
        "answer_kind": dataset.answer_kind,
        "prompt_words": words([i.prompt for i in insts]),
        "positive_words": words([i.positive for i in insts]),
        "negative_words": words([i.negative for i in insts]),
    }


ANNOTATION_COLUMN = "annotation (not used by the method)"


def _with_annotation(df: pd.DataFrame, instances: Sequence[Instance], rows: Sequence[int], at: int = 1) -> pd.DataFrame:
    """Insert the :data:`ANNOTATION_COLUMN` (quality · facet) when the instances are annotated."""
    from saas.annotated import annotation_labels, is_annotated

    if is_annotated(instances):
        labels = annotation_labels(instances)
        df.insert(at, ANNOTATION_COLUMN, [labels[int(k)] for k in rows])
    return df


def dropped_frame(elig: EligibilityResult, instances: Sequence[Instance],
                  steerability: np.ndarray | None = None) -> pd.DataFrame:
    """The instances eligibility dropped, with their reasons, gap, cosine and texts (and their
    annotation, when the dataset has one; and their steerability slope, when given: [N] in the
    order of ``instances``)."""
    keep = ~np.asarray(elig.eligible, dtype=bool)
    idx = np.flatnonzero(keep)
    df = pd.DataFrame({
        "id": [elig.ids[k] for k in idx],
        "reasons": ["; ".join(elig.reasons[k]) for k in idx],
        "gap": elig.gap[idx],
        "cutoff": np.full(idx.size, elig.cutoff),
        "cosine": elig.cosine[idx],
        "prompt": [instances[int(k)].prompt for k in idx],
        "positive": [instances[int(k)].positive for k in idx],
        "negative": [instances[int(k)].negative for k in idx],
    }, columns=["id", "reasons", "gap", "cutoff", "cosine", "prompt", "positive", "negative"])
    if steerability is not None:
        df.insert(5, "steerability", np.asarray(steerability, dtype=np.float64)[idx])
    return _with_annotation(df, instances, idx.tolist())


def selected_point(points: Sequence[Mapping[str, Any]] | None) -> int | None:
    """The ``customdata`` index of the first selected plotly point (None when nothing is selected).

    The figure builders put the point's index in ``customdata``; plotly returns it as an int or as
    a one-element list.
    """
    for pt in points or []:
        cd = pt.get("customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is None:
            continue
        try:
            return int(cd)
        except (TypeError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------


def temperature_range(importance: np.ndarray | None, decades_below: float = 2.0, decades_above: float = 3.0) -> tuple[float, float, float]:
    """Bounds of a log10-temperature slider around the importance's natural scale.

    The reference is the spread (std) of the finite importance scores (1.0 when they are flat or
    absent): the slider runs from ``decades_below`` decades under it to ``decades_above`` over it.

    Returns:
        ``(lo, hi, ref)`` in log10 units, rounded to 0.1.
    """
    s = np.asarray(importance if importance is not None else [], dtype=np.float64)
    s = s[np.isfinite(s)]
    ref = float(s.std()) if s.size > 1 and s.std() > 1e-12 else 1.0
    r = round(math.log10(ref), 1)
    return round(r - decades_below, 1), round(r + decades_above, 1), r


def slider_log_t(t: float, lo: float, hi: float) -> float:
    """log10(t) rounded to 0.01 and clipped to the slider's range [lo, hi]."""
    return float(min(max(round(math.log10(t), 2), lo), hi)) if t > 0 else lo


def weight_grid(
    importance: np.ndarray, eligible: np.ndarray, ids: Sequence[str], log_lo: float, log_hi: float, n: int = 25
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Weights of the eligible instances over a log-spaced temperature grid (for a heatmap).

    Returns:
        ``(temperatures [T], weights [T, n_eligible], eligible ids)``.
    """
    elig = np.asarray(eligible, dtype=bool)
    temps = np.logspace(log_lo, log_hi, n)
    s = np.asarray(importance, dtype=np.float64)[elig]
    if s.size == 0:
        return temps, np.zeros((n, 0)), []
    w = weights_over_temperatures(s, temps)
    return temps, w, [i for i, e in zip(ids, elig) if e]


def top_bottom(
    weights: np.ndarray, eligible: np.ndarray, instances: Sequence[Instance], importance: np.ndarray, k: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``k`` highest- and ``k`` lowest-weighted eligible instances, with their texts."""
    w = np.asarray(weights, dtype=np.float64)
    idx = np.flatnonzero(np.asarray(eligible, dtype=bool))
    order = idx[np.argsort(-w[idx], kind="stable")]

    def frame(sel: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame({
            "id": [instances[j].id for j in sel], "weight": w[sel], "score": np.asarray(importance, dtype=np.float64)[sel],
            "prompt": [instances[j].prompt for j in sel], "positive": [instances[j].positive for j in sel],
            "negative": [instances[j].negative for j in sel],
        }, columns=["id", "weight", "score", "prompt", "positive", "negative"])
        return _with_annotation(df, instances, sel.tolist())

    k = max(0, min(k, order.size))
    return frame(order[:k]), frame(order[::-1][:k])


def instance_hover(inst: Instance) -> str:
    """Hover text of an instance: prompt, both answers, and its annotation when it has one."""
    note = " · ".join(p for p in (inst.quality, inst.facet) if p)
    text = f"{inst.prompt}\n(+) {inst.positive}\n(-) {inst.negative}"
    return text + (f"\nannotation (not used by the method): {note}" if note else "")


def relevance_view(run: AgentRun, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Agent-3's relevance s_ik of these instances for the kept sub-behaviours.

    Returns:
        ``(scores [len(ids), K'], names of the K' kept sub-behaviours)``; NaN where a cell was not
        scored.
    """
    kept = [s for s in run.subs if s.kept and s.id in run.table.sub_ids]
    row_of = {i: r for r, i in enumerate(run.table.ids)}
    out = np.full((len(ids), len(kept)), np.nan)
    for c, sub in enumerate(kept):
        col = run.table.column(sub.id)
        for r, i in enumerate(ids):
            if i in row_of:
                out[r, c] = col[row_of[i]]
    return out, [s.name for s in kept]


# --------------------------------------------------------------------------------------------
# sub-behaviour edits
# --------------------------------------------------------------------------------------------

SUB_COLUMNS = ("id", "name", "description", "contribution", "kept", "remove", "provenance", "rationale")


def subbehaviour_frame(subs: Sequence[SubBehaviour]) -> pd.DataFrame:
    """The sub-behaviours as an editable table (``remove`` starts False)."""
    return pd.DataFrame({
        "id": [s.id for s in subs], "name": [s.name for s in subs], "description": [s.description for s in subs],
        "contribution": [float(s.contribution) if s.contribution is not None else float("nan") for s in subs],
        "kept": [bool(s.kept) for s in subs], "remove": [False] * len(subs),
        "provenance": [s.provenance for s in subs], "rationale": [s.rationale for s in subs],
    }, columns=list(SUB_COLUMNS))


def overlay_from_edits(agent_subs: Sequence[SubBehaviour], base: Overlay | None, edited: pd.DataFrame) -> Overlay:
    """Turn an edited :func:`subbehaviour_frame` into an :class:`~saas.agents.Overlay`.

    Starts from a copy of ``base`` (the edits already in force) and records, per row, a changed
    name, description or contribution and the ``remove`` tick. Rows are matched by ``id``; the
    comparison is against the agents' own sub-behaviour (or the user-added one in ``base``), so an
    unchanged row adds nothing.
    """
    from saas.agents import Overlay

    ov = Overlay.from_dict(base.to_dict()) if base is not None else Overlay()
    current = {s.id: s for s in ov.apply(agent_subs)}
    for row in edited.to_dict("records"):
        sid = str(row["id"])
        sub = current.get(sid)
        if sub is None:
            continue
        if bool(row.get("remove", False)):
            ov.remove(sid)
            continue
        name, desc = str(row.get("name") or "").strip(), str(row.get("description") or "").strip()
        if name and name != sub.name:
            ov.rename(sid, name)
        if desc and desc != sub.description:
            ov.reword(sid, desc)
        c = row.get("contribution")
        if c is not None and np.isfinite(float(c)) and (sub.contribution is None or abs(float(c) - sub.contribution) > 1e-9):
            ov.set_contribution(sid, float(c))
    return ov


# --------------------------------------------------------------------------------------------
# evaluation tables
# --------------------------------------------------------------------------------------------


def table1(alpha_df: pd.DataFrame, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A Table-1-style summary of an alpha sweep: one row per method.

    Args:
        alpha_df: :func:`saas.evaluation.alpha_sweep`'s table (``method, alpha, alignment, mass``).
        labels: Display names of the methods.

    Returns:
        Columns ``method``, ``alpha=<a>`` for every alpha (the alignment probability), ``delta``
        (alignment at the largest alpha minus at the smallest) and ``mass`` (mean probability mass
        on the answers over the steered rows; NaN for sentence answers).
    """
    if alpha_df.empty:
        return pd.DataFrame(columns=["method", "delta", "mass"])
    piv = alpha_df.pivot_table(index="method", columns="alpha", values="alignment", sort=False)
    alphas = sorted(piv.columns)
    out = pd.DataFrame({"method": [(labels or {}).get(m, m) for m in piv.index]})
    for a in alphas:
        out[f"alpha={a:+g}"] = piv[a].to_numpy()
    out["delta"] = (piv[alphas[-1]] - piv[alphas[0]]).to_numpy()
    mass = alpha_df.groupby("method", sort=False)["mass"].mean()
    out["mass"] = [float(mass.get(m, np.nan)) for m in piv.index]
    return out


def vectors_key(vectors: Mapping[str, SteeringVector]) -> str:
    """Content hash of named steering vectors (names, layers and values)."""
    h = hashlib.sha256()
    for name in sorted(vectors):
        vec = vectors[name]
        for layer in vec.layers:
            h.update(f"{name}|{layer}|".encode())
            h.update(vec.numpy(layer).tobytes())
    return h.hexdigest()[:16]


def array_key(x: np.ndarray | None) -> str:
    """Content hash of an array (``"none"`` for None), e.g. of the importance scores."""
    if x is None:
        return "none"
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# overview
# --------------------------------------------------------------------------------------------


def run_summary(prepared: Any, result: Any) -> dict[str, Any]:
    """The numbers of the overview page for a :class:`~saas.pipeline.Prepared` and its
    :class:`~saas.pipeline.MethodResult`: sizes, eligibility, sub-behaviours, weights, vectors."""
    from saas.steering import cosine_matrix

    elig = result.eligibility
    run = prepared.agent_run
    out: dict[str, Any] = {
        "model": prepared.lm.name, "dataset": prepared.dataset.name, "instances": len(prepared.dataset),
        **{f"n_{k}": len(v) for k, v in prepared.split.items()},
        "layer": result.layer, "n_layers": prepared.acts.n_layers, "d": prepared.acts.d,
        "n_eligible": int(elig.counts.get("n_eligible", int(np.sum(elig.eligible)))),
        "n_not_separable": int(elig.counts.get("n_not_separable", 0)),
        "n_inconsistent": int(elig.counts.get("n_inconsistent", 0)),
        "D": float(elig.D), "kappa": float(elig.kappa), "cutoff": float(elig.cutoff),
        "subs": len(run.subs) if run is not None else 0, "kept_subs": len(run.kept) if run is not None else 0,
        "scores_source": prepared.scores_source, "temperature": float(result.temperature),
        "ess": float(result.summary.ess), "entropy": float(result.summary.entropy),
        "max_weight": float(result.summary.max_weight),
        "norms": {m: float(v.norm()) for m, v in result.vectors.items()},
    }
    if "saas" in result.vectors and "caa" in result.vectors:
        _, cos = cosine_matrix({"saas": result.vectors["saas"], "caa": result.vectors["caa"]})
        out["cos_saas_caa"] = float(cos[0, 1])
    else:
        out["cos_saas_caa"] = float("nan")
    return out


def sweep_inputs(prepared: Any, result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`saas.evaluation.temperature_sweep` needs at the result's layer: the training
    pairs' local vectors v_i [N, d], their importance s_i [N] (zeros without scores) and eligibility [N]."""
    diffs = prepared.acts.diffs(result.layer)[np.asarray(prepared.train, dtype=int)]
    return diffs, np.asarray(result.importance, dtype=np.float64), np.asarray(result.eligibility.eligible, dtype=bool)


def sweep_layers(n_layers: int, count: int = 6) -> list[int]:
    """About ``count`` evenly spaced layers, skipping the first and the last (a default layer sweep)."""
    if n_layers <= 2:
        return list(range(n_layers))
    grid = np.linspace(1, n_layers - 2, num=min(count, n_layers - 2))
    return sorted({int(round(x)) for x in grid})


def sweep_temperatures(log_lo: float, log_hi: float, count: int = 5) -> list[float]:
    """``count`` log-spaced temperatures over a slider range (log10 bounds)."""
    return [float(t) for t in np.logspace(log_lo, log_hi, count)]
