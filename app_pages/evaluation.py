"""Evaluation: alignment vs alpha per method on held-out pairs, layer and temperature sweeps,
a Table-1-style summary, the cosine matrix of the vectors, and downloads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from saas import annotated, evaluation, explore, figures
from saas.data import Instance
from saas.steering import cosine_matrix, match_norms
from saas_app import artifacts, resources
from saas_app.ui import label, model_lock, progress_bar, require_result, require_run, show_error

st.header("Evaluation")
run = require_run()
p = run.prepared
res = require_result(run)
ss = st.session_state
kind = p.dataset.answer_kind
metric = ("likelihood preference sigmoid(mean log p(y+) - mean log p(y-))" if kind == "sentence"
          else "P(y+) / (P(y+) + P(y-)) at the answer, with the mass P(y+) + P(y-) beside it")
st.caption(f"Behaviour alignment = {metric}. Steering covers the last prompt token and the answer tokens.")
cap = st.number_input("Pairs per evaluation (at most; fewer is faster)", min_value=1, value=len(p.dataset), step=1,
                      key="ev_cap", help="Each sweep uses the first pairs of its split, up to this many.")


sig = (run.key, run.scores_key, res.layer, float(ss["kappa"]), ss["axis"], ss["shrinkage"], res.projection.consistency,
       res.temperature, int(cap))


def held_out(split: str) -> list[Instance]:
    """The split's pairs to evaluate on: the clean ones on annotated data, then the first ``cap``."""
    insts = p.instances(split)
    keep, _ = annotated.evaluation_pairs(insts)
    return [insts[k] for k in keep][: int(cap)]


def pairs_used(split: str) -> str:
    keep, used = annotated.evaluation_pairs(p.instances(split))
    return used + (f", first {int(cap)}" if int(cap) < len(keep) else "")


def run_sweep(name: str, fn: Callable[..., pd.DataFrame], *args: Any, **kw: Any) -> bool:
    """Run one sweep under the model lock with a progress bar; keep its table in the session.
    Returns whether it ran (a failure shows its message and keeps the previous table as it was)."""
    bar = progress_bar()
    try:
        with model_lock():
            df = fn(*args, progress=bar, **kw)
    except Exception as exc:
        show_error(exc)
        return False
    finally:
        bar.clear()
    ss["evaluation"][name] = {"df": df, "sig": sig}
    return True


def stored(name: str) -> pd.DataFrame | None:
    got = ss["evaluation"].get(name)
    if got is not None and got["sig"] != sig:
        st.caption("Computed at other settings (layer, kappa, t or edits): press the button to update.")
    return None if got is None else got["df"]


st.subheader("Alignment vs alpha on held-out pairs")
c1, c2, c3 = st.columns([3, 2, 1])
methods = c1.multiselect("Methods", list(res.vectors), format_func=label, key="ev_methods",
                         default=[m for m in ("caa", "saas", "uniform-eligible") if m in res.vectors])
alphas = c2.multiselect("alpha", [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], default=[-1.0, 0.0, 1.0], key="ev_alphas")
split = c3.radio("Split", ["test", "val"], key="ev_split", help="7:2:1 train / val / test")
norm = st.checkbox("Norm-matched: rescale every vector to CAA's norm at this layer", key="ev_norm",
                   help="alpha multiplies each vector as extracted, and the methods' vectors differ in length "
                        "(|SAAS| / |CAA| = " + (f"{res.vectors['saas'].norm() / res.vectors['caa'].norm():.2f}"
                                                if "saas" in res.vectors else "n/a") + "); norm-matched, only the "
                        "directions differ.")
if st.button("Run the alpha sweep", type="primary", key="ev_alpha_go", disabled=not methods or not alphas):
    chosen = {m: res.vectors[m] for m in methods}
    if norm:
        chosen = {m: v for m, v in match_norms({**chosen, "caa": res.vectors["caa"]}).items() if m in chosen}
    if run_sweep("alpha", evaluation.alpha_sweep, p.lm, held_out(split), kind, chosen, sorted(alphas)):
        ss["evaluation"]["alpha"]["norm"] = norm  # only on the table this sweep just stored
st.caption(f"Pairs used from the {split} split: {pairs_used(split)}.")
df = stored("alpha")
if df is not None:
    if ss["evaluation"]["alpha"].get("norm"):
        st.caption("Norm-matched: every vector at CAA's norm.")
    st.plotly_chart(figures.alignment_vs_alpha(df.assign(method=df["method"].map(label))), width="stretch",
                    key="ev_alpha_fig")
    st.markdown("**Table 1 style**: alignment per method and alpha; delta = largest minus smallest alpha.")
    table = explore.table1(df, {m: label(m) for m in df["method"].unique()})
    st.dataframe(table.dropna(axis=1, how="all"), hide_index=True, key="ev_table1")  # no mass for sentences

left, right = st.columns(2)
with left:
    st.subheader("Layer sweep (CAA, validation split)")
    n = p.acts.n_layers
    layers = st.multiselect("Layers", list(range(n)), default=explore.sweep_layers(n), key="ev_layers")
    if st.button("Run the layer sweep", key="ev_layer_go", disabled=not layers):
        run_sweep("layer", evaluation.layer_sweep, p.lm, p.acts, held_out("val"), kind, p.train, sorted(layers))
    df = stored("layer")
    if df is not None and len(df):
        st.plotly_chart(figures.layer_sweep(df), width="stretch", key="ev_layer_fig")
        st.caption(f"Best layer by alignment(+1) - alignment(-1): {evaluation.best_layer(df)}")
with right:
    st.subheader("Temperature sweep (SAAS, validation split)")
    lo, hi, _ = explore.temperature_range(None if p.importance is None else p.importance[p.train])
    count = st.slider("Temperatures", 2, 9, 5, key="ev_temp_count")
    temps = explore.sweep_temperatures(lo, hi, count)
    st.caption("Temperatures: " + ", ".join(f"{t:.3g}" for t in temps) + f" at layer {res.layer}.")
    if st.button("Run the temperature sweep", key="ev_temp_go", disabled=res.eligibility.empty):
        diffs, imp, elig = explore.sweep_inputs(p, res)
        run_sweep("temperature", evaluation.temperature_sweep, p.lm, held_out("val"), kind, diffs, imp, elig,
                  res.layer, temps)
    df = stored("temperature")
    if df is not None and len(df):
        st.plotly_chart(figures.temperature_sweep(df), width="stretch", key="ev_temp_fig")
        st.caption(f"Best temperature: {evaluation.best_temperature(df):.3g}")

st.subheader("Cosine similarity between the methods' vectors")


def cosines() -> go.Figure:
    names, mat = cosine_matrix(res.vectors)
    return figures.cosine_matrix([label(m) for m in names], mat)


st.plotly_chart(resources.figure("cosine", (explore.vectors_key(res.vectors),), cosines), width="stretch",
                key="ev_cosine")

st.subheader("Downloads")
d1, d2, d3, d4 = st.columns(4)
pick = d1.selectbox("Vector", list(res.vectors), index=list(res.vectors).index("saas") if "saas" in res.vectors else 0,
                    format_func=label, key="ev_dl_method")
vec = res.vectors[pick]
stem = f"{p.dataset.name}-{pick}-layer{res.layer}"
d2.download_button("Vector (safetensors + JSON)", data=lambda: artifacts.vector_zip(vec, stem), file_name=f"{stem}.zip",
                   mime="application/zip", key="ev_dl_vec")
d3.download_button("GGUF control vector", data=lambda: artifacts.vector_gguf(vec, stem), file_name=f"{stem}.gguf",
                   mime="application/octet-stream", key="ev_dl_gguf", disabled=res.layer == 0,
                   help="llama.cpp: --control-vector-scaled FILE ALPHA (layer 0 cannot be exported)")
d4.download_button("Run bundle (zip)", data=lambda: artifacts.run_bundle(p, res, ss["shrinkage"]), file_name=f"saas-run-{stem}.zip",
                   mime="application/zip", key="ev_dl_run")

saved = artifacts.saved_figures()
if saved:
    with st.expander(f"Figures saved by `saas reproduce` ({sum(map(len, saved.values()))} in results/)"):
        folder = st.selectbox("Run", list(saved), key="ev_saved_run")
        for k, path in enumerate(saved[folder]):
            try:
                st.plotly_chart(artifacts.load_figure(path), width="stretch", key=f"ev_saved_{k}")
            except Exception as exc:
                st.caption(f"{path.name}: not a plotly figure ({type(exc).__name__})")
