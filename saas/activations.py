"""Batched answer-token activations for ALL decoder layers at once, cached on disk.

Every text's read token (:mod:`saas.prompts`) gets the residual-stream output of every decoder layer,
so a layer sweep never needs another extraction. The LM head is skipped (the base model is called,
not the causal-LM wrapper). Padding is on the left with explicit position ids, so batched results
equal one-at-a-time results (to float32 round-off).

Two strategies give the same numbers (``strategy=``):

- ``"shared_prefix"`` (default). The positive and negative texts of an instance share the whole
  prompt and differ only in the answer. The shared token prefix (the longest common prefix of the
  two encodings, clipped so that both read tokens fall after it) runs once, batched and left-padded,
  with ``use_cache=True``; its KV cache is repeated for the two answers
  (``DynamicCache.batch_repeat_interleave``) and the answers run as right-padded continuations with
  the mask ``[prefix mask | continuation mask]`` and position ids that continue from each row's own
  prefix length. Hooks read the layer outputs in the continuation pass only.
- ``"naive"``: every text is a full forward pass (texts sorted by length to cut padding).

Measured with ``bench/extract.py`` (embedded SmolLM2-135M, CPU float32, transformers 5.24, batch 16
texts, all 30 layers, methods interleaved over 3 rounds, 1 torch thread on a shared and heavily
loaded 2-core machine, so absolute rates are low and only the ratios mean much): on 200 persona
pairs (prompt ~78 tokens, one-token answers) shared_prefix ran 2.9 pairs/s, the naive path 1.6, a
bare hook-free forward of the naive batches 1.6 and the ``steering-vectors`` package 0.9 (shared /
bare 1.84, shared / steering-vectors 3.15, naive / bare 1.02). On the 90 bundled sentence pairs:
shared / bare 1.40, naive / bare 1.03. The shared path runs the prompt once instead of twice; its
answer continuations cost ~10% of the prompt pass. It differs from the naive path by < 1e-3
(activations up to ~600), the same round-off as batched vs single. It is the default because it is
both faster and equal (tests check it on sentence, Yes/No and (A)/(B) answers, on answers that are
prefixes of each other, and on tiny Llama/Mistral/Qwen2/Gemma/GPT-2/GPT-NeoX models, a
sliding-window Mistral included). The KV-cache argument is named ``cache`` in recent transformers 5.x and
``past_key_values`` before; both are handled. A model that returns no cache (or one that cannot be
repeated) falls back to the naive path with a warning. Instances whose texts share no token run
naively.

Results are cached under ``cache/activations/<key>.safetensors``, where the key hashes the model
fingerprint, every prompt and answer, the chat template, the read rule and the dtype, and not the
strategy (both give the same numbers). Writes are atomic (temporary file + rename); a corrupted file
is reported, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import inspect
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
from saas.prompts import Encoded, encode, template_signature

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


def _pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists; returns ids [B, T] and attention mask [B, T]."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def base_model(lm: LoadedModel) -> torch.nn.Module:
    """The transformer without its LM head (extraction does not need the vocabulary matmul)."""
    return getattr(lm.model, "base_model", lm.model)


def _pad_id(lm: LoadedModel) -> int:
    return lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0


def _cache_kwarg(module: torch.nn.Module) -> str:
    """Name of the KV-cache argument: ``cache`` in recent transformers 5.x, ``past_key_values`` before."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


class SharedPrefixUnsupported(RuntimeError):
    """The model cannot continue from a KV cache the way the shared-prefix strategy needs."""


def _returned_cache(out: object) -> object:
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or isinstance(cache, tuple):
        raise SharedPrefixUnsupported("the model returned no KV cache object although use_cache=True was passed")
    return cache


def _base_forward(lm: LoadedModel, **kwargs: object) -> object:
    """Every extraction forward goes through here (tests count calls of this function)."""
    return base_model(lm)(**kwargs)


class _Capture:
    """Forward hooks on every decoder layer that keep ``hidden[rows, cols]`` of each layer's output."""

    def __init__(self, lm: LoadedModel, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.layers = lm.layers
        self.rows, self.cols = rows, cols
        self.captured: list[torch.Tensor] = []
        self.handles: list[object] = []

    def _hook(self, _module: torch.nn.Module, _inp: object, out: object) -> None:
        hidden = out[0] if isinstance(out, tuple) else out  # transformers 5.x returns a plain tensor
        self.captured.append(hidden[self.rows, self.cols].float())

    def __enter__(self) -> _Capture:
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def result(self) -> np.ndarray:
        if len(self.captured) != len(self.layers):
            raise RuntimeError(f"captured {len(self.captured)} layer outputs, expected {len(self.layers)}")
        return torch.stack(self.captured, dim=1).cpu().numpy()


@torch.inference_mode()
def forward_read(lm: LoadedModel, seqs: list[list[int]], read: list[int]) -> np.ndarray:
    """One batched forward; the output of every decoder layer at each row's read token.

    Args:
        seqs: token id lists (unpadded).
        read: for each row, the index in its unpadded ids whose activation is read.

    Returns:
        float32 array [B, n_layers, d].
    """
    ids, mask, pads = _pad_left(seqs, _pad_id(lm))
    device = lm.device
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = torch.arange(len(seqs), device=device)
    cols = torch.tensor([p + r for p, r in zip(pads, read)], device=device)
    with _Capture(lm, rows, cols) as cap:
        _base_forward(lm, input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return cap.result()


@torch.inference_mode()
def forward_read_shared(
    lm: LoadedModel,
    prefixes: list[list[int]],
    continuations: list[list[int]],
    read: list[int],
) -> np.ndarray:
    """Run each prefix once, then its continuations on the prefix's KV cache; read every layer.

    Row ``i`` of the prefix batch is shared by the continuation rows ``i * k .. i * k + k - 1`` with
    ``k = len(continuations) // len(prefixes)`` (k = 2 for a positive and a negative answer).

    Args:
        prefixes: token id lists of the shared parts (unpadded, each non-empty).
        continuations: token id lists that follow their prefix (unpadded, each non-empty).
        read: for each continuation, the index *within the continuation* whose activation is read.

    Returns:
        float32 array [len(continuations), n_layers, d]: the same numbers as :func:`forward_read` on
        ``prefix + continuation`` (to float32 round-off).
    """
    k, rem = divmod(len(continuations), len(prefixes))
    if rem or k < 1:
        raise ValueError(f"{len(continuations)} continuations do not split evenly over {len(prefixes)} prefixes")
    device = lm.device
    pad_id = _pad_id(lm)
    pre_ids, pre_mask, _ = _pad_left(prefixes, pad_id)
    pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
    pre_pos = (pre_mask.cumsum(-1) - 1).clamp(min=0)
    base = base_model(lm)
    out = _base_forward(lm, input_ids=pre_ids, attention_mask=pre_mask, position_ids=pre_pos, use_cache=True)
    cache = _returned_cache(out)
    del out
    if k > 1:
        if not hasattr(cache, "batch_repeat_interleave"):
            raise SharedPrefixUnsupported(f"{type(cache).__name__} cannot be repeated along the batch")
        cache.batch_repeat_interleave(k)
    cont_ids, cont_mask = _pad_right(continuations, pad_id)
    cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
    full_mask = torch.cat([pre_mask.repeat_interleave(k, dim=0), cont_mask], dim=1)
    start = pre_mask.sum(-1).repeat_interleave(k)  # each row's own prefix length
    cont_pos = start[:, None] + torch.arange(cont_ids.shape[1], device=device)[None, :]
    rows = torch.arange(len(continuations), device=device)
    cols = torch.tensor(read, device=device)
    with _Capture(lm, rows, cols) as cap:
        _base_forward(lm, input_ids=cont_ids, attention_mask=full_mask, position_ids=cont_pos,
                      use_cache=True, **{_cache_kwarg(base): cache})
    return cap.result()


STRATEGIES = ("shared_prefix", "naive")
DEFAULT_STRATEGY = "shared_prefix"


def _encode_all(lm: LoadedModel, instances: Sequence[Instance]) -> list[Encoded]:
    """Encodings in the order [pos_0, neg_0, pos_1, neg_1, ...]."""
    tok = lm.tokenizer
    encoded = []
    for inst in instances:
        encoded.append(encode(tok, inst.prompt, inst.positive))
        encoded.append(encode(tok, inst.prompt, inst.negative))
    return encoded


def naive_batches(lm: LoadedModel, instances: Sequence[Instance], batch_size: int) -> list[tuple[list[int], list[list[int]], list[int]]]:
    """The naive path's batches: (text indices, token ids, read indices), texts sorted by length.

    Text ``2 i`` is instance ``i``'s positive, ``2 i + 1`` its negative. Public so that the benchmark
    can time a bare forward of exactly the same batches.
    """
    encoded = _encode_all(lm, instances)
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k].ids))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batches.append((chunk, [encoded[k].ids for k in chunk], [encoded[k].read_index for k in chunk]))
    return batches


def shared_split(pos: Encoded, neg: Encoded) -> int:
    """Length of the prefix that the positive and negative texts share and that may be run once.

    The longest common prefix of the two token lists (not ``answer_start``: a tokenizer may merge
    across the prompt/answer boundary differently for the two answers), clipped so that both read
    tokens lie in the continuations (e.g. answers "It will" / "It will not").
    """
    n = 0
    for a, b in zip(pos.ids, neg.ids):
        if a != b:
            break
        n += 1
    return min(n, pos.read_index, neg.read_index)


def _extract_naive(lm: LoadedModel, instances: Sequence[Instance], batch_size: int, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty((2 * len(instances), lm.n_layers, lm.hidden_size), dtype=np.float32)
    total = len(out)
    done = 0
    for chunk, seqs, read in naive_batches(lm, instances, batch_size):
        out[chunk] = forward_read(lm, seqs, read)
        done += len(chunk)
        if progress:
            progress(done, total, f"Extracting activations: {done}/{total} texts")
    return np.ascontiguousarray(out[0::2]), np.ascontiguousarray(out[1::2])


def _extract_shared(lm: LoadedModel, instances: Sequence[Instance], batch_size: int, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    encoded = _encode_all(lm, instances)
    n = len(instances)
    out = np.empty((2 * n, lm.n_layers, lm.hidden_size), dtype=np.float32)
    split = [shared_split(encoded[2 * i], encoded[2 * i + 1]) for i in range(n)]
    shared = [i for i in range(n) if split[i] > 0]
    lone = [i for i in range(n) if split[i] == 0]  # nothing in common (no chat template, no BOS): run naively
    total = 2 * n
    done = 0
    # batch_size counts texts, as in the naive path: batch_size // 2 instances per prefix pass.
    per = max(1, batch_size // 2)
    shared.sort(key=lambda i: (split[i], max(len(encoded[2 * i].ids), len(encoded[2 * i + 1].ids))))
    for start in range(0, len(shared), per):
        chunk = shared[start : start + per]
        prefixes, conts, read, rows = [], [], [], []
        for i in chunk:
            p = split[i]
            prefixes.append(encoded[2 * i].ids[:p])
            for t in (2 * i, 2 * i + 1):
                conts.append(encoded[t].ids[p:])
                read.append(encoded[t].read_index - p)
                rows.append(t)
        out[rows] = forward_read_shared(lm, prefixes, conts, read)
        done += len(rows)
        if progress:
            progress(done, total, f"Extracting activations: {done}/{total} texts")
    for start in range(0, len(lone), per):
        rows = [t for i in lone[start : start + per] for t in (2 * i, 2 * i + 1)]
        out[rows] = forward_read(lm, [encoded[t].ids for t in rows], [encoded[t].read_index for t in rows])
        done += len(rows)
        if progress:
            progress(done, total, f"Extracting activations: {done}/{total} texts")
    return np.ascontiguousarray(out[0::2]), np.ascontiguousarray(out[1::2])


def _extract(lm: LoadedModel, instances: Sequence[Instance], batch_size: int, progress: Progress | None,
             strategy: str = DEFAULT_STRATEGY) -> tuple[np.ndarray, np.ndarray, str]:
    """(positives, negatives, the strategy actually used)."""
    if strategy == "naive":
        return (*_extract_naive(lm, instances, batch_size, progress), "naive")
    if strategy == "shared_prefix":
        try:
            return (*_extract_shared(lm, instances, batch_size, progress), "shared_prefix")
        except SharedPrefixUnsupported as exc:
            log.warning("shared-prefix extraction is not supported by this model (%s); using the naive path", exc)
            return (*_extract_naive(lm, instances, batch_size, progress), "naive")
    raise ValueError(f"unknown extraction strategy {strategy!r}; choose one of {STRATEGIES}")


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
    strategy: str = DEFAULT_STRATEGY,
) -> ActivationSet:
    """Answer-token activations of all layers for every instance (cached).

    Args:
        lm: the loaded model.
        data: a dataset or a list of instances.
        batch_size: texts per forward pass (positives and negatives are batched together, sorted by
            length).
        progress: ``callable(done, total, message)``; drives tqdm in the CLI and st.progress in the app.
        use_cache: read and write ``cache/activations/``.
        strategy: ``"shared_prefix"`` (default: the prompt runs once, both answers continue on its KV
            cache) or ``"naive"`` (two full forwards). Both give the same numbers within float32
            round-off, so the strategy is not part of the cache key.

    Returns:
        An :class:`ActivationSet` with arrays [N, n_layers, d].
    """
    instances = list(data.instances if isinstance(data, BehaviourDataset) else data)
    if not instances:
        raise ValueError("no instances to extract activations for")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown extraction strategy {strategy!r}; choose one of {STRATEGIES}")
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
    pos, neg, used = _extract(lm, instances, batch_size, progress, strategy)
    acts = ActivationSet(pos, neg, ids, lm.fingerprint, key, time.perf_counter() - t0, False,
                         {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", ""), "strategy": used})
    if use_cache:
        _write_cache(path, acts)
    return acts
