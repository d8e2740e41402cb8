"""Steering: one prompt, several columns side by side (base, prompted, vectors, prompted + vector),
generated in ONE batch with the same seed and streamed into every column at once."""

from __future__ import annotations

import contextlib

import streamlit as st

from saas.generation import PROMPTED, columns_named, stream_columns
from saas.prompts import prompted_system_prompt
from saas.steering import PositionMode
from saas_app.ui import bound, label, labels, model_lock, require_result, require_run, show_error

st.header("Steering")
run = require_run()
p = run.prepared
res = require_result(run)
lm = p.lm
system = prompted_system_prompt(p.dataset)

examples = [i.prompt for i in p.instances("test")] or [i.prompt for i in p.dataset.instances]
vector_methods = list(res.vectors)
available = ["base", PROMPTED, *vector_methods, *[f"{PROMPTED}+{m}" for m in vector_methods]]
default = [m for m in ("base", PROMPTED, "caa", "saas", f"{PROMPTED}+saas") if m in available]
POSITIONS = {"generated": "last prompt token + new tokens (ours)",
             "all": "every position (what llama.cpp does with an exported vector)"}


def column_label(name: str) -> str:
    if name.startswith(f"{PROMPTED}+"):
        return f"prompted + {label(name.split('+', 1)[1])}"
    return label(name)


def widget_key(name: str) -> str:
    """A column's element-key suffix (``prompted+saas`` -> ``prompted_saas``)."""
    return name.replace("+", "_").replace("-", "_")


prompt = st.text_area("Prompt", value=examples[0], height=100, key="steer_prompt",
                      help="Default: the first held-out (test) prompt of the dataset.")
c1, c2, c3 = st.columns([3, 3, 2])
with c1:
    bound(st.slider, "alpha (multiplier of the vector as extracted)", "alpha", min_value=-4.0, max_value=4.0, step=0.25)
with c2:
    methods = st.multiselect("Columns", available, default=default, format_func=column_label, key="steer_methods",
                             help="base = the unsteered model; prompted = the behaviour asked for in a system prompt "
                                  "built from the behaviour card (no vector); prompted + X = both.")
with c3:
    st.metric("Layer", res.layer, help="Choose the layer in the sidebar.")
with st.expander("Generation settings and the prompted baseline's system prompt"):
    g1, g2, g3 = st.columns(3)
    max_new = g1.slider("Max new tokens", 8, 160, 48, 8, key="steer_tokens")
    seed = g2.number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed")
    sample = g3.checkbox("Sample (else greedy)", value=False, key="steer_sample")
    picked = st.radio("Steer at", list(POSITIONS), format_func=labels(POSITIONS), key="steer_positions",
                         horizontal=True,
                         help="llama.cpp's --control-vector adds the vector at every position, the prompt "
                              "included; choose it to see beforehand what an exported vector will do there.")
    positions: PositionMode = "all" if picked == "all" else "generated"
    st.caption(f"System prompt of the prompted columns: *{system}*")
if "saas" not in res.vectors:
    st.error("SAAS has no vector at these settings (no eligible pair): lower kappa on the Eligibility page.")

alpha = float(st.session_state["alpha"])


def header(name: str) -> str:
    method = name.split("+", 1)[1] if name.startswith(f"{PROMPTED}+") else name
    if method in ("base", PROMPTED):
        return f"**{column_label(name)}**"
    return f"**{column_label(name)}**  (alpha {alpha:+g}, |v| {res.vectors[method].norm():.3g})"


if st.button("Generate", type="primary", key="steer_go", disabled=not methods or not prompt.strip()):
    cols = st.columns(len(methods))
    slots = []
    for col, m in zip(cols, methods):
        box = col.container(key=f"steer_col_{widget_key(m)}")
        box.markdown(header(m))
        slots.append(box.container(key=f"steer_text_{widget_key(m)}").empty())
    for slot in slots:
        slot.caption("generating...")
    texts = [""] * len(methods)
    try:
        with model_lock():
            stream = stream_columns(lm, prompt, columns_named(methods, res.vectors, alpha, system), max_new_tokens=int(max_new),
                                    do_sample=bool(sample), seed=int(seed), positions=positions)
            with contextlib.closing(stream):  # a rerun that interrupts the page stops the generation too
                for index, piece in stream:
                    texts[index] += piece
                    slots[index].markdown(texts[index])
        for slot, text in zip(slots, texts):
            if not text.strip():
                slot.caption("(no text: the model ended its reply at once)")
    except Exception as exc:
        show_error(exc, "Try a shorter prompt or fewer tokens.")
    st.session_state["steer_last"] = {"prompt": prompt, "alpha": alpha, "layer": res.layer, "positions": positions,
                                      "outputs": dict(zip(methods, texts))}
elif st.session_state.get("steer_last"):
    last = st.session_state["steer_last"]
    st.caption(f"Last generation (alpha {last['alpha']:+g}, layer {last['layer']}, steering at "
               f"{last.get('positions', 'generated')}): press Generate for the current settings.")
    cols = st.columns(max(len(last["outputs"]), 1))
    for col, (m, text) in zip(cols, last["outputs"].items()):
        box = col.container(key=f"steer_col_{widget_key(m)}")
        box.markdown(f"**{column_label(m)}**")
        box.container(key=f"steer_text_{widget_key(m)}").write(text)
st.caption("All columns are rows of one batch with the same seed; with greedy decoding the base column is the "
           "model without steering. Norms differ between methods: alpha multiplies each vector as extracted.")
