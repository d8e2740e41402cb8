"""Driving the app headless with ``streamlit.testing.v1.AppTest`` (used by the tests and the bench).

The page files live in ``app_pages/``, not ``pages/``: a folder named ``pages/`` puts Streamlit in
its legacy folder-based multipage mode next to ``st.navigation``, where AppTest (and a server's first
deep link) run a page file without ``app.py``.
"""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGES = ("home", "activations", "eligibility", "subbehaviours", "weights", "steering", "evaluation")


def app_test(timeout: float = 600.0, auto_prepare: bool = False) -> AppTest:
    """An AppTest of ``app.py`` (``timeout`` per run: Prepare may extract activations).

    ``auto_prepare`` False (the default here) keeps the session from preparing the default run on
    its first open, so that tests without a model stay fast."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.session_state["auto_prepare"] = auto_prepare
    return at


def page_path(name: str) -> str:
    """``"weights"`` -> ``"app_pages/weights.py"`` (relative to app.py, as ``switch_page`` wants)."""
    return f"app_pages/{name}.py"
