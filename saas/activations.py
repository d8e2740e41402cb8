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

Answer scores from the same pass (``scores=True``, the default). The forwards above already run
every position that predicts an answer token: the last prompt token (in the prefix pass) for
one-token answers, and every answer position (prefix and continuation passes) for sentences. The
LM head is applied to the final hidden states at exactly those positions, so the extraction also
returns the unsteered token log-probabilities of every candidate answer
(:attr:`ActivationSet.logprobs`, extra options of multi-option A/B items included), from which
:func:`saas.evaluation.model_scores_from_logprobs` gives the logit-diff and conf baselines. They equal
a separate scoring pass (:func:`saas.forward.answer_logprobs`) within float32 round-off (tested on
sentence, Yes/No and A/B answers, on the embedded model and tiny models). Measured with
``bench/answer_scores.py``, see there.

All the forward machinery (padding, KV caches, layer capture, the LM head at chosen positions) is
the forward engine's (:mod:`saas.forward`); this module plans the reads and owns the disk cache.

Results are cached under ``cache/activations/<key>.safetensors``, where the key hashes the model
fingerprint, every prompt and answer, the chat template, the read rule and the dtype, and not the
strategy (both give the same numbers). The answer log-probs ride in the same file (arrays
``answer_logprobs`` and ``answer_counts``); a file written before they existed still loads, and its
scores are computed once by a separate pass and added to it. Writes are atomic (temporary file +
rename); a corrupted file is reported, deleted and recomputed.
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
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from saas.data import BehaviourDataset, Instance
from saas.forward import (
    AnswerLogprobs,
    SharedPrefixUnsupported,
    answer_logprobs,
    candidate_answers,
    forward_read,
    forward_read_shared,
    separate_head_ok,
)
from saas.models import LoadedModel
from saas.paths import cache_dir
from saas.prompts import Encoded, encode, template_signature

if TYPE_CHECKING:
    from saas.forward import PromptCache

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
CACHE_VERSION = "1"


@dataclass
class ActivationSet:
    """Answer-token activations of every layer for the positive and negative texts, and the model's
    own answer scores from the same forward pass.

    Attributes:
        positive: a_i+ for every layer, float32 [N, n_layers, d]; ``positive[:, l]`` is the output of
            decoder layer ``l`` (``hidden_states[l + 1]`` in transformers' numbering).
        negative: a_i-, same shape.
        ids: instance ids, length N, in dataset order.
        model_fingerprint: :attr:`LoadedModel.fingerprint` of the model that produced them.
        key: the cache key.
        seconds: wall time of the extraction (0 when read from cache).
        from_cache: whether it was read from disk.
        meta: strings stored with the cache file (model, dtype, strategy, ...).
        logprobs: per instance, the unsteered token log-probabilities of every candidate answer
            (:class:`saas.forward.AnswerLogprobs`, the numbers of :func:`saas.forward.answer_logprobs`),
            or ``None`` when they were not computed.
    """

    positive: np.ndarray
    negative: np.ndarray
    ids: list[str]
    model_fingerprint: str = ""
    key: str = ""
    seconds: float = 0.0
    from_cache: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    logprobs: list[AnswerLogprobs] | None = None

    @property
    def n(self) -> int:
        return int(self.positive.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.positive.shape[1])

    @property
    def d(self) -> int:
        return int(self.positive.shape[2])

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(a+ [N, d], a- [N, d]) at one layer."""
        self._check_layer(layer)
        return self.positive[:, layer], self.negative[:, layer]

    def diffs(self, layer: int) -> np.ndarray:
        """Local vectors v_i = a_i+ - a_i- at one layer (Eq. 3), [N, d]."""
        self._check_layer(layer)
        return self.positive[:, layer] - self.negative[:, layer]

    def subset(self, indices: Sequence[int]) -> ActivationSet:
        """The rows ``indices`` (arrays, ids and answer log-probs)."""
        idx = np.asarray(indices, dtype=int)
        lps = None if self.logprobs is None else [self.logprobs[i] for i in idx]
        return ActivationSet(
            self.positive[idx], self.negative[idx], [self.ids[i] for i in idx],
            self.model_fingerprint, self.key, 0.0, self.from_cache, dict(self.meta), lps,
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
    return min(_lcp(pos.ids, neg.ids), pos.read_index, neg.read_index)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# answer scores from the extraction pass

PREFIX = -1  # score source: the shared prefix; 0 / 1: the y+ / y- text (or its continuation)
Pick = tuple[int, int]  # (source, index into that source's target list)


@dataclass
class _ScorePlan:
    """Where each scored answer token of one instance is read in the extraction forwards.

    ``targets[s]`` lists the ``(column, token)`` pairs requested from source ``s`` (``PREFIX``, 0, 1;
    columns within the prefix, resp. within the y+ / y- continuation); ``picks[c]`` gives, for
    candidate ``c``, where each of its scored tokens' log-probabilities lands.
    """

    targets: dict[int, list[tuple[int, int]]]
    picks: list[list[Pick]]


def _score_plan(inst: Instance, encs: list[Encoded], split: int, tokenizer: object) -> _ScorePlan | None:
    """Plan the answer scores of one instance on texts ``prefix = pos[:split]`` + continuations
    ``pos[split:]``, ``neg[split:]`` (``split = 0``: two full texts).

    A scored token at position ``q + 1`` of candidate ``c`` is predicted by the final hidden state at
    ``q``, which depends only on ``c``'s tokens ``[:q + 1]`` (causal attention): it is read wherever a
    run text has the same tokens there. Extra options of multi-option items (``"(C)"``) share the
    prompt and ``"("`` with y+. Returns ``None`` when some position is in no run text (or the prompt
    is empty); those instances are scored by a separate pass.
    """
    cands = candidate_answers(inst)
    all_encs = encs + [encode(tokenizer, inst.prompt, a) for a in cands[2:]]
    pos, neg = encs[0].ids, encs[1].ids
    targets: dict[int, list[tuple[int, int]]] = {PREFIX: [], 0: [], 1: []}
    slots: dict[tuple[int, int, int], int] = {}
    picks: list[list[Pick]] = []
    for e in all_encs:
        if e.answer_start < 1:
            return None
        lp, ln = _lcp(e.ids, pos), _lcp(e.ids, neg)
        mine: list[Pick] = []
        for q in range(e.answer_start - 1, e.read_index):
            if q + 1 <= lp:
                src, col = (PREFIX, q) if q < split else (0, q - split)
            elif q + 1 <= ln:
                src, col = 1, q - split
            else:
                return None
            key = (src, col, e.ids[q + 1])
            if key not in slots:
                slots[key] = len(targets[src])
                targets[src].append((col, e.ids[q + 1]))
            mine.append((src, slots[key]))
        picks.append(mine)
    return _ScorePlan(targets, picks)


def _assemble(inst: Instance, plan: _ScorePlan, values: dict[int, np.ndarray]) -> AnswerLogprobs:
    """The instance's :class:`AnswerLogprobs` from the log-probs read per source."""
    tokens = [np.array([values[s][k] for s, k in picks], dtype=np.float64) for picks in plan.picks]
    return AnswerLogprobs(inst.id, candidate_answers(inst), tokens)


# --------------------------------------------------------------------------------------------
# strategies

Extracted = tuple[np.ndarray, np.ndarray, list[AnswerLogprobs | None] | None]


def _extract_naive(lm: LoadedModel, instances: Sequence[Instance], batch_size: int, progress: Progress | None,
                   scores: bool, encoded: list[Encoded] | None = None) -> Extracted:
    encoded = encoded or _encode_all(lm, instances)
    n = len(instances)
    out = np.empty((2 * n, lm.n_layers, lm.hidden_size), dtype=np.float32)
    plans = [_score_plan(inst, encoded[2 * i : 2 * i + 2], 0, lm.tokenizer) if scores else None
             for i, inst in enumerate(instances)]
    got: dict[int, np.ndarray] = {}  # text -> log-probs of its targets
    total = 2 * n
    done = 0
    order = sorted(range(total), key=lambda k: len(encoded[k].ids))
    for start in range(0, total, batch_size):
        chunk = order[start : start + batch_size]
        targets = [plans[t // 2].targets[t % 2] if plans[t // 2] is not None else [] for t in chunk]  # type: ignore[union-attr]
        res = forward_read(lm, [encoded[t].ids for t in chunk], [encoded[t].read_index for t in chunk],
                           targets if scores else None)
        out[chunk] = res.acts
        if scores:
            for t, lp in zip(chunk, res.logprobs):
                got[t] = lp
        done += len(chunk)
        if progress:
            progress(done, total, f"Extracting activations: {done}/{total} texts")
    lps: list[AnswerLogprobs | None] | None = None
    if scores:
        lps = [_assemble(inst, plan, {0: got[2 * i], 1: got[2 * i + 1]}) if plan is not None else None
               for i, (inst, plan) in enumerate(zip(instances, plans))]
    return np.ascontiguousarray(out[0::2]), np.ascontiguousarray(out[1::2]), lps


def _extract_shared(lm: LoadedModel, instances: Sequence[Instance], batch_size: int, progress: Progress | None,
                    scores: bool) -> Extracted:
    encoded = _encode_all(lm, instances)
    n = len(instances)
    out = np.empty((2 * n, lm.n_layers, lm.hidden_size), dtype=np.float32)
    split = [shared_split(encoded[2 * i], encoded[2 * i + 1]) for i in range(n)]
    shared = [i for i in range(n) if split[i] > 0]
    lone = [i for i in range(n) if split[i] == 0]  # nothing in common (no chat template, no BOS): run naively
    lps: list[AnswerLogprobs | None] = [None] * n
    total = 2 * n
    done = 0
    # batch_size counts texts, as in the naive path: batch_size // 2 instances per prefix pass.
    per = max(1, batch_size // 2)
    shared.sort(key=lambda i: (split[i], max(len(encoded[2 * i].ids), len(encoded[2 * i + 1].ids))))
    for start in range(0, len(shared), per):
        chunk = shared[start : start + per]
        prefixes, conts, read, rows = [], [], [], []
        plans = [_score_plan(instances[i], encoded[2 * i : 2 * i + 2], split[i], lm.tokenizer) if scores else None
                 for i in chunk]
        for i in chunk:
            p = split[i]
            prefixes.append(encoded[2 * i].ids[:p])
            for t in (2 * i, 2 * i + 1):
                conts.append(encoded[t].ids[p:])
                read.append(encoded[t].read_index - p)
                rows.append(t)
        pre_t = [plan.targets[PREFIX] if plan is not None else [] for plan in plans]
        cont_t = [plan.targets[s] if plan is not None else [] for plan in plans for s in (0, 1)]
        res = forward_read_shared(lm, prefixes, conts, read, cont_t if scores else None, pre_t if scores else None)
        out[rows] = res.acts
        if scores:
            for k, (i, plan) in enumerate(zip(chunk, plans)):
                if plan is not None:
                    values = {PREFIX: res.prefix_logprobs[k], 0: res.logprobs[2 * k], 1: res.logprobs[2 * k + 1]}
                    lps[i] = _assemble(instances[i], plan, values)
        done += len(rows)
        if progress:
            progress(done, total, f"Extracting activations: {done}/{total} texts")
    if lone:
        sub = [instances[i] for i in lone]
        sub_enc = [e for i in lone for e in encoded[2 * i : 2 * i + 2]]
        pos, neg, sub_lps = _extract_naive(lm, sub, batch_size, None, scores, sub_enc)
        out[[2 * i for i in lone]], out[[2 * i + 1 for i in lone]] = pos, neg
        if sub_lps is not None:
            for i, lp in zip(lone, sub_lps):
                lps[i] = lp
        if progress:
            progress(total, total, f"Extracting activations: {total}/{total} texts")
    return np.ascontiguousarray(out[0::2]), np.ascontiguousarray(out[1::2]), lps if scores else None


def _extract(lm: LoadedModel, instances: Sequence[Instance], batch_size: int, progress: Progress | None,
             strategy: str = DEFAULT_STRATEGY, scores: bool = True) -> tuple[np.ndarray, np.ndarray, list[AnswerLogprobs] | None, str]:
    """(positives, negatives, answer log-probs or None, the strategy actually used)."""
    wanted = scores
    scores = scores and separate_head_ok(lm)  # else: a separate scoring pass with the full model
    if strategy == "naive":
        pos, neg, lps = _extract_naive(lm, instances, batch_size, progress, scores)
        used = "naive"
    elif strategy == "shared_prefix":
        try:
            pos, neg, lps = _extract_shared(lm, instances, batch_size, progress, scores)
            used = "shared_prefix"
        except SharedPrefixUnsupported as exc:
            log.warning("shared-prefix extraction is not supported by this model (%s); using the naive path", exc)
            pos, neg, lps = _extract_naive(lm, instances, batch_size, progress, scores)
            used = "naive"
    else:
        raise ValueError(f"unknown extraction strategy {strategy!r}; choose one of {STRATEGIES}")
    return pos, neg, _complete(lm, instances, lps, batch_size) if wanted else None, used


def _complete(lm: LoadedModel, instances: Sequence[Instance], lps: Sequence[AnswerLogprobs | None] | None,
              batch_size: int) -> list[AnswerLogprobs] | None:
    """Fill the instances whose scores the extraction pass could not read with a separate scoring pass
    (:func:`saas.forward.answer_logprobs`); ``None`` when an instance cannot be scored at all (e.g.
    an empty prompt)."""
    todo = [i for i in range(len(instances)) if lps is None or lps[i] is None]
    done: list[AnswerLogprobs | None] = list(lps) if lps is not None else [None] * len(instances)
    if todo:
        try:
            for i, lp in zip(todo, answer_logprobs(lm, [instances[i] for i in todo], batch_size=batch_size)):
                done[i] = lp
        except ValueError as exc:
            log.warning("answer scores not computed (%s)", exc)
            return None
    return [lp for lp in done if lp is not None]


# --------------------------------------------------------------------------------------------
# disk cache


def _cache_path(key: str) -> Path:
    return cache_dir("activations") / f"{key}.safetensors"


def _pack_logprobs(lps: Sequence[AnswerLogprobs]) -> dict[str, np.ndarray]:
    """``answer_logprobs`` float64 [M] (every scored token, instance by instance, candidate by
    candidate) and ``answer_counts`` int64 [N, A] (tokens per candidate; 0 = no such candidate)."""
    width = max(2, max(len(lp.token_logprobs) for lp in lps))
    counts = np.zeros((len(lps), width), dtype=np.int64)
    for r, lp in enumerate(lps):
        counts[r, : len(lp.token_logprobs)] = [len(t) for t in lp.token_logprobs]
    flat = np.concatenate([t for lp in lps for t in lp.token_logprobs]).astype(np.float64)
    return {"answer_logprobs": flat, "answer_counts": counts}


def _unpack_logprobs(arrays: dict[str, np.ndarray], instances: Sequence[Instance]) -> list[AnswerLogprobs] | None:
    """The inverse of :func:`_pack_logprobs`; ``None`` when the file holds none (older cache files)
    or they do not fit the instances."""
    if "answer_logprobs" not in arrays or "answer_counts" not in arrays:
        return None
    flat, counts = arrays["answer_logprobs"], arrays["answer_counts"]
    if counts.ndim != 2 or counts.shape[0] != len(instances) or int(counts.sum()) != flat.shape[0] \
            or not np.isfinite(flat).all():
        log.warning("the answer scores in an activation cache file are unreadable (shape or NaN); the "
                    "activations are kept and the scores recomputed")
        return None
    out, k = [], 0
    for inst, row in zip(instances, counts):
        cands = candidate_answers(inst)
        if len(cands) > len(row) or (row[: len(cands)] <= 0).any() or row[len(cands):].any():
            return None
        tokens = []
        for n in row[: len(cands)]:
            tokens.append(flat[k : k + int(n)].copy())
            k += int(n)
        out.append(AnswerLogprobs(inst.id, cands, tokens))
    return out


def _read_cache(path: Path, instances: Sequence[Instance], n_layers: int, d: int) -> ActivationSet | None:
    ids = [i.id for i in instances]
    if not path.is_file():
        return None
    try:
        arrays = load_file(str(path))
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
    return ActivationSet(pos, neg, ids, meta.get("model_fingerprint", ""), path.stem, 0.0, True, meta,
                         _unpack_logprobs(arrays, instances))


def _write_cache(path: Path, acts: ActivationSet) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    meta = {**acts.meta, "ids": json.dumps(acts.ids), "model_fingerprint": acts.model_fingerprint,
            "seconds": f"{acts.seconds:.3f}"}
    # safetensors writes the raw buffer: strided views must be made contiguous first.
    arrays = {"positive": np.ascontiguousarray(acts.positive), "negative": np.ascontiguousarray(acts.negative)}
    if acts.logprobs is not None:
        arrays.update(_pack_logprobs(acts.logprobs))
    save_file(arrays, str(tmp), metadata=meta)
    os.replace(tmp, path)


def cached_activations(lm: LoadedModel, data: BehaviourDataset | Sequence[Instance]) -> ActivationSet | None:
    """The cached activations of these instances, or ``None`` (never runs the model)."""
    instances = list(data.instances if isinstance(data, BehaviourDataset) else data)
    return _read_cache(_cache_path(cache_key(lm, instances)), instances, lm.n_layers, lm.hidden_size)


# --------------------------------------------------------------------------------------------
# the entry point


def extract_activations(
    lm: LoadedModel,
    data: BehaviourDataset | Sequence[Instance],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    use_cache: bool = True,
    strategy: str = DEFAULT_STRATEGY,
    scores: bool = True,
    prompt_cache: PromptCache | None = None,
) -> ActivationSet:
    """Answer-token activations of all layers for every instance, and the model's own answer scores
    from the same forward pass (cached).

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
        scores: also return :attr:`ActivationSet.logprobs`, the unsteered token log-probabilities of
            every candidate answer, read from the extraction forwards themselves (the LM head runs
            only at the answer positions: the last prompt token for one-token answers, every answer
            position for sentences). They equal :func:`saas.forward.answer_logprobs` within float32
            round-off. A cache file written without them (older versions) still loads; the scores
            are then computed by a separate scoring pass and added to the file.
        prompt_cache: a :class:`saas.forward.PromptCache` of exactly these instances: read the
            activations and scores from its prefix caches instead of running the prompts again.

    Returns:
        An :class:`ActivationSet` with arrays [N, n_layers, d].
    """
    instances = list(data.instances if isinstance(data, BehaviourDataset) else data)
    if not instances:
        raise ValueError("no instances to extract activations for")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown extraction strategy {strategy!r}; choose one of {STRATEGIES}")
    ids = [i.id for i in instances]
    if prompt_cache is not None and [i.id for i in prompt_cache.instances] != ids:
        raise ValueError("the prompt cache holds other instances than the ones to extract")
    key = cache_key(lm, instances)
    path = _cache_path(key)
    if use_cache:
        cached = _read_cache(path, instances, lm.n_layers, lm.hidden_size)
        if cached is not None:
            if scores and cached.logprobs is None:
                if progress:
                    progress(0, 1, "Scoring answers (the cached activations have no answer scores yet)")
                cached.logprobs = _score_only(lm, instances, batch_size, prompt_cache)
                if cached.logprobs is not None:
                    _write_cache(path, cached)
            if progress:
                progress(1, 1, "Activations read from cache")
            return cached
    t0 = time.perf_counter()
    if prompt_cache is not None:
        pos, neg = prompt_cache.activations()
        lps = _score_only(lm, instances, batch_size, prompt_cache) if scores else None
        used = "prompt_cache"
    else:
        pos, neg, lps, used = _extract(lm, instances, batch_size, progress, strategy, scores)
    acts = ActivationSet(pos, neg, ids, lm.fingerprint, key, time.perf_counter() - t0, False,
                         {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", ""), "strategy": used}, lps)
    if use_cache:
        _write_cache(path, acts)
    return acts


def _score_only(lm: LoadedModel, instances: Sequence[Instance], batch_size: int,
                prompt_cache: PromptCache | None) -> list[AnswerLogprobs] | None:
    """Unsteered answer log-probs without activations: from the prompt cache when given, else a full
    scoring pass."""
    if prompt_cache is not None:
        return prompt_cache.logprobs([(None, 0.0)])[0]
    return _complete(lm, instances, None, batch_size)
