"""The three agents end to end: Agent-1 (decompose) -> Agent-2 (rate) -> Agent-3 (score), and Eq. 5.

:func:`run_agents` is the entry point; the stage functions live in :mod:`saas.agents.stages` and the
result type in :mod:`saas.agents.run` (both re-exported here and from :mod:`saas.agents`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from saas.agents import prompts
from saas.agents.cache import CallCache
from saas.agents.overlay import Overlay
from saas.agents.run import AgentRun, importance_from_run
from saas.agents.stages import (
    BehaviourLike,
    Progress,
    decompose,
    rate_contributions,
    rate_subbehaviours,
    sample_examples,
    score_instances,
    session_for,
    update_table,
)
from saas.agents.types import AgentBackend, AgentError, Behaviour
from saas.data import BehaviourDataset

__all__ = [
    "AgentRun",
    "BehaviourLike",
    "Progress",
    "decompose",
    "importance_from_run",
    "rate_contributions",
    "rate_subbehaviours",
    "run_agents",
    "sample_examples",
    "score_instances",
]


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
            mines phrases from all of them). Default: all.
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
    s = session_for(None, cache, refresh)
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
        table = update_table(table, agent_subs, final, eligible, backend, s, progress)
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


