"""UI helpers shared by the pages: the run guard, errors, progress bars, bound widgets, instance cards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import streamlit as st

from saas.data import Instance
from saas.errors import user_facing_errors
from saas.pipeline import METHOD_LABELS
from saas_app import state
from saas_app.resources import OpenRun

PREPARE_HINT = (
    "Press **Prepare** in the sidebar to load the model and the dataset and compute the activations "
    "(the first time takes a minute or two; after that everything comes from the cache)."
)


def show_error(exc: BaseException, what_to_do: str = "") -> None:
    """An error as a clear message (never a traceback)."""
    text = str(exc) if isinstance(exc, user_facing_errors()) else f"{type(exc).__name__}: {exc}"
    st.error(f"{text}\n\n{what_to_do}".strip())


def require_run() -> OpenRun:
    """The session's run, or an info box asking for Prepare (and the page stops)."""
    state.init()
    if state.spec() is None:
        st.info(PREPARE_HINT)
        st.stop()
    try:
        run = state.current_run(progress_bar())
    except Exception as exc:  # e.g. the dataset file changed on disk since Prepare
        show_error(exc, "Fix the sidebar settings and press Prepare again.")
        st.stop()
    assert run is not None
    return run


class ProgressBar:
    """A progress callback ``(done, total, message)`` that draws an ``st.progress`` bar on first use."""

    def __init__(self, where: Any = None) -> None:
        self.where = where
        self.bar: Any = None

    def __call__(self, done: int, total: int, message: str) -> None:
        frac = min(max(done / total, 0.0), 1.0) if total else 0.0
        if self.bar is None:
            self.bar = (self.where or st).progress(frac, text=message)
        else:
            self.bar.progress(frac, text=message)

    def clear(self) -> None:
        if self.bar is not None:
            self.bar.empty()
            self.bar = None


def progress_bar(where: Any = None) -> ProgressBar:
    """A fresh :class:`ProgressBar` (nothing is drawn until the first update)."""
    return ProgressBar(where)


def bound(widget: Callable[..., Any], label: str, key: str, **kw: Any) -> Any:
    """Render ``widget`` editing the persistent setting ``st.session_state[key]``.

    The widget has its own key (``w_<key>``), re-seeded from the setting on every render and copied
    back on change, so its value survives page switches (Streamlit forgets the state of widgets
    that a page does not render).
    """
    wkey = f"w_{key}"
    st.session_state[wkey] = st.session_state[key]

    def copy() -> None:
        st.session_state[key] = st.session_state[wkey]

    return widget(label, key=wkey, on_change=copy, **kw)


def labels(mapping: Mapping[str, str]) -> Callable[[str], str]:
    """A widget ``format_func`` that shows ``mapping[key]`` (the key itself when it is missing)."""
    return lambda key: mapping.get(key, key)


def label(method: str) -> str:
    """Display name of a method id (``"saas"`` -> ``"SAAS"``; ``"base"`` stays)."""
    return METHOD_LABELS.get(method, method)


def instance_card(inst: Instance, caption: str = "") -> None:
    """An instance's prompt and both answers."""
    with st.container(border=True):
        st.markdown(f"**{inst.id}** {caption}")
        st.markdown(f"**Prompt**: {inst.prompt}")
        left, right = st.columns(2)
        left.markdown(f":blue[**Positive (y+)**]: {inst.positive}")
        right.markdown(f":orange[**Negative (y-)**]: {inst.negative}")


def agent_warning(run: OpenRun) -> None:
    """Tell the user when the agents failed (SAAS then weights uniformly)."""
    if run.agent_error:
        st.error(
            f"The agents failed: {run.agent_error}\n\nSAAS falls back to uniform weights over the eligible "
            "instances. Choose another agent backend in the sidebar (offline needs no key) and press Prepare, "
            "or retry on the Sub-behaviours page. The activations stay cached."
        )


def result_or_error(run: OpenRun) -> Any:
    """The session's :class:`~saas.pipeline.MethodResult`, or None after showing why it failed."""
    try:
        return state.result(run)
    except Exception as exc:  # e.g. a singular covariance with ridge lambda 0
        show_error(exc, "Change the eligibility settings (kappa, axis, shrinkage) on the Eligibility page.")
        return None


def require_result(run: OpenRun) -> Any:
    """Like :func:`result_or_error`, but stops the page when there is no result."""
    res = result_or_error(run)
    if res is None:
        st.stop()
    return res


@contextlib.contextmanager
def model_lock() -> Iterator[None]:
    """Hold the shared model's lock (generation, sweeps); tells the user when another session has it."""
    from saas_app.resources import generation_lock

    lock = generation_lock()
    if not lock.acquire(blocking=False):
        with st.spinner("Another session is using the model; waiting..."):
            lock.acquire()
    try:
        yield
    finally:
        lock.release()


def layer_suggestion(run: OpenRun) -> tuple[int, Any]:
    """The suggested layer and the per-layer stats table at the session's eligibility settings."""
    from saas import explore
    from saas_app import resources

    ss = st.session_state
    stats = resources.layer_stats(run.key, float(ss["kappa"]), str(ss["axis"]), ss["shrinkage"], state.consistency(run),
                                  run.prepared)
    return explore.suggest_layer(stats), stats


def layer_overview(run: OpenRun, layer: int) -> tuple[Any, int, Any]:
    """The per-layer chart (a cached figure), the suggested layer and the stats table."""
    from saas import figures
    from saas_app import resources

    best, stats = layer_suggestion(run)
    ss = st.session_state

    def build() -> Any:
        return figures.layer_chart(stats["layer"].tolist(), stats["D"].tolist(), stats["eligible_fraction"].tolist(),
                                   stats["caa_norm"].tolist(), selected=layer, best=best)

    key = (run.key, float(ss["kappa"]), str(ss["axis"]), ss["shrinkage"], state.consistency(run), layer)
    return resources.figure("layers", key, build), best, stats
