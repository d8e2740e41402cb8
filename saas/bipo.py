"""BiPO (bi-directional preference optimisation): a steering vector optimised directly.

BiPO optimises a steering vector ``v`` at one layer directly, the model frozen. Per mini-batch a
direction ``d`` in {+1, -1} is drawn at random and the DPO-style loss

    L = -log sigmoid( beta * d * [ (log pi(y+ | q; d v) - log pi_0(y+ | q))
                                 - (log pi(y- | q; d v) - log pi_0(y- | q)) ] )

is minimised with Adam: under ``+v`` the model should prefer y+ over y- more than the unsteered
reference ``pi_0`` does, under ``-v`` it should prefer y-. ``log pi(y | q)`` is the SUM of the answer's
token log-probabilities (the scored tokens of :mod:`saas.evaluation`: first answer token up to the
read token). Steering covers the last prompt token and every answer token, the positions the
evaluation steers, so that BiPO is trained where it is measured.

The answer log-probabilities come from the forward engine's prompt cache
(:class:`saas.forward.PromptCache`): each instance's prompt prefix is run once, and every training
step only runs the last prompt token and the answer tokens, with gradients to ``v``.

Results are cached under ``cache/vectors/bipo-<key>`` (safetensors + JSON, with the training
history), keyed by the model fingerprint, the training instances, the layer and every
hyperparameter: a rerun loads the vector instead of training it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from saas.data import Instance
from saas.forward import PromptCache
from saas.models import LoadedModel
from saas.paths import cache_dir
from saas.steering import SteeringVector

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
BIPO_VERSION = "1"


# --------------------------------------------------------------------------------------------
# BiPO


@dataclass
class BipoConfig:
    """BiPO hyperparameters (all part of the cache key)."""

    epochs: int = 3
    lr: float = 1e-2
    beta: float = 0.1
    batch_size: int = 16
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BipoHistory:
    """What training did: per-step loss, direction sign and margin; per-epoch mean loss; norms."""

    step_loss: list[float] = field(default_factory=list)
    step_sign: list[int] = field(default_factory=list)
    step_margin: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    epoch_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BipoHistory:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@contextlib.contextmanager
def _add_at(lm: LoadedModel, layer: int, delta: torch.Tensor, start: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` [d] (differentiable) to the output of decoder ``layer`` at positions >= start[b]."""
    if not 0 <= layer < lm.n_layers:
        raise IndexError(f"cannot steer layer {layer}: the model has layers 0..{lm.n_layers - 1}")

    owner = threading.get_ident()  # the model may be shared: steer only this thread's forwards

    def hook(_m: nn.Module, _inp: object, out: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        hidden = out[0] if isinstance(out, tuple) else out
        seq = hidden.shape[1]
        mask = torch.arange(seq, device=hidden.device)[None, :] >= start.to(hidden.device)[:, None]
        new = torch.where(mask[:, :, None], hidden + delta.to(hidden.dtype), hidden)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = lm.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def instances_hash(instances: Sequence[Instance]) -> str:
    """Content hash of training instances (ids, prompts, answers, options)."""
    h = hashlib.sha256()
    for inst in instances:
        h.update(json.dumps([inst.id, inst.prompt, inst.positive, inst.negative, list(inst.options)]).encode())
    return h.hexdigest()[:16]


def bipo_key(lm: LoadedModel, instances: Sequence[Instance], layer: int, config: BipoConfig, init: np.ndarray | None) -> str:
    """Cache key: model fingerprint, training data, layer, hyperparameters, initialisation."""
    h = hashlib.sha256()
    init_hash = "zeros" if init is None else hashlib.sha256(np.asarray(init, dtype=np.float32).tobytes()).hexdigest()[:16]
    h.update(json.dumps({"v": BIPO_VERSION, "model": lm.fingerprint, "dtype": str(lm.dtype), "data": instances_hash(instances),
                         "layer": int(layer), "config": config.to_dict(), "init": init_hash}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _cache_paths(key: str) -> tuple[Path, Path]:
    stem = cache_dir("vectors") / f"bipo-{key}"
    return stem, stem.with_name(stem.name + ".history.json")


def train_bipo(
    lm: LoadedModel,
    instances: Sequence[Instance],
    layer: int,
    *,
    epochs: int = 3,
    lr: float = 1e-2,
    beta: float = 0.1,
    batch_size: int = 16,
    seed: int = 0,
    init: np.ndarray | None = None,
    progress: Progress | None = None,
    prompt_cache: PromptCache | None = None,
    use_cache: bool = True,
) -> tuple[SteeringVector, BipoHistory]:
    """Optimise a steering vector at ``layer`` with the bi-directional preference loss (module doc).

    Args:
        lm: the model; its parameters are frozen (``requires_grad_(False)``) during training and
            their flags restored afterwards.
        instances: training instances (y+ = ``positive``, y- = ``negative``).
        layer: decoder layer whose output is steered.
        epochs, lr, beta, batch_size, seed: Adam epochs and learning rate, the DPO beta, instances
            per step, and the seed of the shuffling and of the per-step direction signs.
        init: initial v [d] (default zeros).
        progress: ``progress(done, total, message)`` per step.
        prompt_cache: a :class:`saas.forward.PromptCache` (``keep=True``) holding these instances (by id), to
            reuse its prefix caches; default: one is built here.
        use_cache: read/write the result under ``cache/vectors/``.

    Returns:
        ``(vector, history)``: a single-layer :class:`SteeringVector` (method ``"bipo"``) and the
        per-step / per-epoch losses.
    """
    insts = list(instances)
    if len(insts) < 1:
        raise ValueError("BiPO needs at least one training instance")
    if epochs < 1 or batch_size < 1 or lr <= 0 or beta <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0, beta > 0; got {epochs}, {batch_size}, {lr}, {beta}")
    config = BipoConfig(epochs, lr, beta, batch_size, seed)
    key = bipo_key(lm, insts, layer, config, init)
    stem, hist_path = _cache_paths(key)
    meta = {"n_train": len(insts), "bipo": config.to_dict(), "cache_key": key}
    if use_cache and stem.with_suffix(".safetensors").is_file() and hist_path.is_file():
        from saas.export import load_vector

        try:
            vec = load_vector(stem)
            hist = BipoHistory.from_dict(json.loads(hist_path.read_text()))
            hist.from_cache = True
            if progress:
                progress(1, 1, "BiPO vector read from cache")
            return vec, hist
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            log.warning("BiPO cache %s unreadable (%s); retraining", stem.name, exc)

    t0 = time.perf_counter()
    pc = prompt_cache if prompt_cache is not None else PromptCache(lm, insts, batch_size=batch_size, keep=True)
    idx = pc.index_of([i.id for i in insts])
    # Reference log-probs pi_0 (unsteered), once, no grad.
    ref_lp = pc.logprobs([(None, 0.0)], idx)[0]
    ref = torch.tensor([[lp.sums[0], lp.sums[1]] for lp in ref_lp], dtype=torch.float32, device=lm.device)
    d = lm.hidden_size
    v0 = torch.zeros(d) if init is None else torch.as_tensor(np.asarray(init, dtype=np.float32)).reshape(d)
    v = nn.Parameter(v0.clone().to(lm.device, torch.float32))
    opt = torch.optim.Adam([v], lr=lr)
    rng = np.random.default_rng(seed)
    hist = BipoHistory()
    flags = [p.requires_grad for p in lm.model.parameters()]
    steps_per_epoch = -(-len(idx) // batch_size)
    total = epochs * steps_per_epoch
    step = 0
    try:
        for p in lm.model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            for epoch in range(epochs):
                perm = rng.permutation(len(idx))
                losses = []
                for b0 in range(0, len(perm), batch_size):
                    local = [int(k) for k in perm[b0 : b0 + batch_size]]
                    members = [idx[k] for k in local]
                    sign = 1 if rng.random() < 0.5 else -1
                    block = pc.gather(members)
                    order = block.instances()
                    with _add_at(lm, layer, sign * v, block.steer_from):
                        sums = pc.answer_sums(block, order)
                    slot = {i: k for k, i in enumerate(members)}
                    r = ref[[local[slot[i]] for i in order]]
                    margin = (sums[:, 0] - r[:, 0]) - (sums[:, 1] - r[:, 1])
                    loss = -torch.nn.functional.logsigmoid(beta * sign * margin).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    value = float(loss.detach())
                    losses.append(value)
                    hist.step_loss.append(value)
                    hist.step_sign.append(sign)
                    hist.step_margin.append(float(margin.detach().mean()))
                    if progress:
                        progress(step, total, f"BiPO epoch {epoch + 1}/{epochs}: loss {value:.4f}")
                hist.epoch_loss.append(float(np.mean(losses)))
                hist.epoch_norm.append(float(v.detach().norm()))
    finally:
        for p, f in zip(lm.model.parameters(), flags):
            p.requires_grad_(f)
    hist.seconds = time.perf_counter() - t0
    vec = SteeringVector.from_array(v.detach().float().cpu(), layer, "bipo", model_fingerprint=lm.fingerprint,
                                    dataset_hash=instances_hash(insts), **meta)
    if use_cache:
        from saas.export import save_vector

        save_vector(vec, stem)
        tmp = hist_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(hist.to_dict()) + "\n")
        tmp.replace(hist_path)
    return vec, hist
