"""BiPO (bi-directional preference optimisation) and the prompt-cached answer scoring it runs on.

BiPO optimises a steering vector ``v`` at one layer directly, the model frozen. Per mini-batch a
direction ``d`` in {+1, -1} is drawn at random and the DPO-style loss

    L = -log sigmoid( beta * d * [ (log pi(y+ | q; d v) - log pi_0(y+ | q))
                                 - (log pi(y- | q; d v) - log pi_0(y- | q)) ] )

is minimised with Adam: under ``+v`` the model should prefer y+ over y- more than the unsteered
reference ``pi_0`` does, under ``-v`` it should prefer y-. ``log pi(y | q)`` is the SUM of the answer's
token log-probabilities (the scored tokens of :mod:`saas.evaluation`: first answer token up to the
read token). Steering covers the last prompt token and every answer token, the positions the
evaluation steers, so that BiPO is trained where it is measured.

Prompt caching (:class:`PromptCache`). Steering starts at the last prompt token, so everything
before it (the *prefix*) is identical under every steering vector, every alpha and every layer: its
KV cache is computed once per instance and reused. Only the *suffix* -- the last prompt token plus
the answer tokens that predict the scored tokens -- runs per steering condition. For a Yes/No or an
A/B item both answers share that suffix (``[last prompt token]`` resp. ``[last prompt token, "("]``),
so one row of one or two tokens scores both answers, instead of two full forwards of the whole
prompt per item and condition. The numbers equal :func:`saas.evaluation.answer_logprobs` to float32
round-off (tested). The token prefix that ALL instances share (chat template, system prompt, a
common question stem) is run once and broadcast; each instance's own remainder is right-padded,
so the padding sits between the prefix and the suffix and is masked out.

Results are cached under ``cache/vectors/bipo-<key>`` (safetensors + JSON, with the training
history), keyed by the model fingerprint, the training instances, the layer and every
hyperparameter: a rerun loads the vector instead of training it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saas.activations import _cache_kwarg, _pad_left, _pad_right, _returned_cache, base_model
from saas.data import Instance
from saas.evaluation import AnswerLogprobs, candidate_answers
from saas.models import LoadedModel
from saas.paths import cache_dir
from saas.prompts import encode
from saas.steering import SteeringVector

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
Condition = tuple[SteeringVector | None, float]
BIPO_VERSION = "1"


# --------------------------------------------------------------------------------------------
# prompt-cached answer scoring


@dataclass(frozen=True)
class _Row:
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
class _Layout:
    """``prefix``: the cached tokens; ``rows``: scoring rows; ``reads``: for y+ and y-, the suffix up
    to and including the read token and the read token's column in it (activation reads)."""

    prefix: tuple[int, ...]
    rows: tuple[_Row, ...]
    answers: tuple[str, ...]
    reads: tuple[tuple[tuple[int, ...], int], ...] = ()


def layout(tokenizer: Any, inst: Instance) -> _Layout:
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
    rows = tuple(_Row(ids, start, tuple(t)) for (ids, start), t in groups.items())
    reads = tuple((tuple(e.ids[cut : e.read_index + 1]), e.read_index - cut) for e in encs[:2])
    return _Layout(tuple(encs[0].ids[:cut]), rows, tuple(answers), reads)


@dataclass
class _Block:
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


def _fork(cache: Any, keys: list[torch.Tensor] | None = None, values: list[torch.Tensor] | None = None) -> Any:
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
        pad = lm.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._kw = _cache_kwarg(lm.model)
        self._base_kw = _cache_kwarg(base_model(lm))
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
        self._blocks: dict[int, _Block] = {}
        self._where: dict[int, tuple[int, list[int]]] = {}  # instance -> (batch, rows in its block)
        self._head_ok: bool | None = None
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
            self._common_cache = _returned_cache(out)
        return self._common_cache

    @torch.no_grad()
    def _compute_block(self, insts: list[int]) -> _Block:
        """Run the prefixes of some instances; one cache row per suffix row."""
        t0 = time.perf_counter()
        device = self.lm.device
        c = len(self.common)
        rest = [list(self.layouts[i].prefix[c:]) for i in insts]
        n = len(insts)
        if c:
            common = self._common_kv()
            cache = _fork(common, [layer.keys.expand(n, -1, -1, -1) for layer in common.layers],
                          [layer.values.expand(n, -1, -1, -1) for layer in common.layers])
            ids, mask = _pad_right(rest, self.pad_id)
            full = torch.cat([torch.ones(n, c, dtype=torch.long), mask], dim=1)
            pos = c + torch.arange(ids.shape[1])[None, :].expand(n, -1)
            out = base_model(self.lm)(input_ids=ids.to(device), attention_mask=full.to(device), position_ids=pos.to(device),
                                      use_cache=True, **{self._base_kw: cache})
        else:
            ids, full, _ = _pad_left(rest, self.pad_id)
            pos = (full.cumsum(-1) - 1).clamp(min=0)
            out = base_model(self.lm)(input_ids=ids.to(device), attention_mask=full.to(device), position_ids=pos.to(device),
                                      use_cache=True)
        cache = _returned_cache(out)
        del out
        rows = [(i, r) for i in insts for r in range(len(self.layouts[i].rows))]
        local = torch.tensor([insts.index(i) for i, _ in rows], dtype=torch.long)
        if len(rows) != n or not torch.equal(local, torch.arange(n)):
            cache.batch_select_indices(local.to(device))
        full = full[local]
        suffixes = [list(self.layouts[i].rows[r].ids) for i, r in rows]
        s_ids, s_mask = _pad_right(suffixes, self.pad_id)
        start = torch.tensor([self.layouts[i].rows[r].steer_from for i, r in rows], dtype=torch.long)
        self.prefix_seconds += time.perf_counter() - t0
        return _Block(cache, full.to(device), full.sum(-1).to(device), s_ids.to(device), s_mask.to(device),
                      start.to(device), rows)

    def _block(self, b: int) -> _Block:
        if b in self._blocks:
            return self._blocks[b]
        block = self._compute_block(self.batches[b])
        if self.keep:
            self._blocks[b] = block
            for k, (i, _r) in enumerate(block.rows):
                self._where.setdefault(i, (b, []))[1].append(k)
        return block

    def gather(self, indices: Sequence[int]) -> _Block:
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

        return _Block(
            _fork(parts[0][0].cache, keys, values),
            rows_of("prefix_mask", width), rows_of("prefix_len"), rows_of("suffix_ids", s_width),
            rows_of("suffix_mask", s_width), rows_of("steer_from"),
            [blk.rows[k] for blk, sel in parts for k in sel.tolist()],
        )

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
            insts = list(dict.fromkeys(i for i, _ in block.rows))
            out = self._read_block(block, insts)  # [2B, L, d]: y+ then y- of each instance
            pos[insts], neg[insts] = out[0::2], out[1::2]
            if progress:
                progress(b + 1, len(self.batches), f"Reading activations: block {b + 1}/{len(self.batches)}")
        return pos, neg

    def _read_block(self, block: _Block, insts: list[int]) -> np.ndarray:
        """All-layer outputs at the read tokens of y+ and y- of ``insts`` (rows of ``block``), [2B, L, d]."""
        dev = self.lm.device
        first: dict[int, int] = {}
        for r, (i, _k) in enumerate(block.rows):
            first.setdefault(i, r)
        sel = torch.tensor([first[i] for i in insts for _ in (0, 1)], dtype=torch.long, device=dev)
        layers = block.cache.layers
        cache = _fork(block.cache, [layer.keys[sel] for layer in layers], [layer.values[sel] for layer in layers])
        suffixes = [list(self.layouts[i].reads[c][0]) for i in insts for c in (0, 1)]
        cols = torch.tensor([self.layouts[i].reads[c][1] for i in insts for c in (0, 1)], device=dev)
        ids, smask = _pad_right(suffixes, self.pad_id)
        mask = torch.cat([block.prefix_mask[sel], smask.to(dev)], dim=1)
        position = block.prefix_len[sel][:, None] + torch.arange(ids.shape[1], device=dev)[None, :]
        rows = torch.arange(len(suffixes), device=dev)
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, _inp: object, out: Any) -> None:
            hidden = out[0] if isinstance(out, tuple) else out
            captured.append(hidden[rows, cols].float())

        handles = [layer.register_forward_hook(hook) for layer in self.lm.layers]
        try:
            base_model(self.lm)(input_ids=ids.to(dev), attention_mask=mask, position_ids=position, use_cache=True,
                                **{self._base_kw: cache})
        finally:
            for h in handles:
                h.remove()
        return torch.stack(captured, dim=1).cpu().numpy()

    # --- suffix forwards ---------------------------------------------------------------------

    def _suffix_inputs(self, block: _Block) -> dict[str, Any]:
        s = block.suffix_ids.shape[1]
        mask = torch.cat([block.prefix_mask, block.suffix_mask], dim=1)
        pos = block.prefix_len[:, None] + torch.arange(s, device=block.prefix_len.device)[None, :]
        return {"input_ids": block.suffix_ids, "attention_mask": mask, "position_ids": pos, "use_cache": True}

    def suffix_logits(self, block: _Block) -> torch.Tensor:
        """Logits [R, S, V] of the suffix rows on a fork of the block's prefix cache (no hooks here:
        the caller enters the steering context)."""
        return self.lm.model(**self._suffix_inputs(block), **{self._kw: _fork(block.cache)}).logits

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on final hidden states [M, d] -> logits [M, V] (with the softcapping / scaling
        some families apply after it)."""
        logits = self.lm.model.get_output_embeddings()(hidden)
        cfg = self.lm.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _split_head_ok(self, block: _Block) -> bool:
        """Whether base model + :meth:`_head` reproduces the model's logits (checked once on one row,
        outside any steering context)."""
        if self._head_ok is None:
            ok = self.lm.model.get_output_embeddings() is not None
            if ok:
                with torch.inference_mode():
                    one = self._select(block, [0])
                    full = self.suffix_logits(one)[0, -1].float()
                    hidden = base_model(self.lm)(**self._suffix_inputs(one), **{self._base_kw: _fork(one.cache)})
                    mine = self._head(hidden.last_hidden_state[0, -1:])[0].float()
                    ok = bool(torch.allclose(full, mine, atol=1e-3 * max(1.0, float(full.abs().max())), rtol=1e-3))
            if not ok:
                log.info("%s: scoring with full forwards (the LM head could not be applied separately)", self.lm.name)
            self._head_ok = ok
        return self._head_ok

    def target_logprobs(self, block: _Block) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        """log p of every scored token of the block's rows [M] (differentiable when grad is on) and its
        ``(instance, candidate, n_tokens)`` groups, in order. Runs the suffix forward; the caller
        enters the steering context. The LM head runs only at the scored positions."""
        rr, cc, tt, groups = self._targets(block)
        if self._split_head_ok(block):
            hidden = base_model(self.lm)(**self._suffix_inputs(block), **{self._base_kw: _fork(block.cache)}).last_hidden_state
            logits = self._head(hidden[rr, cc])
        else:
            logits = self.suffix_logits(block)[rr, cc]
        lsm = torch.log_softmax(logits.float(), dim=-1)
        return lsm.gather(-1, tt[:, None])[:, 0], groups

    def _targets(self, block: _Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
        """Flat (row, column, token) of every scored token, and (instance, candidate, n_tokens) groups."""
        rr, cc, tt, groups = [], [], [], []
        for r, (i, k) in enumerate(block.rows):
            for cand, cols, toks in self.layouts[i].rows[k].targets:
                rr.extend([r] * len(cols))
                cc.extend(cols)
                tt.extend(toks)
                groups.append((i, cand, len(cols)))
        dev = block.suffix_ids.device
        return (torch.tensor(rr, device=dev), torch.tensor(cc, device=dev), torch.tensor(tt, device=dev), groups)

    def answer_sums(self, block: _Block, instances: Sequence[int]) -> torch.Tensor:
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

    def _select(self, block: _Block, rows: Sequence[int]) -> _Block:
        """A block of some of ``block``'s rows, its suffixes trimmed to their own longest."""
        dev = block.suffix_ids.device
        sel = torch.tensor(list(rows), dtype=torch.long, device=dev)
        width = int(block.suffix_mask[sel].sum(-1).max())
        layers = block.cache.layers
        return _Block(_fork(block.cache, [layer.keys[sel] for layer in layers], [layer.values[sel] for layer in layers]),
                      block.prefix_mask[sel], block.prefix_len[sel], block.suffix_ids[sel, :width],
                      block.suffix_mask[sel, :width], block.steer_from[sel], [block.rows[k] for k in rows])

    def _by_suffix_length(self, block: _Block, waste: float = 0.3) -> list[_Block]:
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
                covers the last prompt token and the answer tokens (as :func:`saas.evaluation.answer_logprobs`).
            indices: positions of the instances to score (default: all, in order).

        Returns:
            ``out[c][k]``: :class:`~saas.evaluation.AnswerLogprobs` of the k-th requested instance
            under condition c, the same numbers as :func:`saas.evaluation.answer_logprobs`.
        """
        wanted = list(range(len(self.instances))) if indices is None else list(indices)
        pos = {i: k for k, i in enumerate(wanted)}
        tokens: list[list[list[np.ndarray | None]]] = [
            [[None] * len(self.layouts[i].answers) for i in wanted] for _ in conditions]
        groups_of = self._chunks(indices)
        total = len(self.batches) if groups_of is None else len(groups_of)
        for done in range(1, total + 1):
            chunk = self._block(done - 1) if groups_of is None else self.gather(groups_of[done - 1])
            for block in self._by_suffix_length(chunk):
                self._split_head_ok(block)  # decided once, unsteered
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

    def hook(_m: nn.Module, _inp: object, out: Any) -> Any:
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
        prompt_cache: a :class:`PromptCache` (``keep=True``) holding these instances (by id), to
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
        except (OSError, ValueError, KeyError) as exc:
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
                    pc._split_head_ok(block)  # decided once, unsteered
                    order = list(dict.fromkeys(i for i, _ in block.rows))
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
