"""Shared fixtures. Tiers: fast unit tests (no model), integration tests on the embedded model
(marked ``model``), and one browser test (marked ``browser``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saas.paths import set_offline_defaults

set_offline_defaults()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public datasets beside the checkout (CI has the same layout)."""
    assert SHARED_DATA.is_dir(), f"expected the shared datasets at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct, loaded once per test session."""
    from saas.models import load_model

    return load_model("default")
