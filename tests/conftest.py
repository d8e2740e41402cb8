"""Shared fixtures. Tiers: fast unit tests (no model), integration tests on the embedded model
(marked ``model``), and one browser test (marked ``browser``)."""

from __future__ import annotations

from collections.abc import Iterator
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


class UnmarkedModelLoad(AssertionError):
    """A test without the ``model`` marker tried to load pretrained weights."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Keep the tiers honest: a test that loads pretrained weights (the embedded SmolLM2, the
    sentence encoder, any ``from_pretrained`` model) must carry ``@pytest.mark.model`` (or
    ``browser``), so that ``-m "not model"`` really is the fast tier. Tiny models built from a
    config, and tokenizers, are fine without it. The guard covers the test's setup (fixtures it is
    the first to need), its call and its teardown."""
    if item.get_closest_marker("model") or item.get_closest_marker("browser"):
        yield
        return
    import transformers

    from saas.paths import cache_dir

    models = cache_dir("models").resolve()
    original = transformers.PreTrainedModel.from_pretrained.__func__  # type: ignore[attr-defined]

    def refuse(*_a: object, **_k: object) -> None:
        raise UnmarkedModelLoad(f"{item.nodeid} loads a pretrained model: mark it @pytest.mark.model")

    def guarded(cls: type, path: object, *args: object, **kw: object) -> object:
        p = Path(str(path)).expanduser()
        if not p.exists() or models in p.resolve().parents or p.resolve() == models:
            refuse()  # the embedded model (or a hub id); a tiny model saved by the test itself is fine
        return original(cls, path, *args, **kw)

    patch = pytest.MonkeyPatch()
    patch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(guarded))
    try:
        import sentence_transformers

        patch.setattr(sentence_transformers.SentenceTransformer, "__init__", refuse)
    except ImportError:  # pragma: no cover - the agents extra is always installed here
        pass
    try:
        yield
    finally:
        patch.undo()
