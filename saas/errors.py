"""Errors that carry a message meant for the user (shown as-is by the CLI and the app)."""

from __future__ import annotations


def user_facing_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message tells the user what is wrong and what to do.

    The CLI prints them without a traceback; the app shows them with ``st.error``.
    """
    from saas.data import DatasetError
    from saas.models import ModelLoadError, UnsupportedModelError

    types: list[type[BaseException]] = [DatasetError, ModelLoadError, UnsupportedModelError, FileNotFoundError]
    try:
        from saas.eligibility import EligibilityError

        types.append(EligibilityError)
    except ImportError:
        pass
    try:
        from saas.agents import AgentError

        types.append(AgentError)
    except ImportError:
        pass
    return tuple(types)
