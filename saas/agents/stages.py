"""The agent stages, backend-agnostic: Agent-1 (decompose), Agent-2 (rate), Agent-3 (score).

They sample the examples, give sub-behaviours their ids, apply the threshold, batch the instances,
run Agent-3 batches concurrently (bounded by the backend), re-ask for ids a batch reply left out,
resume from cached results, and count calls and time per stage. :func:`update_table` re-scores
only what an overlay edit invalidated.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from saas.agents import prompts
from saas.agents.cache import CallCache, CallSession
from saas.agents.overlay import dropped, invalidated
from saas.agents.types import (
    AgentBackend,
    AgentError,
    BatchScores,
    Behaviour,
    ContributionResult,
    RelevanceTable,
    SubBehaviour,
)
from saas.data import BehaviourDataset, Instance

Progress = Callable[[int, int, str], None]
BehaviourLike = Behaviour | BehaviourDataset | tuple[str, str]


def session_for(session: CallSession | None, cache: CallCache | None, refresh: bool) -> CallSession:
    """``session``, or a new one on ``cache`` (default: the project's agent cache)."""
    return session if session is not None else CallSession(cache if cache is not None else CallCache(), refresh)


def sample_examples(instances: Sequence[Instance], k: int = 5, seed: int = 0) -> list[Instance]:
    """``k`` instances drawn at random without replacement (seeded), for Agent-1's prompt."""
    pool = list(instances)
    return random.Random(seed).sample(pool, min(k, len(pool)))


# --- Agent-1 ----------------------------------------------------------------------------------


def decompose(
    behaviour: BehaviourLike,
    examples: list[Instance],
    backend: AgentBackend,
    *,
    pool: Sequence[Instance] | None = None,
    seed: int = 0,
    cache: CallCache | None = None,
    refresh: bool = False,
    session: CallSession | None = None,
) -> list[SubBehaviour]:
    """Agent-1: decompose the behaviour into K in [5, 10] sub-behaviours with ids ``S1..SK``.

    Args:
        behaviour: The dataset, or ``(name, description)``.
        examples: The sampled training instances shown to an LLM backend (see :func:`sample_examples`).
        backend: Which agents.
        pool: All training instances (the offline backend mines phrases from these); default ``examples``.
        seed: Seed of the backend's own randomness (LLM sampling); part of the offline cache key only
            through the pool.
        cache, refresh, session: Call cache, whether to bypass its reads, or a ready session.

    Raises:
        AgentError: fewer than 5 usable sub-behaviours.
    """
    s = session_for(session, cache, refresh)
    drafts = backend.decompose(Behaviour.coerce(behaviour), examples, pool or examples, seed=seed, session=s)
    unique, seen = [], set()
    for d in drafts:
        if d.name.strip().lower() in seen:
            continue
        seen.add(d.name.strip().lower())
        unique.append(d)
    if len(unique) < prompts.K_MIN:
        raise AgentError(f"agent1: {len(unique)} distinct sub-behaviours, need at least {prompts.K_MIN}")
    return [
        SubBehaviour(f"S{j + 1}", d.name, d.description, None, "", True, "agent", d.extractive, d.origin)
        for j, d in enumerate(unique[: prompts.K_MAX])
    ]


# --- Agent-2 ----------------------------------------------------------------------------------


def rate_contributions(
    behaviour: BehaviourLike,
    subs: Sequence[SubBehaviour],
    backend: AgentBackend,
    threshold: float = 2.0,
    *,
    cache: CallCache | None = None,
    refresh: bool = False,
    session: CallSession | None = None,
) -> tuple[list[SubBehaviour], list[ContributionResult]]:
    """Agent-2 with its raw results (call ids, repair flags); see :func:`rate_subbehaviours`."""
    s = session_for(session, cache, refresh)
    results = backend.rate(Behaviour.coerce(behaviour), list(subs), session=s)
    by_id = {r.sub_id: r for r in results}
    missing = [x.id for x in subs if x.id not in by_id]
    if missing:
        raise AgentError(f"agent2: no contribution for {missing}")
    rated = []
    for x in subs:
        r = by_id[x.id]
        note = " [clipped to 0-10]" if r.repaired else ""
        rated.append(x.with_contribution(r.contribution, r.rationale + note, threshold))
    return rated, [by_id[x.id] for x in subs]


def rate_subbehaviours(
    behaviour: BehaviourLike,
    subs: Sequence[SubBehaviour],
    backend: AgentBackend,
    threshold: float = 2.0,
    *,
    cache: CallCache | None = None,
    refresh: bool = False,
    session: CallSession | None = None,
) -> list[SubBehaviour]:
    """Agent-2: contribution c_k in [0, 10] and a rationale for each sub-behaviour (no instances seen).

    Returns the sub-behaviours with ``contribution``, ``rationale`` and ``kept = c_k >= threshold``.
    """
    return rate_contributions(behaviour, subs, backend, threshold, cache=cache, refresh=refresh, session=session)[0]


# --- Agent-3 ----------------------------------------------------------------------------------


def _index_key(backend: AgentBackend, inst: Instance, subs: Sequence[SubBehaviour]) -> str:
    """The per-instance index key: backend, model, prompt version, signature, instance, sub-behaviours."""
    payload = json.dumps(
        {
            "backend": backend.name,
            "model": backend.model_id,
            "prompt_version": prompts.PROMPT_VERSION,
            "signature": backend.signature,
            "instance": [inst.id, inst.prompt, inst.positive, inst.negative, list(inst.options)],
            "subs": [[s.id, s.text] for s in subs],
        },
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def score_instances(
    instances: Sequence[Instance],
    subs: Sequence[SubBehaviour],
    backend: AgentBackend,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    cache: CallCache | None = None,
    refresh: bool = False,
    session: CallSession | None = None,
) -> RelevanceTable:
    """Agent-3: relevance s_ik in [0, 10] of every instance to every KEPT sub-behaviour.

    Instances are sent in batches of ``batch_size`` (default: the backend's), up to
    ``backend.max_concurrency`` batches at once. Every finished batch is cached at once, and each of
    its instances is indexed, so an interrupted run resumes where it stopped and a later run on a
    different subset of the same instances (e.g. another eligibility cutoff) reuses their scores.
    An id a batch reply left out is asked again once (alone with the other missing ones).

    Args:
        instances: The instances to score (usually the eligible ones).
        subs: Sub-behaviours; only ``kept`` ones are scored.
        backend: Which agents.
        batch_size: Instances per call.
        progress: ``progress(done, total, message)`` after each batch (tqdm / st.progress).
        cache, refresh, session: Call cache, whether to bypass its reads, or a ready session.

    Returns:
        A RelevanceTable, rows in the order of ``instances``, columns = kept sub-behaviours.

    Raises:
        AgentError: a batch failed (the other batches are still cached) or ids stayed missing.
    """
    s = session_for(session, cache, refresh)
    kept = [x for x in subs if x.kept]
    insts = list(instances)
    ids = [i.id for i in insts]
    if len(set(ids)) != len(ids):
        raise AgentError("score_instances: duplicate instance ids")
    n, k = len(insts), len(kept)
    scores = np.zeros((n, k))
    flags = np.zeros((n, k), bool)
    call_ids = np.full((n, k), "", dtype=object)
    notes: list[str] = []
    if k == 0 or n == 0:
        return RelevanceTable(
            ids, [x.id for x in kept], scores, flags, call_ids, ["no kept sub-behaviours"] if not k else []
        )
    row = {i: r for r, i in enumerate(ids)}
    keys = {i.id: _index_key(backend, i, kept) for i in insts}

    todo: list[Instance] = []
    for inst in insts:
        hit = None if s.refresh else s.cache.get_index(keys[inst.id])
        if hit is not None and len(hit.get("scores", [])) == k:
            r = row[inst.id]
            scores[r] = hit["scores"]
            flags[r] = hit.get("flags", [False] * k)
            call_ids[r] = hit["call_id"]
            s.count("agent3", index_hits=1)
        else:
            todo.append(inst)

    done = n - len(todo)
    if progress:
        progress(done, n, f"Agent-3: {done}/{n} instances from the cache")
    bs = max(1, int(batch_size or backend.batch_size))
    batches = [todo[j : j + bs] for j in range(0, len(todo), bs)]

    def run_batch(batch: list[Instance]) -> BatchScores:
        result = backend.score_batch(batch, kept, session=s)
        missing = [i for i in batch if i.id not in set(result.ids)]
        if missing:
            again = backend.score_batch(missing, kept, session=s)
            still = [i.id for i in missing if i.id not in set(again.ids)]
            if still:
                raise AgentError(
                    f"agent3: the reply left out instance(s) {still} even when asked again "
                    f"(calls {result.call_id[:12]}, {again.call_id[:12]})"
                )
            result = result.merged(
                again, f"call {result.call_id[:12]}: re-asked for missing ids {[i.id for i in missing]}"
            )
        return result

    errors: list[str] = []

    def record(batch: list[Instance], result: BatchScores) -> None:
        nonlocal done
        per_row = result.call_id_of_rows()
        batch_ids = {i.id for i in batch}
        for j, iid in enumerate(result.ids):
            if iid not in batch_ids:
                continue
            r = row[iid]
            scores[r], flags[r], call_ids[r] = result.scores[j], result.flags[j], per_row[j]
            s.cache.put_index(
                keys[iid],
                {
                    "instance_id": iid,
                    "sub_ids": [x.id for x in kept],
                    "scores": result.scores[j].tolist(),
                    "flags": result.flags[j].tolist(),
                    "call_id": per_row[j],
                },
            )
        notes.extend(result.notes)
        done += len(batch)
        if progress:
            progress(done, n, f"Agent-3: {done}/{n} instances scored")

    workers = max(1, min(int(backend.max_concurrency), len(batches)))
    if workers == 1:
        for b in batches:
            try:
                record(b, run_batch(b))
            except AgentError as err:
                errors.append(str(err))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_batch, b): b for b in batches}
            for fut in as_completed(futures):
                try:
                    record(futures[fut], fut.result())
                except AgentError as err:
                    errors.append(str(err))
    if errors:
        raise AgentError(
            f"agent3: {len(errors)} of {len(batches)} batches failed (the others are cached; rerun to resume): "
            + errors[0]
        )
    return RelevanceTable(ids, [x.id for x in kept], scores, flags, call_ids, notes)


def update_table(
    table: RelevanceTable,
    before: Sequence[SubBehaviour],
    after: Sequence[SubBehaviour],
    instances: Sequence[Instance],
    backend: AgentBackend,
    session: CallSession,
    progress: Progress | None,
) -> RelevanceTable:
    """Drop the columns the edit removed, score (one call group per sub-behaviour) the ones it invalidated."""
    by_id = {i.id: i for i in instances}
    missing_rows = [i for i in table.ids if i not in by_id]
    if missing_rows:
        raise AgentError(f"apply_overlay: instances of the table not given: {missing_rows[:5]}")
    rows = [by_id[i] for i in table.ids]
    kept_after = [s for s in after if s.kept]
    stale = invalidated(before, after) | {s.id for s in kept_after if s.id not in table.sub_ids}
    gone = dropped(before, after) | {c for c in table.sub_ids if c not in {s.id for s in kept_after}}
    out = table.drop_columns(gone | stale)
    for sub in kept_after:
        if sub.id in stale:
            out = out.with_columns(score_instances(rows, [sub], backend, progress=progress, session=session))
    order = [s.id for s in kept_after]
    idx = [out.sub_ids.index(c) for c in order]
    return RelevanceTable(
        list(out.ids), order, out.scores[:, idx], out.flags[:, idx], out.call_ids[:, idx], list(out.notes)
    )


