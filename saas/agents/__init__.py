"""The semantic half of SAAS: Agent-1 (decomposition), Agent-2 (evaluation), Agent-3 (scoring), Eq. 5.

Typical use::

    from saas.agents import make_backend, run_agents, importance_from_run

    backend = make_backend("auto")            # Claude if ANTHROPIC_API_KEY is set, else offline
    run = run_agents(dataset, backend, train_ids=train, eligible_ids=eligible)
    run.save("out/agents")                    # subbehaviours.json + relevance.csv
    s = importance_from_run(run, eligible)     # Eq. 5: s_i = sum_k c_k s_ik

Backends: :class:`AnthropicBackend` (Claude, tool-use structured output), :class:`OfflineBackend`
(all-MiniLM-L6-v2 sentence encoder; extractive Agent-1), :class:`LocalLLMBackend` (a local
transformers chat model). Every call is cached under ``cache/agents/`` (see ``saas.agents.cache``).
Heavy packages (anthropic, torch, sentence-transformers) are imported only when a backend needs them.
"""

from __future__ import annotations

from saas.agents.anthropic_backend import DEFAULT_MODEL, AnthropicBackend
from saas.agents.backend import AgentBackend, BatchScores, DraftSubBehaviour, instance_text, make_backend
from saas.agents.cache import CallCache, CallSession, ReplyError, StageStats
from saas.agents.local_llm import LocalLLMBackend
from saas.agents.offline import OfflineBackend, calibrate, default_encoder_path
from saas.agents.overlay import Overlay, SubEdit, dropped, invalidated
from saas.agents.pipeline import (
    AgentRun,
    decompose,
    importance_from_run,
    rate_contributions,
    rate_subbehaviours,
    run_agents,
    sample_examples,
    score_instances,
)
from saas.agents.prompts import PROMPT_VERSION
from saas.agents.types import AgentError, Behaviour, ContributionResult, RelevanceTable, SubBehaviour

__all__ = [
    "DEFAULT_MODEL",
    "PROMPT_VERSION",
    "AgentBackend",
    "AgentError",
    "AgentRun",
    "AnthropicBackend",
    "BatchScores",
    "Behaviour",
    "CallCache",
    "CallSession",
    "ContributionResult",
    "DraftSubBehaviour",
    "LocalLLMBackend",
    "OfflineBackend",
    "Overlay",
    "RelevanceTable",
    "ReplyError",
    "StageStats",
    "SubBehaviour",
    "SubEdit",
    "calibrate",
    "default_encoder_path",
    "decompose",
    "dropped",
    "importance_from_run",
    "instance_text",
    "invalidated",
    "make_backend",
    "rate_contributions",
    "rate_subbehaviours",
    "run_agents",
    "sample_examples",
    "score_instances",
]
