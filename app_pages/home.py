"""Overview: what SAAS is, this session's run, and a summary of every stage."""

from __future__ import annotations

import streamlit as st

from saas import explore
from saas_app import resources, state
from saas_app.resources import RunSpec
from saas_app.ui import PREPARE_HINT, agent_warning, label, layer_overview, require_result, show_error

st.header("Overview")
st.markdown(
    """
**Semantic-Aware Activation Steering** builds a steering vector from contrastive pairs
(a prompt with a positive answer that shows a behaviour and a negative one that does not):

1. **Activations**: read the residual stream at the answer's last token, for every layer.
2. **Eligibility**: keep the pairs that are *separable* on the Fisher axis (own gap >= kappa x mean gap D)
   and *consistent* (their difference vector does not point against the mean difference).
3. **Sub-behaviours**: agents split the behaviour into sub-behaviours, rate each one's contribution
   and score every pair's relevance; importance s_i = sum_k c_k s_ik.
4. **Weights**: w_i = softmax(s_i / t) over the eligible pairs; the SAAS vector is sum_i w_i v_i.
5. **Steering** adds alpha x v to one layer while the model generates; **Evaluation** measures it.
"""
)

state.init()
spec = state.spec()
if spec is None:
    st.info(PREPARE_HINT)
    try:
        ds = resources.dataset(RunSpec(dataset=st.session_state.get("sb_demo") or "demo", limit=None))
    except Exception as exc:
        show_error(exc)
        st.stop()
    stats = explore.dataset_stats(ds)
    st.subheader(f"The bundled demo behaviour: {ds.title or ds.name}")
    st.caption(ds.description)
    cols = st.columns(4)
    cols[0].metric("Pairs", stats["instances"])
    cols[1].metric("Answer kind", stats["answer_kind"])
    cols[2].metric("Prompt length (words)", f"{stats['prompt_words']:.1f}")
    cols[3].metric("Answer length (words)", f"{(stats['positive_words'] + stats['negative_words']) / 2:.1f}")
    st.dataframe(explore.instance_frame(ds), hide_index=True, height=260, key="home_demo_table")
    st.stop()

try:
    run = state.current_run()
except Exception as exc:
    show_error(exc, "Press Prepare again.")
    st.stop()
assert run is not None
agent_warning(run)
p = run.prepared
res = require_result(run)
s = explore.run_summary(p, res)

st.subheader("This session's run")
st.markdown(f"Model **{s['model']}** ({s['n_layers']} layers, hidden size {s['d']}); dataset **{s['dataset']}** "
            f"({p.dataset.answer_kind} answers, from `{p.dataset.source}`).")
cols = st.columns(4)
cols[0].metric("Pairs", s["instances"])
cols[1].metric("Train / val / test", f"{s['n_train']} / {s['n_val']} / {s['n_test']}")
cols[2].metric("Layer", s["layer"], help="Choose it in the sidebar.")
cols[3].metric("Agents", p.agent_run.backend if p.agent_run is not None else "none", help=s["scores_source"])
st.caption(f"Model load {p.lm.load_seconds:.1f} s; activations "
           f"{'read from the cache' if p.acts.from_cache else 'extracted'} in {p.timings.get('activations', 0.0):.1f} s; "
           f"model scores {p.timings.get('model_scores', 0.0):.1f} s.")

st.subheader("Pipeline summary")
cols = st.columns(4)
cols[0].metric("Eligible pairs", f"{s['n_eligible']} / {s['n_train']}",
               help=f"{s['n_not_separable']} not separable, {s['n_inconsistent']} inconsistent")
cols[1].metric("Mean separation D", f"{s['D']:.3g}", help=f"cutoff kappa x D = {s['kappa']:g} x D = {s['cutoff']:.3g}")
cols[2].metric("Sub-behaviours kept", f"{s['kept_subs']} / {s['subs']}", help=f"scores: {s['scores_source']}")
cols[3].metric("Temperature t", f"{s['temperature']:.3g}", help="automatic: the spread of the importance scores")
cols = st.columns(4)
cols[0].metric("Effective N of the weights", f"{s['ess']:.1f}")
cols[1].metric("Largest weight", f"{s['max_weight']:.3f}")
cols[2].metric("|SAAS| / |CAA|", f"{s['norms'].get('saas', float('nan')):.3g} / {s['norms'].get('caa', float('nan')):.3g}")
cols[3].metric("cos(SAAS, CAA)", f"{s['cos_saas_caa']:.3f}")
st.caption("Vector norms: " + ", ".join(f"{label(m)} {n:.3g}" for m, n in sorted(s["norms"].items())))
st.plotly_chart(layer_overview(run, s["layer"])[0],
                width="stretch", key="home_layers")
st.page_link("app_pages/activations.py", label="Next: the activations", icon=":material/arrow_forward:")
