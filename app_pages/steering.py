"""Steering: one prompt, several methods' vectors side by side, same seed, streamed as they come."""

from __future__ import annotations

import streamlit as st

from saas.generation import stream_generate
from saas_app.ui import bound, label, model_lock, require_result, require_run, show_error

st.header("Steering")
run = require_run()
p = run.prepared
res = require_result(run)
lm = p.lm

examples = [i.prompt for i in p.instances("test")] or [i.prompt for i in p.dataset.instances]
available = ["base"] + [m for m in res.vectors]
default = [m for m in ("base", "caa", "saas") if m in available]

prompt = st.text_area("Prompt", value=examples[0], height=100, key="steer_prompt",
                      help="Default: the first held-out (test) prompt of the dataset.")
c1, c2, c3 = st.columns([3, 3, 2])
with c1:
    bound(st.slider, "alpha (multiplier of the vector as extracted)", "alpha", min_value=-4.0, max_value=4.0, step=0.25)
with c2:
    methods = st.multiselect("Methods", available, default=default, format_func=label, key="steer_methods",
                             help="base = the unsteered model.")
with c3:
    st.metric("Layer", res.layer, help="Choose the layer in the sidebar.")
with st.expander("Generation settings"):
    g1, g2, g3, g4 = st.columns(4)
    max_new = g1.slider("Max new tokens", 8, 160, 48, 8, key="steer_tokens")
    seed = g2.number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed")
    sample = g3.checkbox("Sample (else greedy)", value=False, key="steer_sample")
    positions = g4.radio("Steer", ["generated", "all"], key="steer_positions",
                         format_func={"generated": "last prompt token + new tokens", "all": "every position"}.get)
if "saas" not in res.vectors:
    st.error("SAAS has no vector at these settings (no eligible pair): lower kappa on the Eligibility page.")

alpha = float(st.session_state["alpha"])
if st.button("Generate", type="primary", key="steer_go", disabled=not methods or not prompt.strip()):
    cols = st.columns(len(methods))
    for col, m in zip(cols, methods):
        col.markdown(f"**{label(m)}**" + ("" if m == "base" else f"  (alpha {alpha:+g}, |v| {res.vectors[m].norm():.3g})"))
    slots = [col.empty() for col in cols]
    for slot in slots:
        slot.caption("queued...")
    outputs: dict[str, str] = {}
    try:
        with model_lock():
            for slot, m in zip(slots, methods):
                vec = None if m == "base" else res.vectors[m]
                stream = stream_generate(lm, prompt, vector=vec, alpha=0.0 if vec is None else alpha,
                                         max_new_tokens=int(max_new), do_sample=bool(sample), seed=int(seed),
                                         positions=positions)
                with slot.container():
                    outputs[m] = str(st.write_stream(stream))
    except Exception as exc:
        show_error(exc, "Try a shorter prompt or fewer tokens.")
    st.session_state["steer_last"] = {"prompt": prompt, "alpha": alpha, "layer": res.layer, "outputs": outputs}
elif st.session_state.get("steer_last"):
    last = st.session_state["steer_last"]
    st.caption(f"Last generation (alpha {last['alpha']:+g}, layer {last['layer']}): press Generate for the "
               "current settings.")
    cols = st.columns(max(len(last["outputs"]), 1))
    for col, (m, text) in zip(cols, last["outputs"].items()):
        col.markdown(f"**{label(m)}**")
        col.write(text)
st.caption("Every column uses the same seed; with greedy decoding the base column is the model without steering.")
