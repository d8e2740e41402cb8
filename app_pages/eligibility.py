"""Eligibility: the Fisher projection with the cutoff, the consistency test, and the dropped pairs."""

from __future__ import annotations

import streamlit as st

from saas import explore, figures
from saas_app.ui import bound, instance_card, require_run, result_or_error

AXES = {"fisher": "Fisher direction", "mean_diff": "Mean-difference direction"}

st.header("Eligibility")
run = require_run()
p = run.prepared
train = p.instances("train")
texts = [f"{i.prompt}\n(+) {i.positive}\n(-) {i.negative}" for i in train]


def shrinkage_setting() -> None:
    ss = st.session_state
    with st.expander("Covariance shrinkage (Fisher axis)"):
        ridge = isinstance(ss["shrinkage"], float)
        kind = st.radio("Estimate", ["Ledoit-Wolf", "ridge lambda x I"], index=int(ridge), horizontal=True,
                        key="elig_shrink_kind", help="S_w is singular when d > N: it is shrunk towards a multiple of I.")
        if kind == "Ledoit-Wolf":
            ss["shrinkage"] = "ledoit-wolf"
        else:
            lam = st.number_input("lambda", min_value=0.0, value=float(ss["shrinkage"]) if ridge else 1.0,
                                  step=0.1, format="%.3f", key="elig_lambda")
            ss["shrinkage"] = float(lam)


@st.fragment
def eligibility_panel() -> None:
    left, mid, right = st.columns([2, 2, 3])
    with left:
        bound(st.slider, "kappa (cutoff = kappa x D)", "kappa", min_value=0.0, max_value=2.0, step=0.05,
              help="A pair is separable iff its own gap p - n is at least kappa times the mean gap D.")
    with mid:
        bound(st.radio, "Projection axis", "axis", options=list(AXES), format_func=AXES.get, horizontal=True)
    with right:
        shrinkage_setting()
    res = result_or_error(run)
    if res is None:
        return
    el = res.eligibility
    cols = st.columns(5)
    cols[0].metric("Eligible", f"{el.counts['n_eligible']} / {el.counts['n_total']}")
    cols[1].metric("Not separable", el.counts["n_not_separable"])
    cols[2].metric("Inconsistent", el.counts["n_inconsistent"])
    cols[3].metric("Mean separation D", f"{el.D:.4g}")
    cols[4].metric("Cutoff kappa x D", f"{el.cutoff:.4g}")
    st.markdown(f"**Rule** (layer {res.layer}): {el.rule}")
    if el.empty:
        st.error(f"No pair is eligible: {el.message}\n\nLower kappa, switch the axis, or choose another layer "
                 "in the sidebar. SAAS has no vector until at least one pair is eligible.")
    reasons = ["; ".join(r) for r in el.reasons]
    view = st.radio("View", ["Scatter n vs p", "Sorted gaps"], horizontal=True, key="elig_view",
                    label_visibility="collapsed")
    event = None
    if view == "Scatter n vs p":
        fig = figures.eligibility_scatter(el.p, el.n, el.eligible, reasons, el.kappa, el.D, el.ids, hover=texts,
                                          axis_label="Fisher" if el.axis == "fisher" else "mean-difference")
        event = st.plotly_chart(fig, width="stretch", key="elig_scatter", on_select="rerun", selection_mode="points")
    else:
        st.plotly_chart(figures.gap_dumbbells(el.p, el.n, el.eligible, el.ids, el.cutoff), width="stretch",
                        key="elig_bells")
    picked = explore.selected_point(event.selection.points if event else None)
    if picked is not None:
        instance_card(train[picked], f"(selected: gap {el.gap[picked]:.3g}, cosine {el.cosine[picked]:.3f}"
                                     f"{'; ' + reasons[picked] if reasons[picked] else ', eligible'})")
    st.plotly_chart(figures.cosine_histogram(el.cosine, el.eligible), width="stretch", key="elig_cos")
    st.caption("Consistency: a pair is kept only if cos(v_i, mean v) > 0 (the line at 0).")
    dropped = explore.dropped_frame(el, train)
    st.subheader(f"Dropped pairs ({len(dropped)})")
    if dropped.empty:
        st.caption("None: every training pair is eligible at this setting.")
    else:
        st.dataframe(dropped, hide_index=True, key="elig_dropped")


eligibility_panel()
