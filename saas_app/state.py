"""Per-session state: the run this session prepared and its settings.

Everything a user changes lives in ``st.session_state`` (one per browser tab), so two users never
see each other's settings or edits. Settings persist across pages under plain keys (``layer``,
``kappa``, ``axis``, ``shrinkage``, ``log_t``); the widgets that edit them are bound with
:func:`saas_app.ui.bound` so a page switch does not reset them.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from saas.pipeline import MethodResult, default_layer
from saas_app import resources
from saas_app.resources import OpenRun, RunSpec

DEFAULTS: dict[str, Any] = {
    "kappa": 0.5,  # separability cutoff fraction of D
    "axis": "fisher",  # projection axis: fisher | mean_diff
    "shrinkage": "ledoit-wolf",  # or a ridge lambda (float)
    "consistency": "mean",  # or "polarity-balanced" (token answers only)
    "log_t": None,  # log10 of the softmax temperature; None = automatic (spread of the scores)
    "layer": None,  # None = the middle layer
    "alpha": 1.0,  # steering multiplier (Eq. 2), as extracted: no re-normalisation
    "overlay": None,  # the user's sub-behaviour edits (saas.agents.Overlay)
    "evaluation": {},  # sweep results of this session, by name
}


def init() -> None:
    """Seed the session's settings; called by ``app.py`` and at the top of every page."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value.copy() if isinstance(value, dict) else value


def api_key() -> str | None:
    """The Anthropic key from the environment or ``st.secrets`` (None when absent)."""
    key = os.environ.get("ANTHROPIC_API_KEY")
    if key:
        return key
    try:
        return str(st.secrets["ANTHROPIC_API_KEY"])
    except Exception:  # no secrets file, or no such key
        return None


def spec() -> RunSpec | None:
    return st.session_state.get("run_spec")


def set_spec(new: RunSpec) -> None:
    """Make ``new`` this session's run; edits and sweep results of the previous run are dropped."""
    old = spec()
    st.session_state["run_spec"] = new
    if old is None or old != new:
        st.session_state["overlay"] = None
        st.session_state["evaluation"] = {}
        st.session_state["log_t"] = None


def current_run(progress: resources.Progress = None, refresh_agents: bool = False) -> OpenRun | None:
    """The session's run (cache hits after Prepare); None before Prepare."""
    s = spec()
    if s is None:
        return None
    return resources.open_run(s, st.session_state.get("overlay"), api_key(), progress, refresh_agents)


def layer(run: OpenRun) -> int:
    n = run.prepared.acts.n_layers
    chosen = st.session_state.get("layer")
    return int(chosen) if chosen is not None and 0 <= int(chosen) < n else default_layer(n)


def consistency(run: OpenRun) -> str:
    """The consistency reference in use ("polarity-balanced" only applies to token answers)."""
    chosen = str(st.session_state.get("consistency") or "mean")
    return chosen if run.prepared.dataset.answer_kind != "sentence" else "mean"


def temperature() -> float | None:
    """The temperature the user chose, or None for the automatic one."""
    log_t = st.session_state.get("log_t")
    return None if log_t is None else float(10.0 ** float(log_t))


def result(run: OpenRun) -> MethodResult:
    """Eligibility, weights and vectors at the session's settings (cached; no model)."""
    ss = st.session_state
    return resources.method_result(run.key, run.scores_key, layer(run), float(ss["kappa"]), str(ss["axis"]),
                                   ss["shrinkage"], consistency(run), temperature(), run.prepared)
