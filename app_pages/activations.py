"""Activations: the dataset, a 2-D map of the activations, and per-layer statistics to choose the layer."""

from __future__ import annotations

import streamlit as st

from saas import annotated, explore, figures
from saas_app import resources, state
from saas_app.ui import instance_card, labels, layer_overview, require_result, require_run

st.header("Activations")
run = require_run()
p = run.prepared
layer = state.layer(run)
res = require_result(run)
train = p.instances("train")

with st.expander(f"Dataset: {p.dataset.name} ({len(p.dataset)} pairs, {p.dataset.answer_kind} answers)", expanded=False):
    st.caption(p.dataset.description)
    st.dataframe(explore.instance_frame(p.dataset, p.split), hide_index=True, height=300, key="act_dataset")


@st.fragment
def activation_map() -> None:
    c1, c2 = st.columns([1, 2])
    method = c1.radio("Map", explore.MAP_METHODS, horizontal=True, key="act_map_method",
                      help="PCA is instant; UMAP takes ~20 s the first time in a process and is then cached.")
    colour = "eligibility"
    if annotated.is_annotated(train):
        colour = c2.radio("Colour by", ["eligibility", "annotation"], horizontal=True, key="act_colour",
                          format_func=labels({"eligibility": "answer side and eligibility",
                                              "annotation": f"annotated quality ({annotated.NOTE})"})) or colour
    done = st.session_state.setdefault("umap_done", set())
    if method == "UMAP" and (run.key, layer) not in done:
        if not st.button("Compute the UMAP map", key="act_umap"):
            st.info("UMAP runs on request: press the button (about 20 s the first time).")
            return
        with st.spinner("Fitting UMAP..."):
            resources.map_coordinates(run.key, layer, "UMAP", p)
        done.add((run.key, layer))
    coords = resources.map_coordinates(run.key, layer, method, p)
    rows = explore.map_rows(train, res.eligibility.eligible)
    quality = rows.quality if colour == "annotation" else None
    fig = resources.figure("map", (run.key, layer, method, explore.array_key(rows.eligible), colour),
                           lambda: figures.activation_map(coords, rows.is_positive, rows.eligible, rows.ids,
                                                          method=method, hover=rows.hover, quality=quality))
    event = st.plotly_chart(fig, width="stretch", key="act_map", on_select="rerun", selection_mode="points")
    st.caption(f"Training split ({len(train)} pairs, {2 * len(train)} points) at layer {layer}; "
               "eligibility at the current kappa. Select a point to read its pair.")
    picked = explore.selected_point(event.selection.points if event else None)
    if picked is not None:
        instance_card(train[explore.map_row_instance(picked, len(train))], "(selected on the map)")


activation_map()

st.subheader("Per-layer statistics")
fig, best, stats = layer_overview(run, layer)
st.plotly_chart(fig, width="stretch", key="act_layers")
st.caption(
    f"Suggested layer {best}: the largest standardized separation mean(g)/std(g) of the pairs' gaps on the "
    "mean-difference direction (it does not overfit the way the Fisher separation does when d > N). "
    "Choose the layer in the sidebar."
)
with st.expander("Table"):
    st.dataframe(stats, hide_index=True, key="act_layer_table")
