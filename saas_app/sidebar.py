"""The sidebar shared by every page: model, dataset, agents, Prepare, and the layer."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from saas.data import DatasetError, load_dataset_from_bytes
from saas.paths import REPO_ROOT
from saas_app import resources, state
from saas_app.resources import RunSpec
from saas_app.ui import bound, labels, layer_suggestion, progress_bar, show_error

MODEL_CHOICES = {"default": "Embedded SmolLM2-135M-Instruct", "path": "Local model folder", "hub": "Hugging Face hub id"}
DATA_CHOICES = {"demo": "A bundled demo behaviour", "path": "A file path", "upload": "Upload a file"}
AGENT_CHOICES = {"offline": "Offline (sentence encoder)", "local": "Local chat model", "anthropic": "Anthropic (Claude)"}
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def auto_prepare_enabled() -> bool:
    """Whether a new session prepares the default run by itself (``SAAS_APP_AUTOPREPARE=0`` turns it off;
    a session may override it with ``st.session_state["auto_prepare"]``, as the tests do)."""
    if "auto_prepare" in st.session_state:
        return bool(st.session_state["auto_prepare"])
    return os.environ.get("SAAS_APP_AUTOPREPARE", "1").strip().lower() not in ("0", "false", "no", "off")


def _env_limit() -> int:
    try:
        return max(0, int(os.environ.get("SAAS_APP_LIMIT", "0")))
    except ValueError:
        return 0


def _model_spec() -> str | None:
    kind = st.radio("Model", list(MODEL_CHOICES), format_func=labels(MODEL_CHOICES), key="sb_model_kind")
    if kind == "default":
        return "default"
    hint = "/path/to/hf-model-folder" if kind == "path" else "e.g. HuggingFaceTB/SmolLM2-360M-Instruct"
    text = st.text_input("Model folder" if kind == "path" else "Hub id", key=f"sb_model_{kind}", placeholder=hint).strip()
    if kind == "hub":
        st.caption("Hub ids need a network; the app runs with HF_HUB_OFFLINE=1 unless started with HF_HUB_OFFLINE=0.")
    return text or None


def _dataset(limit: int | None) -> dict[str, Any] | None:
    """The dataset choice as RunSpec fields; an invalid upload shows its DatasetError and gives None."""
    kind = st.radio("Dataset", list(DATA_CHOICES), format_func=labels(DATA_CHOICES), key="sb_data_kind")
    if kind == "demo":
        demos = {d.spec: d for d in resources.demos()}
        picked = st.selectbox("Demo behaviour", list(demos), key="sb_demo",
                              format_func=lambda spec: f"{demos[spec].title} ({demos[spec].n} pairs)",
                              help="Written for this project: full-sentence reply pairs, about 20% of them with "
                                   "annotated flaws (the method never reads the annotations).")
        return {"dataset": picked}
    if kind == "path":
        found = resources.dataset_files(str(SHARED_DATA))
        picked = st.selectbox("Found datasets", [""] + found, key="sb_data_found",
                              format_func=lambda p: p.replace(str(SHARED_DATA) + "/", "") if p else "(type a path below)")
        typed = st.text_input("Dataset file", key="sb_data_path", placeholder="persona JSONL, CAA JSON, CSV/JSONL").strip()
        path = typed or picked
        return {"dataset": path} if path else None
    up = st.file_uploader("Dataset file", type=["jsonl", "json", "csv", "tsv", "ndjson"], key="sb_upload")
    if up is None:
        return None
    data = up.getvalue()
    try:
        ds = load_dataset_from_bytes(data, up.name, limit=limit)
    except DatasetError as exc:
        st.error(f"{exc}\n\nFix the file and upload it again.")
        return None
    st.caption(f"{len(ds)} instances, {ds.answer_kind} answers: '{ds.name}'")
    return {"dataset": up.name, "upload": data, "upload_hash": resources.upload_spec(up.name, data).upload_hash}


def _agents() -> dict[str, Any]:
    choices = ["offline", "local"] + (["anthropic"] if state.api_key() else [])
    kind = st.selectbox("Agent backend", choices, format_func=labels(AGENT_CHOICES), key="sb_agents",
                        help="Anthropic appears when ANTHROPIC_API_KEY is set (environment or st.secrets).")
    agent_model = None
    if kind == "local":
        agent_model = st.text_input("Chat model folder (empty: the loaded model)", key="sb_agent_local").strip() or None
    elif kind == "anthropic":
        from saas.agents import DEFAULT_MODEL

        agent_model = st.text_input("Claude model", value=DEFAULT_MODEL, key="sb_agent_claude").strip() or None
    return {"agents": kind, "agent_model": agent_model}


def _prepare(spec: RunSpec, status: Any, auto: bool = False) -> None:
    with status:
        if auto:
            st.caption("Preparing the default run (embedded model, the first demo behaviour, offline agents); "
                       "from the disk cache when present, shared with every other session of this server.")
        progress = progress_bar()
        try:
            run = resources.open_run(spec, None, state.api_key(), progress, retry_failed=True)
        except Exception as exc:  # bad dataset, missing model, ...: a message, not a traceback
            show_error(exc, "Check the model and dataset in the sidebar, then press Prepare again. "
                            "Work already done stays cached.")
            return
        finally:
            progress.clear()
        state.set_spec(spec)
        p = run.prepared
        st.success(f"Ready: {p.lm.name}, '{p.dataset.name}' ({len(p.dataset)} instances, {p.acts.n_layers} layers).")


def _layer_select(run: resources.OpenRun) -> None:
    ss = st.session_state
    best = layer_suggestion(run)[0]
    if ss["layer"] is None:
        ss["layer"] = state.layer(run)
    n = run.prepared.acts.n_layers
    bound(st.selectbox, "Layer", "layer", options=list(range(n)),
          format_func=lambda layer: f"{layer}  (suggested)" if layer == best else str(layer),
          help="Where activations are read and the vector is added. Suggested: the largest standardized "
               "separation of the pairs (see the per-layer chart on the Activations page).")
    st.caption(f"Hint from the layer chart: layer {best}.")


def render(status: Any) -> None:
    """Draw the sidebar; ``status`` is the main-area container where Prepare reports progress."""
    with st.sidebar:
        st.header("Run")
        model = _model_spec()
        default_limit = _env_limit()
        limit = st.number_input("Instances to use (0 = all)", min_value=0, value=default_limit, step=10, key="sb_limit")
        data = _dataset(int(limit) or None)
        agents = _agents()
        ready = model is not None and data is not None
        spec = RunSpec(model=model or "", limit=int(limit) or None, **(data or {}), **agents) if ready else None
        clicked = st.button("Prepare", type="primary", key="prepare", disabled=not ready, width="stretch")
        if clicked and spec is not None:
            _prepare(spec, status)
        elif (spec is not None and state.spec() is None and auto_prepare_enabled()
              and not st.session_state.get("auto_prepared")):
            st.session_state["auto_prepared"] = True  # once per session, even if it fails
            _prepare(spec, status, auto=True)
        current = state.spec()
        if current is None:
            st.caption("Nothing prepared yet.")
            return
        if spec is not None and spec != current:
            st.caption("The settings above changed: press Prepare to use them.")
        try:
            run = state.current_run(progress_bar(status))
        except Exception as exc:
            show_error(exc, "Press Prepare again.")
            return
        assert run is not None
        _layer_select(run)
