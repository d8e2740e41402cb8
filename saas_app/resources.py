"""Every cached resource of the app: the one module that owns ``st.cache_resource`` / ``st.cache_data``.

Two kinds of caching:

- Expensive objects built with a progress bar (the model, a prepared run, an agent backend, an
  agent run) live in a process-wide :class:`Store` held by ``st.cache_resource``. Streamlit's
  decorators cannot take a progress callback that writes to an element created outside the cached
  function (it breaks their replay), so the store memoises by an explicit key instead. Every key
  holds everything that changes the result. One lock per key: two sessions asking for the same
  object build it once.
- Cheap derived values (a projection, a :class:`~saas.pipeline.MethodResult`, per-layer stats, 2-D
  map coordinates) use the decorators directly. The heavy object is passed as an ``_underscored``
  argument (not hashed) next to string keys that identify it exactly.

Shared objects are read-only: pages never mutate a ``Prepared`` or a ``MethodResult``; a session's
own agent edits produce a new view (:func:`open_run`), never an in-place change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from saas import explore
from saas.data import (
    BehaviourDataset,
    DemoInfo,
    discover_datasets,
    is_demo_spec,
    list_demos,
    load_dataset,
    load_dataset_from_bytes,
)
from saas.eligibility import Projection
from saas.models import LoadedModel, load_model
from saas.pipeline import (
    MethodResult,
    Prepared,
    RunConfig,
    agent_backend,
    cheap_projection,
    compute,
    consistency_groups,
    fixed_vectors,
    prepare,
    run_agents_for,
    run_steerability,
    set_agent_run,
)

Progress = Callable[[int, int, str], None] | None


class Store:
    """A thread-safe, size-bounded memo: ``get(key, build)`` builds once per key (LRU eviction)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = build()  # an exception leaves nothing behind: the next call retries
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.capacity:
                    old, _ = self._items.popitem(last=False)
                    self._locks.pop(old, None)
            return value

    def peek(self, key: str) -> Any:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                old, _ = self._items.popitem(last=False)
                self._locks.pop(old, None)

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


@st.cache_resource(show_spinner=False)
def _store(kind: str, capacity: int) -> Store:
    return Store(capacity)


@st.cache_resource(show_spinner=False)
def generation_lock() -> threading.Lock:
    """Serialises every use of the shared model (generation, sweeps) across sessions."""
    return threading.Lock()


# --------------------------------------------------------------------------------------------
# run specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What the sidebar asks for; the expensive stages are keyed by it."""

    model: str = "default"
    dataset: str = "demo"  # "demo" / "demo:<name>", a file path, or an upload's file name
    upload: bytes | None = field(default=None, repr=False, compare=False)
    upload_hash: str = ""
    limit: int | None = None
    agents: str = "offline"  # offline | local | anthropic | none
    agent_model: str | None = None
    seed: int = 0
    threshold: float = 2.0

    def config(self) -> RunConfig:
        return RunConfig(model=self.model, dataset=self.dataset, limit=self.limit, agents=self.agents,
                         agent_model=self.agent_model, seed=self.seed, threshold=self.threshold)


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


def upload_spec(filename: str, data: bytes, **kw: Any) -> RunSpec:
    return RunSpec(dataset=filename, upload=data, upload_hash=hashlib.sha256(data).hexdigest()[:16], **kw)


@st.cache_data(show_spinner=False, max_entries=16)
def _dataset(source: str, upload: bytes | None, limit: int | None, stamp: str) -> BehaviourDataset:
    if upload is not None:
        return load_dataset_from_bytes(upload, source, limit=limit)
    return load_dataset(source, limit=limit)


def dataset(spec: RunSpec) -> BehaviourDataset:
    """The spec's dataset (raises :class:`saas.data.DatasetError` with file/line/field)."""
    stamp = ""
    if spec.upload is None and not is_demo_spec(spec.dataset):
        p = Path(spec.dataset).expanduser()
        if p.exists():
            st_ = p.stat()
            stamp = f"{st_.st_mtime_ns}:{st_.st_size}"
    return _dataset(spec.dataset, spec.upload, spec.limit, stamp)


def model(spec: str, progress: Progress = None) -> LoadedModel:
    """The language model (one per process per spec)."""
    return _store("model", 2).get(spec, lambda: load_model(spec, progress=progress))


def prepare_key(spec: RunSpec, ds: BehaviourDataset) -> str:
    return _hash("prepared", spec.model, ds.content_hash(), spec.seed)


def base_prepared(spec: RunSpec, ds: BehaviourDataset, progress: Progress = None) -> Prepared:
    """The expensive run without agents (activations, split, model scores), shared by all sessions."""
    def build() -> Prepared:
        lm = model(spec.model, progress)
        cfg = dataclasses.replace(spec.config(), agents="none")
        return prepare(cfg, lm=lm, dataset=ds, progress=progress)

    return _store("prepared", 4).get(prepare_key(spec, ds), build)


def _backend(spec: RunSpec, base: Prepared, api_key: str | None) -> Any:
    key = _hash("backend", spec.agents, spec.agent_model, base.lm.fingerprint if spec.agents == "local" else "",
                hashlib.sha256((api_key or "").encode()).hexdigest())
    return _store("backend", 4).get(key, lambda: agent_backend(spec.config(), base.lm, api_key))


@dataclass
class OpenRun:
    """A session's run: the shared prepared data plus this session's agent run (and edits).

    Attributes:
        spec: What was asked for.
        prepared: A view of the shared ``Prepared`` with this session's importance scores.
        key: Identifies the shared prepared data.
        scores_key: Identifies the importance scores (agent run and edits).
        backend: The agent backend (None when agents are off or failed to start).
        agent_error: Why the agents did not run ("" when they did).
    """

    spec: RunSpec
    prepared: Prepared
    key: str
    scores_key: str
    backend: Any = None
    agent_error: str = ""


@dataclass(frozen=True)
class AgentFailure:
    """Why an agent run failed; remembered so that page loads do not retry it (Prepare or the
    Sub-behaviours page's button do)."""

    message: str


def open_run(spec: RunSpec, overlay: Any = None, api_key: str | None = None, progress: Progress = None,
             refresh_agents: bool = False, retry_failed: bool = False) -> OpenRun:
    """Everything a page needs for a spec; each stage is a cache hit after the first time.

    Dataset and model errors propagate (the caller shows them); an agent failure is caught and
    reported in :attr:`OpenRun.agent_error`, the run then weights uniformly over eligible instances.
    The failure is remembered: only ``retry_failed`` or ``refresh_agents`` tries the agents again.
    """
    ds = dataset(spec)
    base = base_prepared(spec, ds, progress)
    key = prepare_key(spec, ds)
    if spec.agents == "none":
        return OpenRun(spec, base, key, "none")
    ov_json = json.dumps(overlay.to_dict(), sort_keys=True) if overlay else ""
    run_key = _hash("agents", key, spec.agents, spec.agent_model, spec.threshold, ov_json,
                    hashlib.sha256((api_key or "").encode()).hexdigest())
    store, views = _store("agent_run", 16), _store("view", 16)
    if refresh_agents or (retry_failed and isinstance(store.peek(run_key), AgentFailure)):
        store.discard(run_key)
        views.discard(run_key)
    backend = None
    try:
        backend = _backend(spec, base, api_key)
        run = store.get(run_key, lambda: run_agents_for(base, backend, overlay=overlay or None, progress=progress,
                                                          refresh=refresh_agents))
    except Exception as exc:  # any agent failure (network, key, parse, missing encoder) is shown, not raised
        run = AgentFailure(f"{type(exc).__name__}: {exc}")
        store.put(run_key, run)
    if isinstance(run, AgentFailure):
        return OpenRun(spec, base, key, "none", backend, run.message)

    def view() -> Prepared:
        v = dataclasses.replace(base, config=spec.config())
        set_agent_run(v, run)
        return v

    return OpenRun(spec, views.get(run_key, view), key, run_key, backend)


# --------------------------------------------------------------------------------------------
# cheap derived values (no model)
# --------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=64)
def projection(key: str, layer: int, axis: str, shrinkage: str | float, consistency: str,
               _prepared: Prepared) -> Projection:
    """The Fisher / mean-difference projection at one layer (the only solve a slider could need)."""
    return cheap_projection(_prepared, layer, axis, shrinkage, consistency)


@st.cache_resource(show_spinner=False, max_entries=128)
def method_result(key: str, scores_key: str, layer: int, kappa: float, axis: str, shrinkage: str | float,
                  consistency: str, temperature: float | None, _prepared: Prepared) -> MethodResult:
    """Eligibility, weights and every vector for one setting (shared, read-only)."""
    proj = projection(key, layer, axis, shrinkage, consistency, _prepared)
    return compute(_prepared, layer=layer, kappa=kappa, axis=axis, temperature=temperature, projection=proj,
                   consistency=consistency, fixed=unweighted(key, layer, _prepared))


_NOT_COMPUTED = object()


def steerability_of(run_key: str, _prepared: Prepared, result: MethodResult, *, compute: bool = False,
                    progress: Progress = None) -> Any:
    """The training pairs' steerability under the run's CAA vector at ``result.layer``: from memory,
    else from the disk cache, else (only with ``compute``) from the model; None when not computed.

    CAA at a layer depends on nothing a slider moves (kappa, t, axis, shrinkage, consistency), so the
    answer, a miss included, is memoised per (run, layer): a slider move never reads the disk again.
    """
    store = _store("steerability", 32)
    key = f"{run_key}|{result.layer}"
    hit = store.peek(key)
    if hit is not None and (hit is not _NOT_COMPUTED or not compute):
        return None if hit is _NOT_COMPUTED else hit
    steer = run_steerability(_prepared, result, only_cached=not compute, progress=progress)
    store.put(key, _NOT_COMPUTED if steer is None else steer)
    return steer


@st.cache_resource(show_spinner=False, max_entries=64)
def unweighted(key: str, layer: int, _prepared: Prepared) -> dict[str, np.ndarray]:
    """CAA and the PCA baselines at one layer: no kappa or temperature move recomputes them."""
    return fixed_vectors(_prepared, layer)


@st.cache_resource(show_spinner=False, max_entries=8)
def layer_projections(key: str, axis: str, shrinkage: str | float, consistency: str,
                      _prepared: Prepared) -> list[Projection | str]:
    """Every layer's projection of the training split (the solves; kappa reuses them)."""
    acts = _prepared.acts
    groups = consistency_groups(_prepared.dataset, _prepared.train, consistency)
    return explore.layer_projections(acts.positive, acts.negative, _prepared.train, axis, shrinkage, consistency,
                                     groups)


@st.cache_data(show_spinner=False, max_entries=32)
def layer_stats(key: str, kappa: float, axis: str, shrinkage: str | float, consistency: str,
                _prepared: Prepared) -> pd.DataFrame:
    """Separation D, eligible fraction, CAA norm and SNR for every layer (training split)."""
    acts = _prepared.acts
    projections = layer_projections(key, axis, shrinkage, consistency, _prepared)
    return explore.layer_stats(acts.positive, acts.negative, _prepared.train, kappa, axis, shrinkage, projections)


@st.cache_resource(show_spinner=False, max_entries=64)
def figure(kind: str, key: tuple[Any, ...], _build: Callable[[], go.Figure]) -> go.Figure:
    """A figure built once per ``(kind, key)`` and shared read-only (``st.plotly_chart`` copies it).

    Plotly validates every property while a figure is built, which costs tens of ms; figures that
    a slider move does not change are therefore reused. ``key`` must identify every input of
    ``_build`` (use content hashes such as :func:`saas.explore.array_key`).
    """
    return _build()


@st.cache_data(show_spinner=False, max_entries=1)
def demos() -> list[DemoInfo]:
    """The bundled demo behaviours (for the sidebar's picker)."""
    return list_demos()


@st.cache_data(show_spinner=False, max_entries=4)
def dataset_files(root: str) -> list[str]:
    """Loadable dataset files under a folder (for the sidebar's picker)."""
    return [str(p) for p in discover_datasets(root)] if Path(root).is_dir() else []


@st.cache_data(show_spinner=False, max_entries=64)
def map_coordinates(key: str, layer: int, method: str, _prepared: Prepared) -> np.ndarray:
    """2-D map of the training split's activations at one layer (PCA fast; UMAP ~20 s the first time)."""
    pos, neg = _prepared.acts.layer(layer)
    idx = _prepared.train
    return explore.map_coordinates(pos[idx], neg[idx], method, seed=_prepared.config.seed)
