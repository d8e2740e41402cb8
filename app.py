"""SAAS Explorer: Semantic-Aware Activation Steering, one page per pipeline stage.

Run: ``bash scripts/run`` (or ``.venv/bin/streamlit run app.py``).
"""

from __future__ import annotations

import streamlit as st

from saas.paths import set_offline_defaults
from saas_app import sidebar, state

set_offline_defaults()
st.set_page_config(page_title="SAAS Explorer", layout="wide")
state.init()

PAGES = [
    st.Page("app_pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("app_pages/activations.py", title="Activations", icon=":material/scatter_plot:"),
    st.Page("app_pages/eligibility.py", title="Eligibility", icon=":material/filter_alt:"),
    st.Page("app_pages/subbehaviours.py", title="Sub-behaviours", icon=":material/account_tree:"),
    st.Page("app_pages/weights.py", title="Weights", icon=":material/balance:"),
    st.Page("app_pages/steering.py", title="Steering", icon=":material/tune:"),
    st.Page("app_pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
]
page = st.navigation(PAGES)

st.title("SAAS Explorer")
st.caption("Semantic-Aware Activation Steering: eligibility, agents, weights, steering and evaluation, live.")
status = st.container()
sidebar.render(status)
page.run()
