"""Files the user can download (vectors, GGUF, the run bundle) and figures saved by ``saas reproduce``.

No streamlit here: the Evaluation page passes these functions to ``st.download_button`` as
callables, so the bytes are made only when the user clicks.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from saas.paths import REPO_ROOT
from saas.pipeline import MethodResult, Prepared, write_run
from saas.steering import SteeringVector

RESULTS_DIR = REPO_ROOT / "results"


def vector_zip(vec: SteeringVector, name: str) -> bytes:
    """``<name>.safetensors`` + ``<name>.json`` (:func:`saas.export.save_vector`) in one zip."""
    from saas.export import save_vector

    with tempfile.TemporaryDirectory() as tmp:
        save_vector(vec, Path(tmp) / name)
        return _zip_folder(Path(tmp))


def vector_gguf(vec: SteeringVector, name: str) -> bytes:
    """A llama.cpp control vector (:func:`saas.export.save_gguf`)."""
    from saas.export import save_gguf

    with tempfile.TemporaryDirectory() as tmp:
        return save_gguf(vec, Path(tmp) / f"{name}.gguf").read_bytes()


def run_bundle(prepared: Prepared, result: MethodResult, shrinkage: str | float = "ledoit-wolf") -> bytes:
    """The whole run as :func:`saas.pipeline.write_run` writes it, zipped.

    ``config.json`` records the settings the result was computed with (layer, kappa, axis,
    consistency, shrinkage, temperature), not the run's defaults.
    """
    el = result.eligibility
    config = dataclasses.replace(prepared.config, layer=result.layer, kappa=float(el.kappa), axis=el.axis,
                                 consistency=el.consistency, shrinkage=shrinkage,
                                 temperature=float(result.temperature))
    with tempfile.TemporaryDirectory() as tmp:
        write_run(dataclasses.replace(prepared, config=config), result, Path(tmp) / "run")
        return _zip_folder(Path(tmp))


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()


def saved_figures(root: Path = RESULTS_DIR) -> dict[str, list[Path]]:
    """Plotly JSON files under ``results/<run>/`` (written by ``saas reproduce``), by run folder."""
    out: dict[str, list[Path]] = {}
    if not root.is_dir():
        return out
    for f in sorted(root.glob("*/**/*.json")):
        if f.stat().st_size < 20_000_000 and _looks_like_figure(f):
            out.setdefault(f.relative_to(root).parts[0], []).append(f)
    return out


def _looks_like_figure(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8", errors="ignore")[:2000]
    except OSError:
        return False
    return '"data"' in head and ('"layout"' in head or head.lstrip().startswith("{"))


def load_figure(path: Path) -> Any:
    import plotly.io as pio

    return pio.read_json(str(path))
