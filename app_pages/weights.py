"""Weights: relevance scores, importance, and the softmax weights across temperatures."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from saas import annotated, explore, figures
from saas_app import resources
from saas_app.ui import agent_warning, require_result, require_run, result_or_error

st.header("Weights")
run = require_run()
agent_warning(run)
p = run.prepared
train = p.instances("train")
ids = [i.id for i in train]
imp_train = None if p.importance is None else p.importance[p.train]
lo, hi, ref = explore.temperature_range(imp_train)

res0 = require_result(run)
el = res0.eligibility
if p.agent_run is not None:
    elig_ids = [i for i, e in zip(ids, el.eligible) if e]
    by_id = {i.id: i for i in train}

    def relevance() -> go.Figure:
        scores, names = explore.relevance_view(p.agent_run, elig_ids)
        hover = [explore.instance_hover(by_id[i]) for i in elig_ids]
        return figures.relevance_heatmap(scores, elig_ids, names, hover)

    with st.expander(f"Relevance s_ik of the {len(elig_ids)} eligible pairs x {len(p.agent_run.kept)} kept "
                     "sub-behaviours", expanded=False):
        fig = resources.figure("relevance", (run.key, run.scores_key, explore.array_key(el.eligible)), relevance)
        st.plotly_chart(fig, width="stretch", key="wt_relevance")
else:
    st.info("No agent scores: every eligible pair gets the same weight (SAAS equals uniform-eligible).")


def temperature_slider(auto_t: float) -> None:
    ss = st.session_state
    ss["w_log_t"] = ss["log_t"] if ss["log_t"] is not None else explore.slider_log_t(auto_t, lo, hi)

    def copy() -> None:
        ss["log_t"] = ss["w_log_t"]

    st.slider("log10 temperature", min_value=lo, max_value=hi, step=0.05, key="w_log_t", on_change=copy,
              help="w_i = softmax(s_i / t) over the eligible pairs. Small t: a few pairs dominate; "
                   "large t: uniform over the eligible pairs.")


@st.fragment
def weights_panel() -> None:
    res = result_or_error(run)
    if res is None:
        return
    left, right = st.columns([4, 1])
    with left:
        temperature_slider(res.temperature)
    with right:
        auto = st.session_state["log_t"] is None
        st.button("Automatic t", key="wt_auto_t", disabled=auto, help="t = the spread of the importance scores",
                  on_click=lambda: st.session_state.update(log_t=None))
    sm = res.summary
    cols = st.columns(4)
    cols[0].metric("Temperature t", f"{res.temperature:.4g}", help="automatic" if auto else "set with the slider")
    cols[1].metric("Entropy (nats)", f"{sm.entropy:.3f}", help=f"uniform over {sm.n}: ln {sm.n}")
    cols[2].metric("Effective N", f"{sm.ess:.1f}", help="1 / sum w_i^2")
    cols[3].metric("Largest weight", f"{sm.max_weight:.4f}")
    if res.eligibility.empty:
        st.error("No pair is eligible, so there is nothing to weight: lower kappa on the Eligibility page.")
        return
    temps, grid, grid_ids = explore.weight_grid(res.importance, res.eligibility.eligible, ids, lo, hi)
    st.plotly_chart(figures.weight_heatmap(temps, grid, grid_ids, current_t=res.temperature), width="stretch",
                    key="wt_heatmap")
    elig = res.eligibility.eligible
    if annotated.is_annotated(train):
        shares = annotated.weight_shares(res.weights, elig, train)
        flawed = shares[shares["quality"] == "flawed"].iloc[0]
        a1, a2, a3 = st.columns(3)
        a1.metric("SAAS weight on flawed pairs", f"{flawed['saas weight %']:.1f}%",
                  help=f"Pairs annotated swapped / neutral / confounded / weak ({annotated.NOTE}).")
        a2.metric("Under uniform weights (eligible)", f"{flawed['uniform weight %']:.1f}%",
                  help="The same eligible pairs weighted equally: SAAS without its agents.")
        a3.metric("Share of all training pairs", f"{flawed['share of pairs %']:.1f}%",
                  help="CAA weights every training pair equally.")
        with st.expander(f"Weight share by annotated quality ({annotated.NOTE})"):
            st.dataframe(shares, hide_index=True, key="wt_shares")
    st.plotly_chart(figures.weight_bars(res.weights[elig], [i for i, e in zip(ids, elig) if e], top=10),
                    width="stretch", key="wt_bars")
    top, bottom = explore.top_bottom(res.weights, elig, train, res.importance, k=5)
    c1, c2 = st.columns(2)
    c1.markdown("**Highest weights**")
    c1.dataframe(top, hide_index=True, key="wt_top")
    c2.markdown("**Lowest weights**")
    c2.dataframe(bottom, hide_index=True, key="wt_bottom")


weights_panel()
