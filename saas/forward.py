"""The forward engine: padding, KV prompt caches, all-layer activation capture and answer log-probs.

Every forward pass that reads activations or scores answers runs through this module: extraction
(:mod:`saas.activations`), evaluation (:mod:`saas.evaluation`), BiPO (:mod:`saas.bipo`) and the
reproduction (:mod:`saas.reproduce`). Its public API, bottom up:

- **Padding and plumbing.** :func:`pad_left`, :func:`pad_right`, :func:`pad_id`,
  :func:`base_model` (the transformer without its LM head), :func:`cache_kwarg` (``cache`` in recent
  transformers 5.x, ``past_key_values`` before), :func:`returned_cache`, :func:`base_forward` (every
  extraction forward goes through it), :func:`lm_head_logits` / :func:`separate_head_ok` (the LM head
  applied to a few final hidden states only).
- **Answers.** :func:`candidate_answers` and :class:`AnswerLogprobs`, the token log-probabilities of
  each candidate answer of an instance; :func:`answer_logprobs` computes them with one left-padded
  full forward per batch of ``prompt || answer`` texts (optionally steered).
- **Activation capture.** :class:`LayerCapture` (hooks on every decoder layer), :func:`forward_read`
  (one left-padded batch) and :func:`forward_read_shared` (prefixes once, continuations on their KV
  cache). Both return a :class:`Readout`: the output of every decoder layer at each row's read token
  and, optionally, the log-probabilities of requested next tokens taken from the SAME forward (the
  LM head runs only at the requested positions), which is how extraction gets the answer scores.
- **Prompt cache.** :class:`PromptCache` keeps the KV cache of every instance's prompt up to its last
  token (identical under any steering, alpha and layer) and scores answers under many steering
  conditions by running only the last prompt token and the answer tokens (:func:`layout`,
  :class:`Layout`, :class:`Row`, :class:`Block`, :func:`fork_cache`).

Layer ``l`` is the output of 0-based decoder layer ``l`` (``hidden_states[l + 1]`` in transformers'
numbering). Which answer tokens are scored: from the first answer token up to and including the read
token (:func:`saas.prompts.encode`), each predicted at the position before it.

Prompt caching (:class:`PromptCache`). Steering starts at the last prompt token, so everything before
it (the *prefix*) is the same under every steering vector: its KV cache is computed once per
instance and reused. Only the *suffix* -- the last prompt token plus the answer tokens that predict
the scored tokens -- runs per steering condition. For a Yes/No or an A/B item both answers share that
suffix (``[last prompt token]`` resp. ``[last prompt token, "("]``), so one row of one or two tokens
scores both answers. The numbers equal :func:`answer_logprobs` to float32 round-off (tested). The
token prefix that ALL instances share (chat template, system prompt, a common question stem) is run
once and broadcast; each instance's own remainder is right-padded, so the padding sits between the
prefix and the suffix and is masked out.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from saas.data import BehaviourDataset, Instance
from saas.models import LoadedModel
from saas.prompts import encode
from saas.steering import SteeringVector

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
Condition = tuple[SteeringVector | None, float]
"""A steering condition: ``(vector, alpha)``; ``(None, 0.0)`` is the unsteered model."""
Targets = Sequence[Sequence[tuple[int, int]]]
"""Per row, ``(column, token)`` pairs: score ``log p(token | the row's tokens up to and including column)``."""


# --------------------------------------------------------------------------------------------
# padding and model plumbing


def pad_id(lm: LoadedModel) -> int:
    """The tokenizer's pad id (0 when it has none; padded positions are always masked)."""
    pad = lm.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def pad_left(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-pad token lists.

    Returns:
        ``(ids [B, T], attention mask [B, T], pad length of each row)``; ``T`` is the longest row.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pads = []
    for r, s in enumerate(seqs):
        n = width - len(s)
        ids[r, n:] = torch.tensor(list(s), dtype=torch.long)
        mask[r, n:] = 1
        pads.append(n)
    return ids, mask, pads


def pad_right(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists; returns ``(ids [B, T], attention mask [B, T])``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def left_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] of a left-padded batch: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def base_model(lm: LoadedModel) -> nn.Module:
    """The transformer without its LM head (activation reads do not need the vocabulary matmul)."""
    return getattr(lm.model, "base_model", lm.model)


def cache_kwarg(module: nn.Module) -> str:
    """Name of the KV-cache argument: ``cache`` in recent transformers 5.x, ``past_key_values`` before."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


class SharedPrefixUnsupported(RuntimeError):
    """The model cannot continue from a KV cache the way the shared-prefix strategy needs."""


def returned_cache(out: object) -> Any:
    """The KV cache object of a forward's output (``use_cache=True``).

    Raises:
        SharedPrefixUnsupported: the model returned none (or a legacy tuple).
    """
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or isinstance(cache, tuple):
        raise SharedPrefixUnsupported("the model returned no KV cache object although use_cache=True was passed")
    return cache


def base_forward(lm: LoadedModel, **kwargs: Any) -> Any:
    """One forward of :func:`base_model`; every extraction forward goes through here (tests count calls)."""
    return base_model(lm)(**kwargs)


def lm_head_logits(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final hidden states [M, d] -> logits [M, V], with the final-logit softcapping
    (Gemma 2), ``logit_scale`` (Cohere) or ``logits_scaling`` (Granite) some families apply after it."""
    logits = lm.model.get_output_embeddings()(hidden)
    cfg = lm.model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    scale = getattr(cfg, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    scaling = getattr(cfg, "logits_scaling", None)
    if isinstance(scaling, (int, float)) and scaling != 1:
        logits = logits / scaling
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


_HEAD_OK: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def separate_head_ok(lm: LoadedModel) -> bool:
    """Whether :func:`base_model` followed by :func:`lm_head_logits` reproduces the model's logits.

    Checked once per model object on a short fixed input (the answer is cached); when it fails,
    callers fall back to full forwards with the LM head.
    """
    model = lm.model
    if model in _HEAD_OK:
        return _HEAD_OK[model]
    ok = model.get_output_embeddings() is not None
    if ok:
        vocab = int(model.get_output_embeddings().weight.shape[0])
        ids = (torch.arange(3, 11) * 7919 % max(vocab - 1, 1) + 1)[None, :].to(lm.device)
        with torch.inference_mode():
            full = model(input_ids=ids, use_cache=False).logits[0].float()
            hidden = base_model(lm)(input_ids=ids, use_cache=False).last_hidden_state[0]
            mine = lm_head_logits(lm, hidden).float()
        ok = bool(torch.allclose(full, mine, atol=1e-3 * max(1.0, float(full.abs().max())), rtol=1e-3))
    if not ok:
        log.info("%s: the LM head cannot be applied separately; scoring with full forwards", lm.name)
    _HEAD_OK[model] = ok
    return ok


def _token_logprobs(lm: LoadedModel, hidden: torch.Tensor, rows: Sequence[int], cols: Sequence[int],
                    tokens: Sequence[int]) -> torch.Tensor:
    """``log p(tokens[k] | hidden[rows[k], cols[k]])`` [M] (float32, differentiable when grad is on).

    ``hidden`` [B, T, d] are final hidden states; the LM head runs once per distinct position.
    """
    if not rows:
        return torch.zeros(0, device=hidden.device)
    dev = hidden.device
    unique = list(dict.fromkeys(zip(rows, cols)))
    slot = {pos: k for k, pos in enumerate(unique)}
    ur = torch.tensor([p[0] for p in unique], device=dev)
    uc = torch.tensor([p[1] for p in unique], device=dev)
    lsm = torch.log_softmax(lm_head_logits(lm, hidden[ur, uc]).float(), dim=-1)
    which = torch.tensor([slot[p] for p in zip(rows, cols)], device=dev)
    return lsm[which, torch.tensor(list(tokens), device=dev)]


def _flat_targets(targets: Targets, offset: Sequence[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Flattened (rows, padded columns, tokens) of per-row targets, and each row's target count."""
    rows, cols, toks, counts = [], [], [], []
    for r, row in enumerate(targets):
        for c, t in row:
            rows.append(r)
            cols.append(offset[r] + c)
            toks.append(int(t))
        counts.append(len(row))
    return rows, cols, toks, counts


def _split(flat: torch.Tensor, counts: Sequence[int]) -> list[np.ndarray]:
    values = flat.double().cpu().numpy()
    out, k = [], 0
    for n in counts:
        out.append(values[k : k + n])
        k += n
    return out


# --------------------------------------------------------------------------------------------
# answers


@dataclass
class AnswerLogprobs:
    """Token log-probabilities of each candidate answer of one instance given its prompt.

    Attributes:
        id: The instance id.
        answers: ``[y+, y-, *other options]`` (other options only for multi-option A/B items).
        token_logprobs: Per answer, float64 [n_tokens]: ``log p(token | prompt, earlier tokens)``
            for the answer's scored tokens (first answer token up to and including the read token).
    """

    id: str
    answers: list[str]
    token_logprobs: list[np.ndarray]

    @property
    def sums(self) -> np.ndarray:
        """log P(answer | prompt) per answer, [A]."""
        return np.array([float(t.sum()) for t in self.token_logprobs])

    @property
    def means(self) -> np.ndarray:
        """Mean token log-probability per answer, [A]."""
        return np.array([float(t.mean()) for t in self.token_logprobs])


def candidate_answers(inst: Instance) -> list[str]:
    """``[y+, y-]`` followed by any other options offered in the prompt (multi-option items)."""
    seen = {inst.positive.strip(), inst.negative.strip()}
    extra = [o for o in inst.options if o.strip() not in seen]
    return [inst.positive, inst.negative, *extra]


def _accepts_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def answer_logprobs(
    lm: LoadedModel,
    instances: Sequence[Instance] | BehaviourDataset,
    *,
    vector: SteeringVector | None = None,
    alpha: float = 0.0,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[AnswerLogprobs]:
    """Log-probabilities of every candidate answer of every instance, optionally under steering.

    Every ``prompt || answer`` text is one row; rows are sorted by length, left-padded and run in
    batches of ``batch_size`` (one forward with the LM head per batch, logits kept only for the
    answer positions). Steering, when given, covers positions from the last prompt token onward
    (a per-row start tensor, see :mod:`saas.steering`).

    Returns:
        One :class:`AnswerLogprobs` per instance, in input order.
    """
    items = list(instances.instances if isinstance(instances, BehaviourDataset) else instances)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = lm.tokenizer
    rows: list[tuple[int, int, list[int], int, int]] = []  # (instance, answer, ids, first scored, last scored)
    answers: list[list[str]] = []
    for i, inst in enumerate(items):
        cands = candidate_answers(inst)
        answers.append(cands)
        for a, text in enumerate(cands):
            enc = encode(tok, inst.prompt, text)
            if enc.answer_start < 1:
                raise ValueError(f"instance {inst.id!r}: empty prompt, no position predicts the answer")
            rows.append((i, a, enc.ids, enc.answer_start, enc.read_index))
    out: list[list[np.ndarray | None]] = [[None] * len(c) for c in answers]
    order = sorted(range(len(rows)), key=lambda k: len(rows[k][2]))
    keep_ok = _accepts_logits_to_keep(lm.model)
    device = lm.device
    total = len(order)
    for b0 in range(0, total, batch_size):
        chunk = [rows[k] for k in order[b0 : b0 + batch_size]]
        ids, mask, pads = pad_left([r[2] for r in chunk], pad_id(lm))
        width = ids.shape[1]
        ids, mask = ids.to(device), mask.to(device)
        # Column of each row's last prompt token (padded coordinates): steering starts there.
        start = torch.tensor([p + r[3] - 1 for p, r in zip(pads, chunk)], dtype=torch.long)
        first_col = int(start.min())
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": left_positions(mask),
                                  "use_cache": False}
        offset = 0
        if keep_ok:
            kwargs["logits_to_keep"] = width - first_col
            offset = first_col
        steer = vector.apply(lm, alpha, start) if vector is not None else contextlib.nullcontext()
        with steer:
            logits = lm.model(**kwargs).logits
        for r, (pad, row) in enumerate(zip(pads, chunk)):
            i, a, seq, first, last = row
            targets = torch.tensor(seq[first : last + 1], device=logits.device)
            cols = torch.arange(pad + first - 1, pad + last, device=logits.device) - offset
            logp = torch.log_softmax(logits[r, cols].float(), dim=-1)
            out[i][a] = logp.gather(-1, targets[:, None])[:, 0].double().cpu().numpy()
        if progress:
            done = min(b0 + batch_size, total)
            progress(done, total, f"Scoring answers: {done}/{total} texts")
    return [AnswerLogprobs(inst.id, answers[i], [t for t in out[i] if t is not None]) for i, inst in enumerate(items)]


# --------------------------------------------------------------------------------------------
# activation capture


class LayerCapture:
    """Forward hooks on every decoder layer that keep ``hidden[rows, cols]`` of each layer's output.

    Use as a context manager around one forward; :meth:`result` stacks the captures to
    float32 [len(rows), n_layers, d]. The hooks return nothing (they never change the output), and,
    like the steering hooks, they act only in the thread that entered the context: the model is
    shared (every session of the app), and a forward of another thread must not land in this
    capture (measured: two sessions extracting at once crashed or mixed their activations before).
    """

    def __init__(self, lm: LoadedModel, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.layers = lm.layers
        self.rows, self.cols = rows, cols
        self.captured: list[torch.Tensor] = []
        self.handles: list[Any] = []
        self.owner = threading.get_ident()

    def _hook(self, _module: nn.Module, _inp: object, out: Any) -> None:
        if threading.get_ident() != self.owner:
            return
        hidden = out[0] if isinstance(out, tuple) else out  # transformers 5.x returns a plain tensor
        self.captured.append(hidden[self.rows, self.cols].float())

    def __enter__(self) -> LayerCapture:
        self.owner = threading.get_ident()
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def result(self) -> np.ndarray:
        """float32 [len(rows), n_layers, d]."""
        if len(self.captured) != len(self.layers):
            raise RuntimeError(f"captured {len(self.captured)} layer outputs, expected {len(self.layers)}")
        return torch.stack(self.captured, dim=1).cpu().numpy()


@dataclass
class Readout:
    """What one read returns.

    Attributes:
        acts: float32 [B, n_layers, d]: the output of every decoder layer at each row's read token.
        logprobs: per row, float64 [n_targets]: ``log p(token | tokens up to column)`` for the row's
            requested ``(column, token)`` targets (empty arrays when none were requested).
        prefix_logprobs: the same for the prefix rows of :func:`forward_read_shared` (empty for
            :func:`forward_read`).
    """

    acts: np.ndarray
    logprobs: list[np.ndarray]
    prefix_logprobs: list[np.ndarray]


def _no_targets(n: int) -> list[list[tuple[int, int]]]:
    return [[] for _ in range(n)]


@torch.inference_mode()
def forward_read(lm: LoadedModel, seqs: Sequence[Sequence[int]], read: Sequence[int],
                 targets: Targets | None = None) -> Readout:
    """One batched, left-padded forward; every decoder layer's output at each row's read token.

    Args:
        seqs: token id lists (unpadded).
        read: for each row, the index in its unpadded ids whose activation is read.
        targets: optionally, per row, ``(column, token)`` pairs in unpadded coordinates whose
            next-token log-probability is taken from this same forward (LM head at those positions only).

    Returns:
        A :class:`Readout` with ``acts`` [B, n_layers, d].
    """
    ids, mask, pads = pad_left(seqs, pad_id(lm))
    device = lm.device
    ids, mask = ids.to(device), mask.to(device)
    rows = torch.arange(len(seqs), device=device)
    cols = torch.tensor([p + r for p, r in zip(pads, read)], device=device)
    with LayerCapture(lm, rows, cols) as cap:
        out = base_forward(lm, input_ids=ids, attention_mask=mask, position_ids=left_positions(mask), use_cache=False)
    acts = cap.result()
    tr, tc, tt, counts = _flat_targets(targets or _no_targets(len(seqs)), pads)
    lps = _split(_token_logprobs(lm, out.last_hidden_state, tr, tc, tt), counts) if tr else [np.zeros(0)] * len(seqs)
    return Readout(acts, lps, [])


@torch.inference_mode()
def forward_read_shared(
    lm: LoadedModel,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    read: Sequence[int],
    targets: Targets | None = None,
    prefix_targets: Targets | None = None,
) -> Readout:
    """Run each prefix once, then its continuations on the prefix's KV cache; read every layer.

    Row ``i`` of the prefix batch is shared by the continuation rows ``i * k .. i * k + k - 1`` with
    ``k = len(continuations) // len(prefixes)`` (k = 2 for a positive and a negative answer). The
    prefixes run left-padded with ``use_cache=True``; the cache is repeated ``k`` times
    (``batch_repeat_interleave``) and the continuations run right-padded with the mask
    ``[prefix mask | continuation mask]`` and position ids that continue from each row's own prefix
    length. Activations are read in the continuation pass only.

    Args:
        prefixes: token id lists of the shared parts (unpadded, each non-empty).
        continuations: token id lists that follow their prefix (unpadded, each non-empty).
        read: for each continuation, the index *within the continuation* whose activation is read.
        targets: optionally, per continuation, ``(column within the continuation, token)`` pairs to
            score (see :func:`forward_read`).
        prefix_targets: optionally, per prefix, ``(column within the prefix, token)`` pairs to score.

    Returns:
        A :class:`Readout`: ``acts`` [len(continuations), n_layers, d], the same numbers as
        :func:`forward_read` on ``prefix + continuation`` (to float32 round-off).

    Raises:
        SharedPrefixUnsupported: the model returns no repeatable KV cache.
    """
    k, rem = divmod(len(continuations), len(prefixes))
    if rem or k < 1:
        raise ValueError(f"{len(continuations)} continuations do not split evenly over {len(prefixes)} prefixes")
    device = lm.device
    pad = pad_id(lm)
    pre_ids, pre_mask, pre_pads = pad_left(prefixes, pad)
    pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
    out = base_forward(lm, input_ids=pre_ids, attention_mask=pre_mask, position_ids=left_positions(pre_mask),
                       use_cache=True)
    cache = returned_cache(out)
    tr, tc, tt, counts = _flat_targets(prefix_targets or _no_targets(len(prefixes)), pre_pads)
    prefix_lps = _split(_token_logprobs(lm, out.last_hidden_state, tr, tc, tt), counts) if tr else \
        [np.zeros(0)] * len(prefixes)
    del out
    if k > 1:
        if not hasattr(cache, "batch_repeat_interleave"):
            raise SharedPrefixUnsupported(f"{type(cache).__name__} cannot be repeated along the batch")
        cache.batch_repeat_interleave(k)
    cont_ids, cont_mask = pad_right(continuations, pad)
    cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
    full_mask = torch.cat([pre_mask.repeat_interleave(k, dim=0), cont_mask], dim=1)
    start = pre_mask.sum(-1).repeat_interleave(k)  # each row's own prefix length
    cont_pos = start[:, None] + torch.arange(cont_ids.shape[1], device=device)[None, :]
    rows = torch.arange(len(continuations), device=device)
    cols = torch.tensor(list(read), device=device)
    with LayerCapture(lm, rows, cols) as cap:
        out = base_forward(lm, input_ids=cont_ids, attention_mask=full_mask, position_ids=cont_pos,
                           use_cache=True, **{cache_kwarg(base_model(lm)): cache})
    acts = cap.result()
    tr, tc, tt, counts = _flat_targets(targets or _no_targets(len(continuations)), [0] * len(continuations))
    lps = _split(_token_logprobs(lm, out.last_hidden_state, tr, tc, tt), counts) if tr else \
        [np.zeros(0)] * len(continuations)
    return Readout(acts, lps, prefix_lps)


# --------------------------------------------------------------------------------------------
# generation prompts


@torch.inference_mode()
def shared_prompt_cache(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any | None:
    """The KV cache of all but the last column of a left-padded generation batch, each distinct row
    run once.

    Side-by-side columns repeat the same prompt (base, CAA, SAAS share one text; prompted columns
    another). Runs the distinct rows' first ``T - 1`` columns once (unsteered: in the ``"generated"``
    position mode steering starts at the last prompt token) and repeats the cache rows
    (``batch_select_indices``), so that ``generate`` only runs the last prompt column and the new
    tokens. Greedy outputs are the same as without it (tested).

    Args:
        input_ids, attention_mask: the batch [B, T], left-padded.

    Returns:
        A cache with ``B`` rows of ``T - 1`` columns, or ``None`` when sharing saves nothing (every
        row distinct, or ``T < 2``) or the model's cache cannot be reused this way.
    """
    b, t = input_ids.shape
    if t < 2:
        return None
    keys = [tuple(r) for r in torch.cat([input_ids, attention_mask], dim=1).tolist()]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == b:
        return None
    first = [keys.index(k) for k in distinct]
    which = torch.tensor([distinct.index(k) for k in keys], device=input_ids.device)
    ids, mask = input_ids[first, :-1], attention_mask[first, :-1]
    try:
        out = base_model(lm)(input_ids=ids, attention_mask=mask, position_ids=left_positions(mask), use_cache=True)
        cache = returned_cache(out)
        if not hasattr(cache, "batch_select_indices"):
            return None
        cache.batch_select_indices(which)
    except (SharedPrefixUnsupported, TypeError, ValueError, NotImplementedError) as exc:
        log.info("prompt sharing unavailable for %s (%s); running the full prompts", lm.name, exc)
        return None
    return cache


# --------------------------------------------------------------------------------------------
# prompt cache: layouts


@dataclass(frozen=True)
class Row:
    """One suffix row of an instance: the tokens run per steering condition and what they score.

    Attributes:
        ids: suffix input tokens (last prompt token, then answer tokens before the last scored one).
        steer_from: index in ``ids`` where steering starts (the last prompt token).
        targets: ``(candidate, columns in ids, target tokens)`` for each answer this row scores.
    """

    ids: tuple[int, ...]
    steer_from: int
    targets: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]


@dataclass(frozen=True)
class Layout:
    """How an instance splits for the prompt cache.

    Attributes:
        prefix: the cached tokens (everything before the last prompt token).
        rows: the scoring rows (:class:`Row`), deduplicated across candidates.
        answers: the candidate answers (:func:`candidate_answers`).
        reads: for y+ and y-, the suffix up to and including the read token and the read token's
            column in it (activation reads).
    """

    prefix: tuple[int, ...]
    rows: tuple[Row, ...]
    answers: tuple[str, ...]
    reads: tuple[tuple[tuple[int, ...], int], ...] = ()


def layout(tokenizer: Any, inst: Instance) -> Layout:
    """Split an instance's texts into a shared prefix and per-answer suffix rows (deduplicated).

    The prefix is the longest token prefix that all candidate texts share, cut before the last
    prompt token (where steering starts); a candidate whose texts would merge tokens across the
    prompt/answer boundary just gets a longer suffix, steered from its own last prompt token.
    """
    answers = candidate_answers(inst)
    encs = [encode(tokenizer, inst.prompt, a) for a in answers]
    cut = min(e.answer_start - 1 for e in encs)
    for e in encs[1:]:
        k = 0
        for a, b in zip(encs[0].ids, e.ids):
            if a != b:
                break
            k += 1
        cut = min(cut, k)
    if cut < 1:
        raise ValueError(f"instance {inst.id!r}: the prompt has no token before its last one; cannot cache a prefix")
    groups: dict[tuple[tuple[int, ...], int], list[tuple[int, tuple[int, ...], tuple[int, ...]]]] = {}
    for c, e in enumerate(encs):
        suffix = tuple(e.ids[cut : e.read_index])
        cols = tuple(range(e.answer_start - 1 - cut, e.read_index - cut))
        tokens = tuple(e.ids[e.answer_start : e.read_index + 1])
        groups.setdefault((suffix, e.answer_start - 1 - cut), []).append((c, cols, tokens))
    rows = tuple(Row(ids, start, tuple(t)) for (ids, start), t in groups.items())
    reads = tuple((tuple(e.ids[cut : e.read_index + 1]), e.read_index - cut) for e in encs[:2])
    return Layout(tuple(encs[0].ids[:cut]), rows, tuple(answers), reads)


@dataclass
class Block:
    """Prefix KV caches of some rows, ready for suffix forwards.

    ``cache`` holds ``R`` rows of ``T`` prefix columns; ``prefix_mask`` [R, T] marks the real ones
    (padding may sit anywhere in the prefix), ``prefix_len`` [R] counts them (= the position id of
    the first suffix token). ``suffix_ids``/``suffix_mask`` [R, S] are right-padded, ``steer_from``
    [R] is the steering start within the suffix. ``rows[r] = (instance, row of its layout)``.
    """

    cache: Any
    prefix_mask: torch.Tensor
    prefix_len: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor
    steer_from: torch.Tensor
    rows: list[tuple[int, int]]

    @property
    def width(self) -> int:
        return int(self.prefix_mask.shape[1])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values))

    def instances(self) -> list[int]:
        """The instances with rows in this block, in row order, each once."""
        return list(dict.fromkeys(i for i, _ in self.rows))


def fork_cache(cache: Any, keys: list[torch.Tensor] | None = None, values: list[torch.Tensor] | None = None) -> Any:
    """A cache object that shares (or replaces) the tensors of ``cache`` but not its layer objects.

    A forward appends to its cache by concatenation (``DynamicLayer.update`` reassigns its tensors),
    so running a suffix on a fork leaves the original prefix cache untouched.
    """
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    if keys is not None and values is not None:
        for layer, k, v in zip(new.layers, keys, values):
            layer.keys, layer.values = k, v
    return new


# --------------------------------------------------------------------------------------------
# prompt cache


class PromptCache:
    """Prefix KV caches of a set of instances, for scoring their answers under many steering conditions.

    Args:
        lm: the model (any device / dtype; the cache lives where the model is).
        instances: the instances; :meth:`index_of` maps ids to positions.
        batch_size: instances per prefix forward.
        keep: hold every prefix cache in memory (needed for :meth:`gather`, i.e. subsets and BiPO;
            memory ~ N x prompt tokens x layers x 2 x kv-width x dtype size). With ``keep=False``
            :meth:`logprobs` computes each batch's prefix, runs every condition on it, and drops it.
        score_tokens: suffix positions per scoring forward (rows x longest suffix) when ``keep``.
        progress: ``progress(done, total, message)`` for the prefix forwards.
    """

    def __init__(self, lm: LoadedModel, instances: Sequence[Instance], *, batch_size: int = 16, keep: bool = True,
                 score_tokens: int = 64, progress: Progress | None = None) -> None:
        if not instances:
            raise ValueError("no instances")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lm = lm
        self.instances = list(instances)
        self.batch_size = batch_size
        self.keep = keep
        self.layouts = [layout(lm.tokenizer, inst) for inst in self.instances]
        self._ids = {inst.id: k for k, inst in enumerate(self.instances)}
        self.pad_id = pad_id(lm)
        self._kw = cache_kwarg(lm.model)
        self._base_kw = cache_kwarg(base_model(lm))
        # The token prefix every instance shares, run once; each instance keeps >= 1 own token.
        prefixes = [lay.prefix for lay in self.layouts]
        common = min(len(p) for p in prefixes) - 1
        for p in prefixes[1:]:
            k = 0
            while k < common and p[k] == prefixes[0][k]:
                k += 1
            common = k
        self.common = prefixes[0][: max(common, 0)]
        self._common_cache: Any = None
        order = sorted(range(len(self.instances)), key=lambda i: len(prefixes[i]))
        self.batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
        self._blocks: dict[int, Block] = {}
        self._where: dict[int, tuple[int, list[int]]] = {}  # instance -> (batch, rows in its block)
        self.score_tokens = max(score_tokens, batch_size)
        self.prefix_seconds = 0.0
        self.prefix_tokens = sum(len(p) for p in prefixes)
        if keep:
            total = len(self.batches)
            for b in range(total):
                self._block(b)
                if progress:
                    progress(b + 1, total, f"Caching prompts: {min((b + 1) * batch_size, len(order))}/{len(order)}")

    # --- bookkeeping -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.instances)

    def index_of(self, ids: Sequence[str]) -> list[int]:
        """Positions of instances given by id (KeyError for ids that are not in this cache)."""
        missing = [i for i in ids if i not in self._ids]
        if missing:
            raise KeyError(f"{len(missing)} instances are not in this prompt cache, e.g. {missing[:3]}")
        return [self._ids[i] for i in ids]

    def nbytes(self) -> int:
        """Memory held by the kept prefix caches."""
        return sum(b.nbytes() for b in self._blocks.values())

    # --- prefix forwards ---------------------------------------------------------------------

    @torch.no_grad()
    def _common_kv(self) -> Any:
        if self._common_cache is None and self.common:
            ids = torch.tensor([list(self.common)], dtype=torch.long, device=self.lm.device)
            out = base_model(self.lm)(input_ids=ids, use_cache=True)
            self._common_cache = returned_cache(out)
        return self._common_cache

    @torch.no_grad()
    def _compute_block(self, insts: list[int]) -> Block:
        """Run the prefixes of some instances; one cache row per suffix row."""
        t0 = time.perf_counter()
        device = self.lm.device
        c = len(self.common)
        rest = [list(self.layouts[i].prefix[c:]) for i in insts]
        n = len(insts)
        if c:
            common = self._common_kv()
            cache = fork_cache(common, [layer.keys.expand(n, -1, -1, -1) for layer in common.layers],
                               [layer.values.expand(n, -1, -1, -1) for layer in common.layers])
            ids, mask = pad_right(rest, self.pad_id)
            full = torch.cat([torch.ones(n, c, dtype=torch.long), mask], dim=1)
            pos = c + torch.arange(ids.shape[1])[None, :].expand(n, -1)
            out = base_model(self.lm)(input_ids=ids.to(device), attention_mask=full.to(device), position_ids=pos.to(device),
                                      use_cache=True, **{self._base_kw: cache})
        else:
            ids, full, _ = pad_left(rest, self.pad_id)
            out = base_model(self.lm)(input_ids=ids.to(device), attention_mask=full.to(device),
                                      position_ids=left_positions(full).to(device), use_cache=True)
        cache = returned_cache(out)
        del out
        rows = [(i, r) for i in insts for r in range(len(self.layouts[i].rows))]
        local = torch.tensor([insts.index(i) for i, _ in rows], dtype=torch.long)
        if len(rows) != n or not torch.equal(local, torch.arange(n)):
            cache.batch_select_indices(local.to(device))
        full = full[local]
        suffixes = [list(self.layouts[i].rows[r].ids) for i, r in rows]
        s_ids, s_mask = pad_right(suffixes, self.pad_id)
        start = torch.tensor([self.layouts[i].rows[r].steer_from for i, r in rows], dtype=torch.long)
        self.prefix_seconds += time.perf_counter() - t0
        return Block(cache, full.to(device), full.sum(-1).to(device), s_ids.to(device), s_mask.to(device),
                     start.to(device), rows)

    def _block(self, b: int) -> Block:
        if b in self._blocks:
            return self._blocks[b]
        block = self._compute_block(self.batches[b])
        if self.keep:
            self._blocks[b] = block
            for k, (i, _r) in enumerate(block.rows):
                self._where.setdefault(i, (b, []))[1].append(k)
        return block

    def gather(self, indices: Sequence[int]) -> Block:
        """One block holding the rows of these instances (any mix of batches; needs ``keep``)."""
        if not self.keep:
            raise RuntimeError("gather needs a PromptCache built with keep=True")
        by_batch: dict[int, list[int]] = {}
        for i in indices:
            b, rows = self._where[i]
            by_batch.setdefault(b, []).extend(rows)
        parts = [(self._blocks[b], torch.tensor(rows, dtype=torch.long)) for b, rows in by_batch.items()]
        if len(parts) == 1 and len(parts[0][1]) == len(parts[0][0].rows) and torch.equal(parts[0][1], torch.arange(len(parts[0][0].rows))):
            return parts[0][0]
        width = max(blk.width for blk, _ in parts)
        s_width = max(int(blk.suffix_ids.shape[1]) for blk, _ in parts)

        def pad_t(t: torch.Tensor, to: int, dim: int) -> torch.Tensor:
            extra = to - t.shape[dim]
            if not extra:
                return t
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_zeros(shape)], dim=dim)

        n_layers = len(parts[0][0].cache.layers)
        keys, values = [], []
        for li in range(n_layers):
            keys.append(torch.cat([pad_t(blk.cache.layers[li].keys[sel.to(blk.cache.layers[li].keys.device)], width, 2)
                                   for blk, sel in parts]))
            values.append(torch.cat([pad_t(blk.cache.layers[li].values[sel.to(blk.cache.layers[li].values.device)], width, 2)
                                     for blk, sel in parts]))
        dev = self.lm.device

        def rows_of(name: str, to: int | None = None) -> torch.Tensor:
            return torch.cat([pad_t(getattr(blk, name)[sel.to(dev)], to, 1) if to else getattr(blk, name)[sel.to(dev)]
                              for blk, sel in parts])

        return Block(
            fork_cache(parts[0][0].cache, keys, values),
            rows_of("prefix_mask", width), rows_of("prefix_len"), rows_of("suffix_ids", s_width),
            rows_of("suffix_mask", s_width), rows_of("steer_from"),
            [blk.rows[k] for blk, sel in parts for k in sel.tolist()],
        )

    # --- activation reads --------------------------------------------------------------------

    @torch.inference_mode()
    def activations(self, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every decoder layer's output at the read token of y+ and y- of every instance, from the
        prefix caches (the same numbers as :func:`saas.activations.extract_activations` to float32
        round-off, without running the prompts again).

        Returns:
            ``(positive, negative)``, float32 [N, n_layers, d] each, in instance order.
        """
        n, n_layers, d = len(self.instances), self.lm.n_layers, self.lm.hidden_size
        pos = np.empty((n, n_layers, d), dtype=np.float32)
        neg = np.empty((n, n_layers, d), dtype=np.float32)
        for b in range(len(self.batches)):
            block = self._block(b)
            insts = block.instances()
            out = self._read_block(block, insts)  # [2B, L, d]: y+ then y- of each instance
            pos[insts], neg[insts] = out[0::2], out[1::2]
            if progress:
                progress(b + 1, len(self.batches), f"Reading activations: block {b + 1}/{len(self.batches)}")
        return pos, neg

    def _read_block(self, block: Block, insts: list[int]) -> np.ndarray:
        """All-layer outputs at the read tokens of y+ and y- of ``insts`` (rows of ``block``), [2B, L, d]."""
        dev = self.lm.device
        first: dict[int, int] = {}
        for r, (i, _k) in enumerate(block.rows):
            first.setdefault(i, r)
        sel = torch.tensor([first[i] for i in insts for _ in (0, 1)], dtype=torch.long, device=dev)
        layers = block.cache.layers
        cache = fork_cache(block.cache, [layer.keys[sel] for layer in layers], [layer.values[sel] for layer in layers])
        suffixes = [list(self.layouts[i].reads[c][0]) for i in insts for c in (0, 1)]
        cols = torch.tensor([self.layouts[i].reads[c][1] for i in insts for c in (0, 1)], device=dev)
        ids, smask = pad_right(suffixes, self.pad_id)
        mask = torch.cat([block.prefix_mask[sel], smask.to(dev)], dim=1)
        position = block.prefix_len[sel][:, None] + torch.arange(ids.shape[1], device=dev)[None, :]
        rows = torch.arange(len(suffixes), device=dev)
        with LayerCapture(self.lm, rows, cols) as cap:
            base_model(self.lm)(input_ids=ids.to(dev), attention_mask=mask, position_ids=position, use_cache=True,
                                **{self._base_kw: cache})
        return cap.result()

    # --- suffix forwards ---------------------------------------------------------------------

    def _suffix_inputs(self, block: Block) -> dict[str, Any]:
        s = block.suffix_ids.shape[1]
        mask = torch.cat([block.prefix_mask, block.suffix_mask], dim=1)
        pos = block.prefix_len[:, None] + torch.arange(s, device=block.prefix_len.device)[None, :]
        return {"input_ids": block.suffix_ids, "attention_mask": mask, "position_ids": pos, "use_cache": True}

    def suffix_logits(self, block: Block) -> torch.Tensor:
        """Logits [R, S, V] of the suffix rows on a fork of the block's prefix cache (no hooks here:
        the caller enters the steering context)."""
        return self.lm.model(**self._suffix_inputs(block), **{self._kw: fork_cache(block.cache)}).logits

    def target_logprobs(self, block: Block) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        """log p of every scored token of the block's rows [M] (differentiable when grad is on) and its
        ``(instance, candidate, n_tokens)`` groups, in order. Runs the suffix forward; the caller
        enters the steering context. The LM head runs only at the scored positions."""
        rr, cc, tt, groups = self._targets(block)
        if separate_head_ok(self.lm):
            hidden = base_model(self.lm)(**self._suffix_inputs(block), **{self._base_kw: fork_cache(block.cache)}).last_hidden_state
            logits = lm_head_logits(self.lm, hidden[rr, cc])
        else:
            logits = self.suffix_logits(block)[rr, cc]
        lsm = torch.log_softmax(logits.float(), dim=-1)
        return lsm.gather(-1, tt[:, None])[:, 0], groups

    def _targets(self, block: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
        """Flat (row, column, token) of every scored token, and (instance, candidate, n_tokens) groups."""
        rr: list[int] = []
        cc: list[int] = []
        tt: list[int] = []
        groups: list[tuple[int, int, int]] = []
        for r, (i, k) in enumerate(block.rows):
            for cand, cols, toks in self.layouts[i].rows[k].targets:
                rr.extend([r] * len(cols))
                cc.extend(cols)
                tt.extend(toks)
                groups.append((i, cand, len(cols)))
        dev = block.suffix_ids.device
        return (torch.tensor(rr, device=dev), torch.tensor(cc, device=dev), torch.tensor(tt, device=dev), groups)

    def answer_sums(self, block: Block, instances: Sequence[int]) -> torch.Tensor:
        """log P(y+ | q) and log P(y- | q) (sums over scored tokens), [len(instances), 2], differentiable."""
        lp, groups = self.target_logprobs(block)
        slot = {i: k for k, i in enumerate(instances)}
        index: list[int] = []
        for i, cand, n in groups:
            index.extend([slot[i] * 2 + cand if cand < 2 else -1] * n)
        idx = torch.tensor(index, device=lp.device)
        keep = idx >= 0
        out = torch.zeros(len(instances) * 2, device=lp.device, dtype=lp.dtype)
        out = out.index_add(0, idx[keep], lp[keep])
        return out.view(len(instances), 2)

    def _select(self, block: Block, rows: Sequence[int]) -> Block:
        """A block of some of ``block``'s rows, its suffixes trimmed to their own longest."""
        dev = block.suffix_ids.device
        sel = torch.tensor(list(rows), dtype=torch.long, device=dev)
        width = int(block.suffix_mask[sel].sum(-1).max())
        layers = block.cache.layers
        return Block(fork_cache(block.cache, [layer.keys[sel] for layer in layers], [layer.values[sel] for layer in layers]),
                     block.prefix_mask[sel], block.prefix_len[sel], block.suffix_ids[sel, :width],
                     block.suffix_mask[sel, :width], block.steer_from[sel], [block.rows[k] for k in rows])

    def _by_suffix_length(self, block: Block, waste: float = 0.3) -> list[Block]:
        """Split a block whose suffixes differ much in length into groups of similar length, so that
        padding is at most ~``waste`` of each group's suffix positions (sentence answers)."""
        lengths = block.suffix_mask.sum(-1).tolist()
        if block.suffix_ids.shape[1] <= 2 or len(lengths) < 2:
            return [block]
        order = sorted(range(len(lengths)), key=lambda r: lengths[r])
        groups: list[list[int]] = [[]]
        for r in order:
            g = groups[-1] + [r]
            top = lengths[r]
            if groups[-1] and (top * len(g) - sum(lengths[k] for k in g)) > waste * top * len(g):
                groups.append([r])
            else:
                groups[-1] = g
        if len(groups) == 1:
            return [block]
        return [self._select(block, g) for g in groups]

    def _chunks(self, indices: Sequence[int] | None) -> list[list[int]] | None:
        """Instance groups to score together (``None``: the prefix batches, for ``keep=False``).

        With ``keep``, rows are regathered into chunks of up to :attr:`score_tokens` suffix positions:
        a forward over a few one-token rows costs about as much as over hundreds (it is bound by
        reading the weights), so Yes/No and A/B rows are scored hundreds at a time.
        """
        if not self.keep:
            if indices is not None:
                raise RuntimeError("scoring a subset needs a PromptCache built with keep=True")
            return None
        wanted = range(len(self.instances)) if indices is None else indices
        longest = {i: max(len(r.ids) for r in self.layouts[i].rows) for i in wanted}
        order = sorted(wanted, key=lambda i: (longest[i], len(self.layouts[i].prefix)))
        chunks: list[list[int]] = [[]]
        rows = width = 0
        for i in order:
            n = len(self.layouts[i].rows)
            if chunks[-1] and max(width, longest[i]) * (rows + n) > self.score_tokens:
                chunks.append([])
                rows = width = 0
            chunks[-1].append(i)
            rows += n
            width = max(width, longest[i])
        return chunks

    @torch.inference_mode()
    def logprobs(self, conditions: Sequence[Condition], indices: Sequence[int] | None = None,
                 progress: Progress | None = None) -> list[list[AnswerLogprobs]]:
        """Answer token log-probs of the instances (all, or ``indices``) under each condition.

        Args:
            conditions: ``(vector, alpha)`` pairs; ``(None, 0)`` is the unsteered model. Steering
                covers the last prompt token and the answer tokens (as :func:`answer_logprobs`).
            indices: positions of the instances to score (default: all, in order).

        Returns:
            ``out[c][k]``: :class:`AnswerLogprobs` of the k-th requested instance under condition c,
            the same numbers as :func:`answer_logprobs`.
        """
        wanted = list(range(len(self.instances))) if indices is None else list(indices)
        pos = {i: k for k, i in enumerate(wanted)}
        tokens: list[list[list[np.ndarray | None]]] = [
            [[None] * len(self.layouts[i].answers) for i in wanted] for _ in conditions]
        groups_of = self._chunks(indices)
        total = len(self.batches) if groups_of is None else len(groups_of)
        separate_head_ok(self.lm)  # decided once, unsteered
        for done in range(1, total + 1):
            chunk = self._block(done - 1) if groups_of is None else self.gather(groups_of[done - 1])
            for block in self._by_suffix_length(chunk):
                for ci, (vec, alpha) in enumerate(conditions):
                    steer = vec is not None and alpha != 0
                    with vec.apply(self.lm, alpha, positions=block.steer_from) if steer else contextlib.nullcontext():  # type: ignore[union-attr]
                        lp, groups = self.target_logprobs(block)
                    flat = lp.double().cpu().numpy()
                    off = 0
                    for i, cand, n in groups:
                        tokens[ci][pos[i]][cand] = flat[off : off + n]
                        off += n
            if progress:
                progress(done, total, f"Scoring answers: chunk {done}/{total}, {len(conditions)} conditions")
        return [[AnswerLogprobs(self.instances[i].id, list(self.layouts[i].answers),
                                [t for t in tokens[ci][pos[i]] if t is not None]) for i in wanted]
                for ci in range(len(conditions))]
