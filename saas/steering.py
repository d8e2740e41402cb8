"""Steering vectors and the hooks that add them to a model's residual stream (Eq. 2).

A :class:`SteeringVector` is a small dataclass: one direction per layer (``{layer: tensor [d]}``)
plus metadata. :meth:`SteeringVector.apply` is a context manager that registers forward hooks on
exactly the chosen decoder layers and removes them in ``finally``::

    with vec.apply(lm, alpha=1.0):
        out = lm.model.generate(...)

Layer convention: layer ``l`` is the OUTPUT of decoder layer ``l`` (0-based), i.e.
``hidden_states[l + 1]`` in transformers' numbering, the same place activations are read
(:mod:`saas.activations`). The hook computes ``h' = h + alpha * v`` there (Eq. 2); ``alpha``
multiplies the vector as extracted, with no re-normalisation.

Position modes (``positions``):

- ``"generated"`` (default): the last prompt token during the prefill forward (sequence length
  > 1; with LEFT padding the last column is every row's last real token) and every token of the
  KV-cached decode steps (sequence length 1). Generation must therefore use the KV cache (the
  transformers default) and left padding (what :func:`saas.models.load_model` sets).
- ``"all"``: every position, prompt included (what llama.cpp does with a control vector).
- a ``LongTensor [B]`` of per-row start indices in padded coordinates: positions ``>= start[b]`` of
  row ``b`` are steered. Meant for one full forward (evaluation steers from the last prompt token
  over the answer tokens this way); in a sequence-length-1 step every row is steered.

Per-row steering (:func:`apply_rows`): several steering vectors in ONE batch, one per row. Row ``b``
adds ``alpha_b * v_b`` (a ``[B, d]`` delta per hooked layer); a row without a vector (the base
model) adds zero, and when the vectors sit at different layers, each layer's hook adds zero for the
rows that have no direction there. The position modes apply to every row as above. This is how
side-by-side generation runs all its columns in one ``generate`` call
(:func:`saas.generation.generate_columns`).

Hooks act only in the thread that entered the context (the model object is usually shared, e.g.
by every session of the app): a forward running concurrently in another thread is not steered.
Streaming generation therefore enters the context inside its generation thread
(:func:`saas.generation.stream_generate`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from saas.models import LoadedModel, find_layers

PositionMode = Literal["generated", "all"]
Positions = PositionMode | torch.Tensor
ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def _as_vector(vec: ArrayLike, name: str = "vector") -> torch.Tensor:
    """A detached float32 CPU tensor [d]; raises on a wrong shape or non-finite values."""
    t = vec.detach() if isinstance(vec, torch.Tensor) else torch.as_tensor(np.asarray(vec))
    t = t.to(device="cpu", dtype=torch.float32)
    if t.ndim == 2 and 1 in t.shape:
        t = t.reshape(-1)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be one-dimensional [d], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return t.contiguous()


@dataclass
class SteeringVector:
    """Per-layer steering directions plus what produced them.

    Attributes:
        vectors: ``{layer: v}``, each ``v`` a float32 CPU tensor [d]; layer ``l`` is the output of
            decoder layer ``l`` (0-based). Several layers steer together (multi-layer steering).
        method: The method that made it (``"SAAS"``, ``"CAA"``, ``"PCA-diff"``, ...).
        model_fingerprint: :attr:`saas.models.LoadedModel.fingerprint` of the source model.
        dataset_hash: :meth:`saas.data.BehaviourDataset.content_hash` of the training data.
        meta: Anything else worth keeping (temperature, kappa, weights summary, split seed...);
            must be JSON-serialisable to be exported.
    """

    vectors: dict[int, torch.Tensor]
    method: str
    model_fingerprint: str = ""
    dataset_hash: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("a steering vector needs at least one layer")
        clean: dict[int, torch.Tensor] = {}
        for layer, vec in self.vectors.items():
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or int(layer) < 0:
                raise ValueError(f"layer indices must be non-negative ints, got {layer!r}")
            clean[int(layer)] = _as_vector(vec, f"vector of layer {layer}")
        dims = {v.shape[0] for v in clean.values()}
        if len(dims) != 1:
            raise ValueError(f"all layers must have the same hidden size, got {sorted(dims)}")
        self.vectors = dict(sorted(clean.items()))

    @classmethod
    def from_array(
        cls,
        vec: ArrayLike,
        layer: int | Sequence[int],
        method: str,
        *,
        model_fingerprint: str = "",
        dataset_hash: str = "",
        **meta: Any,
    ) -> SteeringVector:
        """One direction [d] at one layer (or the same direction at each of several layers)."""
        layers = [layer] if isinstance(layer, (int, np.integer)) else list(layer)
        t = _as_vector(vec)
        return cls({int(lyr): t.clone() for lyr in layers}, method, model_fingerprint, dataset_hash, dict(meta))

    @property
    def layers(self) -> list[int]:
        """The steered layers, ascending."""
        return list(self.vectors)

    @property
    def d(self) -> int:
        """Hidden size."""
        return next(iter(self.vectors.values())).shape[0]

    def numpy(self, layer: int | None = None) -> np.ndarray:
        """The direction at ``layer`` as float32 numpy [d] (``None``: the only layer)."""
        return self._at(layer).numpy().copy()

    def norm(self, layer: int | None = None) -> float:
        """L2 norm at ``layer``; ``None``: the norm over all layers together (sqrt of the sum of
        the squared per-layer norms, i.e. just the layer's norm for a single-layer vector)."""
        if layer is not None:
            return float(self._at(layer).norm())
        return float(math.sqrt(sum(float(v.norm()) ** 2 for v in self.vectors.values())))

    def scaled_to(self, reference: SteeringVector) -> SteeringVector:
        """This vector rescaled, layer by layer, to ``reference``'s norm at the same layer (the
        direction is kept; ``meta["norm_matched_to"]`` records the reference and the factor).

        Raises:
            ValueError: the layers differ, or this vector is zero at a layer.
        """
        if reference.layers != self.layers:
            raise ValueError(f"cannot match norms across layers: {self.layers} vs {reference.layers}")
        scaled: dict[int, torch.Tensor] = {}
        factors: dict[str, float] = {}
        for layer, v in self.vectors.items():
            own = float(v.norm())
            if own == 0.0:
                raise ValueError(f"{self.method} is zero at layer {layer}: it has no direction to rescale")
            factor = float(reference.vectors[layer].norm()) / own
            scaled[layer] = v * factor
            factors[str(layer)] = factor
        meta = dict(self.meta, norm_matched_to=reference.method, norm_factor=factors)
        return SteeringVector(scaled, self.method, self.model_fingerprint, self.dataset_hash, meta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metadata (no tensor values): method, layers, d, norms, hashes, meta."""
        return {
            "method": self.method,
            "layers": self.layers,
            "d": self.d,
            "norms": {str(k): float(v.norm()) for k, v in self.vectors.items()},
            "model_fingerprint": self.model_fingerprint,
            "dataset_hash": self.dataset_hash,
            "layer_convention": "output of decoder layer l, 0-based (transformers hidden_states[l + 1])",
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], vectors: Mapping[int, ArrayLike]) -> SteeringVector:
        """Rebuild from :meth:`to_dict` metadata and the tensors."""
        return cls(
            {int(k): _as_vector(v) for k, v in vectors.items()},
            str(meta.get("method", "")),
            str(meta.get("model_fingerprint", "")),
            str(meta.get("dataset_hash", "")),
            dict(meta.get("meta", {})),
        )

    def _at(self, layer: int | None) -> torch.Tensor:
        if layer is None:
            if len(self.vectors) != 1:
                raise ValueError(f"this vector has layers {self.layers}: name one")
            return next(iter(self.vectors.values()))
        if layer not in self.vectors:
            raise KeyError(f"no direction for layer {layer}; layers: {self.layers}")
        return self.vectors[layer]

    def apply(
        self,
        target: LoadedModel | nn.Module,
        alpha: float,
        positions: Positions = "generated",
    ) -> contextlib.AbstractContextManager[None]:
        """Context manager that adds ``alpha * v`` to the output of each of :attr:`layers`.

        Args:
            target: a :class:`~saas.models.LoadedModel` or a transformers causal LM (its decoder
                layers are found with :func:`saas.models.find_layers`).
            alpha: the multiplier; 0 leaves every output bit-identical.
            positions: ``"generated"``, ``"all"`` or a LongTensor [B] of start indices (see the
                module docstring).

        Raises:
            IndexError: a layer is outside the model.
            ValueError: the hidden size differs from the model's, or ``positions`` is invalid.
        """
        return _steer(target, {k: float(alpha) * v for k, v in self.vectors.items()}, positions)


def _model_layers(target: LoadedModel | nn.Module) -> nn.ModuleList:
    if isinstance(target, LoadedModel):
        return target.layers
    return find_layers(target)[0]


def _check_positions(positions: Positions) -> Positions:
    if isinstance(positions, torch.Tensor):
        if positions.ndim != 1 or positions.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"a positions tensor must be a LongTensor [B], got {positions.dtype} {tuple(positions.shape)}")
        return positions.long()
    if positions not in ("generated", "all"):
        raise ValueError(f"positions must be 'generated', 'all' or a LongTensor [B], got {positions!r}")
    return positions


def _layer_device(layer: nn.Module) -> torch.device:
    for p in layer.parameters():
        return p.device
    return torch.device("cpu")


def _add(hidden: torch.Tensor, delta: torch.Tensor, positions: Positions) -> torch.Tensor:
    """``hidden`` [B, T, d] with ``delta`` added at the chosen positions (out of place).

    ``delta`` is [d] (the same for every row) or [B, d] (row ``b`` adds ``delta[b]``).
    """
    seq = hidden.shape[1]
    if delta.ndim == 2:
        if delta.shape[0] != hidden.shape[0]:
            raise ValueError(f"per-row steering has {delta.shape[0]} rows but the batch has {hidden.shape[0]}")
        step = delta[:, None, :]  # [B, 1, d]
    else:
        step = delta
    if isinstance(positions, str):
        if positions == "all" or seq == 1:
            return hidden + step
        out = hidden.clone()
        out[:, -1:, :] = hidden[:, -1:, :] + step
        return out
    if positions.shape[0] != hidden.shape[0]:
        raise ValueError(f"positions tensor has {positions.shape[0]} rows but the batch has {hidden.shape[0]}")
    if seq == 1:
        return hidden + step
    start = positions.to(hidden.device)
    mask = torch.arange(seq, device=hidden.device)[None, :] >= start[:, None]
    return torch.where(mask[:, :, None], hidden + step, hidden)


@contextlib.contextmanager
def _steer(target: LoadedModel | nn.Module, deltas: dict[int, torch.Tensor], positions: Positions) -> Iterator[None]:
    layers = _model_layers(target)
    positions = _check_positions(positions)
    n = len(layers)
    for layer in deltas:
        if not 0 <= layer < n:
            raise IndexError(f"cannot steer layer {layer}: the model has layers 0..{n - 1}")
    if isinstance(target, LoadedModel):
        d = target.hidden_size
        for layer, delta in deltas.items():
            if delta.shape[-1] != d:
                raise ValueError(f"vector at layer {layer} has size {delta.shape[-1]} but the model's hidden size is {d}")
    owner = threading.get_ident()
    handles = []

    def make_hook(delta: torch.Tensor) -> Any:
        cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

        def hook(_module: nn.Module, _inp: object, out: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            hidden = out[0] if isinstance(out, tuple) else out
            if hidden.shape[-1] != delta.shape[-1]:
                raise ValueError(f"steering vector has size {delta.shape[-1]}, layer output has {hidden.shape[-1]}")
            key = (hidden.dtype, hidden.device)
            if key not in cast:
                cast[key] = delta.to(device=hidden.device, dtype=hidden.dtype)
            new = _add(hidden, cast[key], positions)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return hook

    try:
        for layer, delta in deltas.items():
            module = layers[layer]
            pre = delta.to(_layer_device(module))
            handles.append(module.register_forward_hook(make_hook(pre)))
        yield
    finally:
        for h in handles:
            h.remove()


def row_deltas(rows: Sequence[tuple[SteeringVector | None, float]]) -> dict[int, torch.Tensor]:
    """Per-layer ``[B, d]`` deltas of a batch: row ``b`` of layer ``l`` is ``alpha_b * v_b[l]``, zero
    where row ``b`` has no vector, no direction at ``l`` or ``alpha_b = 0``.

    Raises:
        ValueError: no rows, or the vectors have different hidden sizes.
    """
    if not rows:
        raise ValueError("per-row steering needs at least one row")
    vecs = [v for v, _a in rows if v is not None]
    dims = {v.d for v in vecs}
    if len(dims) > 1:
        raise ValueError(f"the rows' vectors have different hidden sizes: {sorted(dims)}")
    if not vecs:
        return {}
    d = dims.pop()
    layers = sorted({layer for v in vecs for layer in v.layers})
    out: dict[int, torch.Tensor] = {}
    for layer in layers:
        delta = torch.zeros(len(rows), d, dtype=torch.float32)
        for b, (v, alpha) in enumerate(rows):
            if v is not None and layer in v.vectors and alpha != 0:
                delta[b] = float(alpha) * v.vectors[layer]
        out[layer] = delta
    return out


def apply_rows(
    target: LoadedModel | nn.Module,
    rows: Sequence[tuple[SteeringVector | None, float]],
    positions: Positions = "generated",
) -> contextlib.AbstractContextManager[None]:
    """Context manager that steers each batch row with its own vector (module docstring).

    Args:
        target: a :class:`~saas.models.LoadedModel` or a transformers causal LM.
        rows: one ``(vector or None, alpha)`` per batch row, in batch order; every forward inside
            the context must have exactly ``len(rows)`` rows. Row ``b``'s output at a steered layer
            ``l`` becomes ``h_b + alpha_b * v_b[l]``; rows without a vector there are unchanged.
        positions: ``"generated"``, ``"all"`` or a LongTensor [B] of per-row start indices (see the
            module docstring); a start tensor lets rows use different modes in one batch.

    Raises:
        IndexError: a layer is outside the model.
        ValueError: sizes disagree, or ``positions`` is invalid.
    """
    return _steer(target, row_deltas(rows), positions)


def match_norms(vectors: Mapping[str, SteeringVector], reference: str = "caa") -> dict[str, SteeringVector]:
    """Every vector rescaled to the norm of ``vectors[reference]`` at the same layer (the
    norm-matched comparison, DESIGN.md section 5): only the directions differ afterwards, so a
    method cannot win by being longer. The reference itself is returned unchanged, and so is a
    vector that is zero at some layer (it has no direction to rescale; e.g. PCA-diff oriented onto a
    mean it is orthogonal to): callers see its zero norm and skip it.

    Raises:
        KeyError: no ``reference`` vector.
    """
    if reference not in vectors:
        raise KeyError(f"no {reference!r} vector to match the norms to; vectors: {sorted(vectors)}")
    ref = vectors[reference]

    def matched(name: str, vec: SteeringVector) -> SteeringVector:
        if name == reference or any(float(v.norm()) == 0.0 for v in vec.vectors.values()):
            return vec
        return vec.scaled_to(ref)

    return {name: matched(name, vec) for name, vec in vectors.items()}


def cosine_matrix(vectors: Mapping[str, ArrayLike | SteeringVector]) -> tuple[list[str], np.ndarray]:
    """Pairwise cosine similarity between named vectors.

    Args:
        vectors: ``{name: v}``; ``v`` is an array [d] or a :class:`SteeringVector` (its layers'
            directions concatenated, so multi-layer vectors compare over all their layers; vectors
            must then share the same layers).

    Returns:
        (names, matrix [M, M]) with ``cos(u, v) = u.v / (|u| |v|)``; a zero vector has cosine 0
        with everything (1 with itself).
    """
    names = list(vectors)
    rows = []
    for name in names:
        v = vectors[name]
        if isinstance(v, SteeringVector):
            arr = np.concatenate([v.numpy(lyr) for lyr in v.layers]).astype(np.float64)
        else:
            arr = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64).reshape(-1)
        rows.append(arr)
    if len({r.shape[0] for r in rows}) > 1:
        raise ValueError(f"vectors have different sizes: {[r.shape[0] for r in rows]}")
    if not rows:
        return names, np.zeros((0, 0))
    mat = np.stack(rows)
    norms = np.linalg.norm(mat, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = mat / safe[:, None]
    cos = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return names, cos
