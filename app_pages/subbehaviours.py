"""Sub-behaviours: the agents' decomposition with contributions, editable in place, with provenance."""

from __future__ import annotations

import streamlit as st

from saas import explore, figures
from saas_app import resources, state
from saas_app.ui import agent_warning, progress_bar, require_run, show_error

st.header("Sub-behaviours")
run = require_run()
agent_warning(run)


def rerun_agents(refresh: bool) -> None:
    bar = progress_bar()
    try:
        state.current_run(bar, refresh_agents=refresh)
    except Exception as exc:
        show_error(exc)
        return
    st.rerun()


if st.button("Run the agents again (new calls, ignoring the call cache)" if run.prepared.agent_run else "Retry the agents",
             key="sub_rerun", help="The agent backend is chosen in the sidebar; calls are cached on disk."):
    rerun_agents(refresh=True)

ar = run.prepared.agent_run
if ar is None:
    st.info("No agent run: SAAS weights the eligible pairs uniformly. Choose an agent backend in the sidebar "
            "and press Prepare, or press the button above.")
    st.stop()

subs = ar.subs


def origin_of(s: object) -> str:
    """Where a sub-behaviour came from, for the hover and the table (runs saved before had none)."""
    origin = getattr(s, "origin", "") or ("written by the user" if getattr(s, "provenance", "") == "added" else "")
    edited = " (edited by the user)" if getattr(s, "provenance", "") == "edited" else ""
    return f"{origin or 'not recorded'}{edited}"


fig = resources.figure("tree", (run.scores_key,), lambda: figures.subbehaviour_tree(
    ar.behaviour.name, [s.name for s in subs], [float(s.contribution or 0.0) for s in subs], [s.kept for s in subs],
    [s.rationale for s in subs], provenance=[origin_of(s) for s in subs],
    descriptions=[s.description for s in subs]))
st.plotly_chart(fig, width="stretch", key="sub_tree")
st.caption(f"{len(ar.kept)} of {len(subs)} sub-behaviours kept (contribution >= {ar.threshold:g}); dropped ones "
           "are grey. Hover for the rationale and the origin. The offline backend takes names from the clauses of "
           "the behaviour description and from phrases that separate the positive from the negative answers "
           "(counts in the origin); a language model writes its own.")

st.subheader("Edit")
st.caption("Change names, descriptions or contributions, or tick *remove*, then apply: only the sub-behaviours "
           "an edit touches are scored again.")
frame = explore.subbehaviour_frame(subs)
frame["origin"] = [origin_of(s) for s in subs]
edited = st.data_editor(frame, hide_index=True, key=f"sub_editor_{run.scores_key}",
                        disabled=["id", "kept", "provenance", "rationale", "origin"],
                        column_config={"contribution": st.column_config.NumberColumn(min_value=0.0, max_value=10.0,
                                                                                     step=0.5, format="%.2f")})
c1, c2 = st.columns(2)
if c1.button("Apply edits", type="primary", key="sub_apply"):
    try:
        st.session_state["overlay"] = explore.overlay_from_edits(ar.agent_subs, st.session_state["overlay"], edited)
    except Exception as exc:
        show_error(exc)
    else:
        rerun_agents(refresh=False)
if c2.button("Undo all edits", key="sub_reset", disabled=not st.session_state["overlay"]):
    st.session_state["overlay"] = None
    st.rerun()

with st.form("sub_add", clear_on_submit=True):
    st.markdown("**Add a sub-behaviour**")
    name = st.text_input("Name", key="sub_add_name")
    desc = st.text_input("One-sentence description", key="sub_add_desc")
    contrib = st.slider("Contribution", 0.0, 10.0, 5.0, 0.5, key="sub_add_c")
    if st.form_submit_button("Add"):
        from saas.agents import Overlay

        ov = Overlay.from_dict(st.session_state["overlay"].to_dict()) if st.session_state["overlay"] else Overlay()
        try:
            ov.add(name, desc, contrib)
        except Exception as exc:
            show_error(exc, "Give the sub-behaviour a name and a description.")
        else:
            st.session_state["overlay"] = ov
            rerun_agents(refresh=False)

st.subheader("Provenance")
st.markdown(f"Backend **{ar.backend}** (`{ar.model}`), prompts {ar.prompt_version}, seed {ar.seed}; Agent-1 saw "
            f"{', '.join(ar.example_ids)}. Every call is cached under `cache/agents/` with its prompt and raw reply.")
st.code(ar.summary() or "no statistics", language=None)
