"""Saving and loading steering vectors: safetensors + JSON, and llama.cpp GGUF control vectors.

safetensors: ``<path>.safetensors`` holds one float32 tensor ``"layer.{l}"`` per layer (the JSON
metadata is also copied into the file's header under ``"saas"``, so the file alone suffices) and
``<path>.json`` holds :meth:`saas.steering.SteeringVector.to_dict`. The round trip is exact.

GGUF control vector (what llama.cpp's ``--control-vector`` and repeng's
``ControlVector.import_gguf`` read): ``general.architecture = "controlvector"``, the string
``controlvector.model_hint``, the uint32 ``controlvector.layer_count`` (the number of direction
tensors, as repeng writes it) and one 1-D float32 tensor ``"direction.{N}"`` per layer.

Layer index convention, checked against the sources:

- llama.cpp ``common/common.cpp`` ``common_control_vector_load_one`` parses ``direction.N``,
  rejects ``N == 0`` ("invalid (zero) direction tensor layer index") and stores the tensor at
  ``data[n_embd * (N - 1)]`` ("layer 1 at [0]"); the control-vector ``apply`` in
  ``src/llama-adapter.cpp`` (``llama_adapter_cvec``, formerly ``llama_control_vector``) copies
  ``data[n_embd * (il - 1)]`` into ``tensors[il]`` for ``il = 1 .. n_layer - 1`` ("buffer doesn't
  have data for layer 0, since it's never present"); and every model graph ends decoder layer
  ``il`` (its loop ``for (int il = 0; il < n_layer; ++il)``) with ``cur = build_cvec(cur, il);
  cb(cur, "l_out", il)``, i.e. ``direction.N`` is added to the OUTPUT of 0-based decoder layer N.
- repeng (``repeng/control.py``) wraps ``model.layers[i]`` and adds its direction ``i`` to that
  block's output; ``repeng/extract.py`` ``export_gguf`` writes it as ``direction.{i}`` unchanged.

Our layer ``l`` is also the output of 0-based decoder layer ``l`` (transformers'
``hidden_states[l + 1]``), so the mapping is the identity: ``direction.{l}``. The one gap:
llama.cpp cannot steer the output of layer 0, so :func:`save_gguf` refuses a vector with layer 0.
Note that llama.cpp adds the vector at every position, prompt included, which corresponds to
``positions="all"`` here, not to the default ``"generated"`` mode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saas.steering import SteeringVector

GGUF_ARCH = "controlvector"
FORMATS = ("gguf", "safetensors")


class ExportError(ValueError):
    """An export request that cannot be met; the message says why and what to do."""


def _stem(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in suffixes else p


def save_vector(vec: SteeringVector, path: str | Path) -> Path:
    """Write ``<path>.safetensors`` (tensors ``"layer.{l}"``) and ``<path>.json`` (metadata).

    ``path`` may end in ``.safetensors`` or ``.json`` or have no suffix. Parent folders are
    created. Returns the ``.safetensors`` path.
    """
    stem = _stem(path, (".safetensors", ".json"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = vec.to_dict()
    text = json.dumps(meta, indent=2, sort_keys=True)
    tensors = {f"layer.{layer}": v.contiguous() for layer, v in vec.vectors.items()}
    st = stem.with_name(stem.name + ".safetensors")
    save_file(tensors, str(st), metadata={"saas": json.dumps(meta, sort_keys=True), "format": "pt"})
    stem.with_name(stem.name + ".json").write_text(text + "\n")
    return st


def load_vector(path: str | Path) -> SteeringVector:
    """Read a vector written by :func:`save_vector` (``path`` with or without suffix).

    The metadata comes from ``<path>.json`` when present, else from the safetensors header.
    """
    stem = _stem(path, (".safetensors", ".json"))
    st = stem.with_name(stem.name + ".safetensors")
    if not st.is_file():
        raise FileNotFoundError(f"no steering vector file {st}")
    vectors: dict[int, torch.Tensor] = {}
    with safe_open(str(st), framework="pt") as f:
        header = dict(f.metadata() or {})
        for name in f.keys():
            prefix, _, idx = name.partition(".")
            if prefix != "layer" or not idx.isdigit():
                raise ValueError(f"{st}: unexpected tensor {name!r} (expected 'layer.<int>')")
            vectors[int(idx)] = f.get_tensor(name)
    js = stem.with_name(stem.name + ".json")
    meta: dict[str, Any] = json.loads(js.read_text()) if js.is_file() else json.loads(header.get("saas", "{}"))
    return SteeringVector.from_dict(meta, vectors)


def save_gguf(vec: SteeringVector, path: str | Path, model_hint: str = "llama") -> Path:
    """Write a llama.cpp control vector (``.gguf`` added when ``path`` has no suffix).

    Tensor ``direction.{l}`` holds our layer ``l`` unchanged (see the module docstring for the
    convention). The vector is written as extracted: llama.cpp's ``--control-vector-scaled FILE
    ALPHA`` then plays the role of alpha. Our metadata rides along as the string ``saas.meta``.

    Raises:
        ValueError: the vector has layer 0 (llama.cpp cannot steer it).
    """
    import gguf

    if 0 in vec.vectors:
        raise ValueError("llama.cpp control vectors cannot steer the output of layer 0 (direction.0 is rejected); "
                         "use a vector from layer >= 1")
    p = Path(path)
    if not p.suffix:
        p = p.with_suffix(".gguf")
    p.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(p), GGUF_ARCH)
    writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
    writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(vec.vectors))
    writer.add_string("saas.meta", json.dumps(vec.to_dict(), sort_keys=True))
    for layer, v in vec.vectors.items():
        writer.add_tensor(f"direction.{layer}", v.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return p


def _field_str(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not len(field.parts):
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def load_gguf(path: str | Path) -> SteeringVector:
    """Read a GGUF control vector (ours, repeng's or llama.cpp's cvector-generator's).

    ``direction.{N}`` becomes layer ``N``. ``method`` and the rest of the metadata come from
    ``saas.meta`` when present; otherwise ``method = "gguf"`` and ``meta["model_hint"]``.
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = _field_str(reader, "general.architecture")
    if arch != GGUF_ARCH:
        raise ValueError(f"{path}: general.architecture is {arch!r}, not {GGUF_ARCH!r}: not a control vector")
    vectors: dict[int, np.ndarray] = {}
    for t in reader.tensors:
        prefix, _, idx = t.name.partition(".")
        if prefix != "direction" or not idx.isdigit():
            raise ValueError(f"{path}: unexpected tensor {t.name!r} (expected 'direction.<int>')")
        vectors[int(idx)] = np.array(t.data, dtype=np.float32).reshape(-1)
    if not vectors:
        raise ValueError(f"{path}: no direction tensors")
    raw = _field_str(reader, "saas.meta")
    hint = _field_str(reader, f"{GGUF_ARCH}.model_hint")
    if raw:
        meta = json.loads(raw)
        meta.setdefault("meta", {})["model_hint"] = hint
    else:
        meta = {"method": "gguf", "meta": {"model_hint": hint, "source": str(path)}}
    return SteeringVector.from_dict(meta, vectors)


def export_run_vectors(
    vectors: Mapping[str, SteeringVector],
    methods: Sequence[str],
    fmt: str,
    out: str | Path,
    *,
    model_hint: str = "llama",
    run: str = "the run",
) -> dict[str, Path]:
    """Write some of a run's vectors in one format (what ``saas export`` does).

    The rule for ``out``: with ONE method it is the file to write (``.gguf`` resp. ``.safetensors`` +
    ``.json`` added when it has no suffix), unless it is an existing folder or ends with a path
    separator, which then receives ``<method>.<ext>``; with SEVERAL methods it is a folder (created)
    holding one ``<method>.<ext>`` per method. Everything is checked before anything is written.

    Args:
        vectors: ``{method: vector}`` of a run (:attr:`saas.pipeline.RunBundle.vectors`).
        methods: the methods to export, e.g. ``["saas", "caa"]``.
        fmt: ``"gguf"`` (llama.cpp control vector, :func:`save_gguf`) or ``"safetensors"``
            (:func:`save_vector`).
        out: see above.
        model_hint: the GGUF ``controlvector.model_hint``.
        run: the run's name, for messages.

    Returns:
        ``{method: written path}`` (the ``.gguf`` or ``.safetensors`` file).

    Raises:
        ExportError: an unknown format or method (the message lists the run's methods), no method, a
            GGUF export of a vector at layer 0 (llama.cpp cannot steer it), or ``out`` is a file
            where a folder is needed.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    wanted = list(dict.fromkeys(m for m in methods if m))
    if not wanted:
        raise ExportError(f"name at least one method to export; {run} has: {', '.join(sorted(vectors))}")
    missing = [m for m in wanted if m not in vectors]
    if missing:
        raise ExportError(f"{run} has no vector for {', '.join(missing)}; its methods are: {', '.join(sorted(vectors))}")
    if fmt == "gguf":
        at_zero = [m for m in wanted if 0 in vectors[m].vectors]
        if at_zero:
            raise ExportError(f"{', '.join(at_zero)} steer(s) layer 0, which a llama.cpp control vector cannot hold "
                              "(direction.0 is rejected); export with --format safetensors or use a run at layer >= 1")
    ext = ".gguf" if fmt == "gguf" else ".safetensors"
    target = Path(out)
    as_folder = len(wanted) > 1 or target.is_dir() or str(out).endswith(("/", "\\"))
    if as_folder:
        if target.exists() and not target.is_dir():
            raise ExportError(f"{target} is a file; several methods need a folder for --out")
        paths = {m: target / f"{m}{ext}" for m in wanted}
    else:
        paths = {wanted[0]: target}
    written: dict[str, Path] = {}
    for m, path in paths.items():
        if fmt == "gguf":
            written[m] = save_gguf(vectors[m], path, model_hint=model_hint)
        else:
            written[m] = save_vector(vectors[m], path)
    return written
