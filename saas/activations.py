"""Batched answer-token activations for ALL decoder layers at once, cached on disk.

One forward pass per batch of texts reads the residual-stream output of every decoder layer at each
text's read token (:mod:`saas.prompts`), so a layer sweep never needs another extraction. The LM head
is skipped (the base model is called, not the causal-LM wrapper). Texts are sorted by length to cut
padding; padding is on the left with explicit position ids, so batched results equal one-at-a-time
results (to float32 round-off).

Results are cached under ``cache/activations/<key>.safetensors``, where the key hashes the model
fingerprint, every prompt and answer, the chat template, the read rule and the dtype. Writes are
atomic (temporary file + rename); a corrupted file is reported, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from saas.data import BehaviourDataset, Instance
from saas.models import LoadedModel
from saas.paths import cache_dir
from saas.prompts import encode, template_signature

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
CACHE_VERSION = "1"


@dataclass
class ActivationSet:
    """Answer-token activations of every layer for the positive and negative texts.

    Attributes:
        positive: a_i+ for every layer, float32 [N, n_layers, d]; ``positive[:, l]`` is the output of
            decoder layer ``l`` (``hidden_states[l + 1]`` in transformers' numbering).
        negative: a_i-, same shape.
        ids: instance ids, length N, in dataset order.
        model_fingerprint: :attr:`LoadedModel.fingerprint` of the model that produced them.
        key: the cache key.
        seconds: wall time of the extraction (0 when read from cache).
        from_cache: whether it was read from disk.
    """

    positive: np.ndarray
    negative: np.ndarray
    ids: list[str]
    model_fingerprint: str = ""
    key: str = ""
    seconds: float = 0.0
    from_cache: bool = False
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.positive.shape[0]

    @property
    def n_layers(self) -> int:
        return self.positive.shape[1]

    @property
    def d(self) -> int:
        return self.positive.shape[2]

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(a+ [N, d], a- [N, d]) at one layer."""
        self._check_layer(layer)
        return self.positive[:, layer], self.negative[:, layer]

    def diffs(self, layer: int) -> np.ndarray:
        """Local vectors v_i = a_i+ - a_i- at one layer (Eq. 3), [N, d]."""
        self._check_layer(layer)
        return self.positive[:, layer] - self.negative[:, layer]

    def subset(self, indices: Sequence[int]) -> ActivationSet:
        idx = np.asarray(indices, dtype=int)
        return ActivationSet(
            self.positive[idx], self.negative[idx], [self.ids[i] for i in idx],
            self.model_fingerprint, self.key, 0.0, self.from_cache, dict(self.meta),
        )

    def index_of(self, ids: Sequence[str]) -> list[int]:
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise KeyError(f"{len(missing)} ids have no activations, e.g. {missing[:3]}")
        return [pos[i] for i in ids]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range: the model has layers 0..{self.n_layers - 1}")


def cache_key(lm: LoadedModel, instances: Sequence[Instance]) -> str:
    """Content hash of everything that changes the activations."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{lm.fingerprint}|{lm.dtype}|".encode())
    h.update(template_signature(lm.tokenizer).encode())
    for inst in instances:
        h.update(json.dumps([inst.prompt, inst.positive, inst.negative]).encode())
    return h.hexdigest()[:24]


def _pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-pad token lists; returns ids [B, T], attention mask [B, T] and each row's pad length."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pads = []
    for r, s in enumerate(seqs):
        pad = width - len(s)
        ids[r, pad:] = torch.tensor(s, dtype=torch.long)
        mask[r, pad:] = 1
        pads.append(pad)
    return ids, mask, pads


def base_model(lm: LoadedModel) -> torch.nn.Module:
    """The transformer without its LM head (extraction does not need the vocabulary matmul)."""
    return getattr(lm.model, "base_model", lm.model)


@torch.inference_mode()
def forward_read(lm: LoadedModel, seqs: list[list[int]], read: list[int]) -> np.ndarray:
    """One batched forward; the output of every decoder layer at each row's read token.

    Args:
        seqs: token id lists (unpadded).
        read: for each row, the index in its unpadded ids whose activation is read.

    Returns:
        float32 array [B, n_layers, d].
    """
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids, mask, pads = _pad_left(seqs, pad_id)
    device = lm.device
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = torch.arange(len(seqs), device=device)
    cols = torch.tensor([p + r for p, r in zip(pads, read)], device=device)
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inp: object, out: object) -> None:
        hidden = out[0] if isinstance(out, tuple) else out
        captured.append(hidden[rows, cols].float())

    handles = [layer.register_forward_hook(hook) for layer in lm.layers]
    try:
        base_model(lm)(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(captured, dim=1).cpu().numpy()


def _extract(lm: LoadedModel, instances: Sequence[Instance], batch_size: int, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    tok = lm.tokenizer
    encoded = []
    for inst in instances:
        encoded.append(encode(tok, inst.prompt, inst.positive))
        encoded.append(encode(tok, inst.prompt, inst.negative))
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k].ids))
    out = np.empty((len(encoded), lm.n_layers, lm.hidden_size), dtype=np.float32)
    total = len(order)
    done = 0
    for start in range(0, total, batch_size):
        chunk = order[start : start + batch_size]
        acts = forward_read(lm, [encoded[k].ids for k in chunk], [encoded[k].read_index for k in chunk])
        out[chunk] = acts
        done += len(chunk)
        if progress:
            progress(done, total, f"Extracting activations: {done}/{total} texts")
    return np.ascontiguousarray(out[0::2]), np.ascontiguousarray(out[1::2])


def _cache_path(key: str) -> Path:
    return cache_dir("activations") / f"{key}.safetensors"


def _read_cache(path: Path, ids: list[str], n_layers: int, d: int) -> ActivationSet | None:
    if not path.is_file():
        return None
    try:
        arrays = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
        pos, neg = arrays["positive"], arrays["negative"]
        if json.loads(meta.get("ids", "[]")) != ids or pos.shape != (len(ids), n_layers, d) or neg.shape != pos.shape:
            raise ValueError("cached arrays do not match the dataset")
        if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
            raise ValueError("cached arrays contain NaN or inf")
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        log.warning("activation cache file %s is unreadable (%s); recomputing", path.name, exc)
        path.unlink(missing_ok=True)
        return None
    return ActivationSet(pos, neg, ids, meta.get("model_fingerprint", ""), path.stem, 0.0, True, meta)


def _write_cache(path: Path, acts: ActivationSet) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    meta = {"ids": json.dumps(acts.ids), "model_fingerprint": acts.model_fingerprint,
            "seconds": f"{acts.seconds:.3f}", **acts.meta}
    # safetensors writes the raw buffer: strided views must be made contiguous first.
    arrays = {"positive": np.ascontiguousarray(acts.positive), "negative": np.ascontiguousarray(acts.negative)}
    save_file(arrays, str(tmp), metadata=meta)
    os.replace(tmp, path)


def extract_activations(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> ActivationSet:
    """Answer-token activations of all layers for every instance (cached).

    Args:
        lm: the loaded model.
        data: a dataset or a list of instances.
        batch_size: texts per forward pass (positives and negatives are batched together, sorted by
            length).
        progress: ``callable(done, total, message)``; drives tqdm in the CLI and st.progress in the app.
        use_cache: read and write ``cache/activations/``.

    Returns:
        An :class:`ActivationSet` with arrays [N, n_layers, d].
    """
    instances = list(data.instances if isinstance(data, BehaviourDataset) else data)
    if not instances:
        raise ValueError("no instances to extract activations for")
    ids = [i.id for i in instances]
    key = cache_key(lm, instances)
    path = _cache_path(key)
    if use_cache:
        cached = _read_cache(path, ids, lm.n_layers, lm.hidden_size)
        if cached is not None:
            if progress:
                progress(1, 1, "Activations read from cache")
            return cached
    t0 = time.perf_counter()
    pos, neg = _extract(lm, instances, batch_size, progress)
    acts = ActivationSet(pos, neg, ids, lm.fingerprint, key, time.perf_counter() - t0, False,
                         {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", "")})
    if use_cache:
        _write_cache(path, acts)
    return acts
