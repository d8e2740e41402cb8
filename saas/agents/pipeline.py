"""The three agents end to end: Agent-1 (decompose) -> Agent-2 (rate) -> Agent-3 (score), and Eq. 5.

The functions here are backend-agnostic: they sample the examples, give sub-behaviours their ids,
apply the threshold, batch the instances, run Agent-3 batches concurrently (bounded by the backend),
re-ask for ids a batch reply left out, resume from cached results, and count calls and time per stage.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saas.agents import prompts
from saas.agents.backend import AgentBackend, BatchScores
from saas.agents.cache import CallCache, CallSession, StageStats
from saas.agents.overlay import Overlay, dropped, invalidated
from saas.agents.types import AgentError, Behaviour, ContributionResult, RelevanceTable, SubBehaviour
from saas.data import BehaviourDataset, Instance

Progress = Callable[[int, int, str], None]
BehaviourLike = Behaviour | BehaviourDataset | tuple[str, str]


def _session(session: CallSession | None, cache: CallCache | None, refresh: bool) -> CallSession:
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
        pool: All training instances (the offline backend clusters these); default ``examples``.
        seed: Seed of the backend's own randomness (clustering / sampling).
        cache, refresh, session: Call cache, whether to bypass its reads, or a ready session.

    Raises:
        AgentError: fewer than 5 usable sub-behaviours.
    """
    s = _session(session, cache, refresh)
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
        SubBehaviour(f"S{j + 1}", d.name, d.description, None, "", True, "agent", d.extractive)
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
    s = _session(session, cache, refresh)
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
    s = _session(session, cache, refresh)
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


# --- the whole run ----------------------------------------------------------------------------


@dataclass
class AgentRun:
    """Everything the three agents produced for one behaviour, plus how it was produced.

    Attributes:
        behaviour: Name and description.
        backend, model, prompt_version: Who produced it with which prompts.
        seed, threshold: The example-sampling seed and the Agent-2 threshold.
        example_ids: The instances shown to Agent-1.
        agent_subs: Agent-1 + Agent-2 output, before user edits.
        subs: The tree in use (``overlay`` applied to ``agent_subs``); Eq. 5 uses its kept entries.
        contributions: Agent-2's raw results (call ids, repair flags).
        table: Agent-3's relevance scores for the kept sub-behaviours.
        stats: Per stage (``agent1``, ``agent2``, ``agent3``, ``overlay``): calls made, cache hits,
            instances reused from the index, wall seconds, token usage.
        overlay: The user's edits, if any.
    """

    behaviour: Behaviour
    backend: str
    model: str
    prompt_version: str
    seed: int
    threshold: float
    example_ids: list[str]
    agent_subs: list[SubBehaviour]
    subs: list[SubBehaviour]
    contributions: list[ContributionResult]
    table: RelevanceTable
    stats: dict[str, StageStats] = field(default_factory=dict)
    overlay: Overlay | None = None

    @property
    def kept(self) -> list[SubBehaviour]:
        return [s for s in self.subs if s.kept]

    def importance(self, ids: Sequence[str]) -> np.ndarray:
        """Eq. 5 for these instances; see :func:`importance_from_run`."""
        return importance_from_run(self, ids)

    def summary(self) -> str:
        """One line per stage: calls, cache hits, wall time."""
        lines = []
        for stage, st in self.stats.items():
            lines.append(
                f"{stage}: {st.calls} calls, {st.cache_hits} cache hits, {st.index_hits} reused instances, "
                f"{st.seconds:.2f} s"
            )
        return "\n".join(lines)

    def apply_overlay(
        self,
        overlay: Overlay,
        backend: AgentBackend,
        instances: Sequence[Instance],
        *,
        progress: Progress | None = None,
        cache: CallCache | None = None,
        refresh: bool = False,
    ) -> AgentRun:
        """A new run with ``overlay`` applied: only the columns it invalidates are scored again.

        ``instances`` must contain every instance of the table (extra ones are ignored).
        """
        s = _session(None, cache, refresh)
        after = overlay.apply(self.agent_subs, self.threshold)
        t0 = time.perf_counter()
        table = _update_table(self.table, self.subs, after, instances, backend, s, progress)
        st = s.stage("agent3")
        st.seconds = time.perf_counter() - t0
        stats = dict(self.stats)
        stats["overlay"] = st
        return AgentRun(
            self.behaviour,
            self.backend,
            self.model,
            self.prompt_version,
            self.seed,
            self.threshold,
            list(self.example_ids),
            list(self.agent_subs),
            after,
            list(self.contributions),
            table,
            stats,
            overlay,
        )

    # --- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "behaviour": {"name": self.behaviour.name, "description": self.behaviour.description},
            "backend": self.backend,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "seed": self.seed,
            "threshold": self.threshold,
            "example_ids": list(self.example_ids),
            "agent_subs": [s.to_dict() for s in self.agent_subs],
            "subs": [s.to_dict() for s in self.subs],
            "contributions": [c.to_dict() for c in self.contributions],
            "table": self.table.to_dict(),
            "stats": {k: v.to_dict() for k, v in self.stats.items()},
            "overlay": None if self.overlay is None else self.overlay.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentRun:
        return cls(
            Behaviour(d["behaviour"]["name"], d["behaviour"]["description"]),
            d["backend"],
            d["model"],
            d.get("prompt_version", ""),
            int(d.get("seed", 0)),
            float(d.get("threshold", 2.0)),
            list(d.get("example_ids", [])),
            [SubBehaviour.from_dict(s) for s in d.get("agent_subs", d["subs"])],
            [SubBehaviour.from_dict(s) for s in d["subs"]],
            [ContributionResult.from_dict(c) for c in d.get("contributions", [])],
            RelevanceTable.from_dict(d["table"]),
            {k: StageStats.from_dict(v) for k, v in (d.get("stats") or {}).items()},
            None if d.get("overlay") is None else Overlay.from_dict(d["overlay"]),
        )

    def save(self, out_dir: str | Path) -> Path:
        """Write ``subbehaviours.json``, ``relevance.csv`` (instance id x sub-behaviour id) and the
        full record ``agent_run.json`` (flags, call ids, stats); plus ``overlay.json`` if edited."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tree = {
            "behaviour": {"name": self.behaviour.name, "description": self.behaviour.description},
            "backend": self.backend,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "threshold": self.threshold,
            "subbehaviours": [
                {
                    "id": s.id,
                    "name": s.name,
                    "description": s.description,
                    "contribution": s.contribution,
                    "kept": s.kept,
                    "rationale": s.rationale,
                    "provenance": s.provenance,
                    "extractive": s.extractive,
                }
                for s in self.subs
            ],
        }
        (out / "subbehaviours.json").write_text(json.dumps(tree, indent=1, ensure_ascii=False), encoding="utf-8")
        self.table.to_csv(out / "relevance.csv")
        (out / "agent_run.json").write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
        if self.overlay:
            self.overlay.save(out / "overlay.json")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> AgentRun:
        """Read a saved run (the full record if present, else ``subbehaviours.json`` + ``relevance.csv``)."""
        d = Path(out_dir)
        full = d / "agent_run.json"
        if full.exists():
            return cls.from_dict(json.loads(full.read_text(encoding="utf-8")))
        tree_path, csv_path = d / "subbehaviours.json", d / "relevance.csv"
        if not tree_path.exists() or not csv_path.exists():
            raise AgentError(f"{d} has no agent_run.json, nor subbehaviours.json + relevance.csv")
        tree = json.loads(tree_path.read_text(encoding="utf-8"))
        subs = [SubBehaviour.from_dict(s) for s in tree["subbehaviours"]]
        overlay = Overlay.load(d / "overlay.json") if (d / "overlay.json").exists() else None
        return cls(
            Behaviour(tree["behaviour"]["name"], tree["behaviour"]["description"]),
            tree.get("backend", ""),
            tree.get("model", ""),
            tree.get("prompt_version", ""),
            0,
            float(tree.get("threshold", 2.0)),
            [],
            [s for s in subs if s.provenance == "agent"],
            subs,
            [],
            RelevanceTable.from_csv(csv_path),
            {},
            overlay,
        )


def _update_table(
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


def run_agents(
    dataset: BehaviourDataset,
    backend: AgentBackend,
    *,
    train_ids: Sequence[str] | None = None,
    eligible_ids: Sequence[str] | None = None,
    seed: int = 0,
    threshold: float = 2.0,
    refresh: bool = False,
    progress: Progress | None = None,
    overlay: Overlay | None = None,
    cache: CallCache | None = None,
    n_examples: int = 5,
    batch_size: int | None = None,
) -> AgentRun:
    """Agent-1 -> Agent-2 -> Agent-3 on a dataset.

    Args:
        dataset: The behaviour and its instances.
        backend: Which agents (see :func:`make_backend`).
        train_ids: Instances Agent-1 may see (examples are sampled from these; the offline backend
            clusters all of them). Default: all.
        eligible_ids: Instances Agent-3 scores. Default: all training instances.
        seed: Seed of the example sample and of the backend's own randomness.
        threshold: Agent-2 keeps sub-behaviours with c_k >= threshold.
        refresh: Make new calls even where the cache has them.
        progress: ``progress(done, total, message)``.
        overlay: User edits, applied after Agent-2; only the columns they touch are scored apart
            from the agents' own (so edits never invalidate the agents' cached Agent-3 calls).
        cache: Call cache (default ``cache_dir("agents")``).
        n_examples: Instances shown to Agent-1 (the method: 5).
        batch_size: Instances per Agent-3 call (default: the backend's).
    """
    s = _session(None, cache, refresh)
    by_id = {i.id: i for i in dataset.instances}
    unknown = [i for i in list(train_ids or []) + list(eligible_ids or []) if i not in by_id]
    if unknown:
        raise AgentError(f"run_agents: ids not in dataset {dataset.name!r}: {unknown[:5]}")
    train = [by_id[i] for i in train_ids] if train_ids is not None else list(dataset.instances)
    eligible = [by_id[i] for i in eligible_ids] if eligible_ids is not None else train
    behaviour = Behaviour.coerce(dataset)

    def tick(step: int, message: str) -> None:
        if progress:
            progress(step, 3, message)

    tick(0, "Agent-1: decomposing the behaviour")
    t0 = time.perf_counter()
    examples = sample_examples(train, n_examples, seed)
    subs = decompose(behaviour, examples, backend, pool=train, seed=seed, session=s)
    s.stage("agent1").seconds = time.perf_counter() - t0

    tick(1, "Agent-2: rating the sub-behaviours")
    t0 = time.perf_counter()
    agent_subs, contributions = rate_contributions(behaviour, subs, backend, threshold, session=s)
    s.stage("agent2").seconds = time.perf_counter() - t0

    tick(2, "Agent-3: scoring the instances")
    t0 = time.perf_counter()
    table = score_instances(eligible, agent_subs, backend, batch_size=batch_size, progress=progress, session=s)
    final = agent_subs
    if overlay:
        final = overlay.apply(agent_subs, threshold)
        table = _update_table(table, agent_subs, final, eligible, backend, s, progress)
    s.stage("agent3").seconds = time.perf_counter() - t0

    return AgentRun(
        behaviour,
        backend.name,
        backend.model_id,
        prompts.PROMPT_VERSION,
        seed,
        threshold,
        [e.id for e in examples],
        agent_subs,
        final,
        contributions,
        table,
        dict(s.stats),
        overlay,
    )


def importance_from_run(run: AgentRun, ids: Sequence[str]) -> np.ndarray:
    """Eq. 5: s_i = sum_k c_k * s_ik over the kept sub-behaviours, for the given instance ids.

    Returns:
        float array [len(ids)].

    Raises:
        AgentError: an id was not scored by Agent-3, or a kept sub-behaviour has no column (the
            table is stale: apply the overlay first).
    """
    kept = run.kept
    cols = []
    for s in kept:
        if s.id not in run.table.sub_ids:
            raise AgentError(f"kept sub-behaviour {s.id} ({s.name}) has no relevance column; re-score it")
        cols.append(run.table.sub_ids.index(s.id))
    try:
        rows = run.table.rows(list(ids))
    except KeyError as err:
        raise AgentError(str(err.args[0])) from None
    c = np.asarray([s.contribution or 0.0 for s in kept], dtype=np.float64)
    return rows[:, cols] @ c
