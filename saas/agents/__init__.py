"""The semantic half of SAAS: Agent-1 (decomposition), Agent-2 (evaluation), Agent-3 (scoring), Eq. 5.

Typical use::

    from saas.agents import make_backend, run_agents, importance_from_run

    backend = make_backend("auto")            # Claude if ANTHROPIC_API_KEY is set, else offline
    run = run_agents(dataset, backend, train_ids=train, eligible_ids=eligible)
    run.save("out/agents")                    # subbehaviours.json + relevance.csv
    s = importance_from_run(run, eligible)     # Eq. 5: s_i = sum_k c_k s_ik

Layers (each imports only the ones above it; no cycles):

- ``types``: data types, the :class:`AgentBackend` Protocol, :class:`AgentError`, :class:`ReplyError`
- ``prompts``: every prompt template and tool schema (:data:`PROMPT_VERSION`)
- ``cache``: the on-disk call cache and the per-stage counters (:class:`StageStats`)
- ``overlay``: the user's edits of the tree
- ``contrast``, ``clauses``, ``phrases``: the texts the offline agents read
- ``offline``, ``anthropic_backend``, ``local_llm``: the backends
- ``factory``: :func:`make_backend`
- ``stages`` (the three agents, backend-agnostic), ``run`` (:class:`AgentRun`, Eq. 5),
  ``pipeline`` (:func:`run_agents`)

Backends: :class:`AnthropicBackend` (Claude, tool-use structured output, prompt caching),
:class:`OfflineBackend` (all-MiniLM-L6-v2 sentence encoder; contrastive and extractive),
:class:`LocalLLMBackend` (a local transformers chat model). Every call is cached under
``cache/agents/`` (see ``saas.agents.cache``). Heavy packages (anthropic, torch,
sentence-transformers) are imported only when a backend needs them.
"""

from __future__ import annotations

from saas.agents import prompts
from saas.agents.anthropic_backend import DEFAULT_MODEL, AnthropicBackend
from saas.agents.cache import CallCache, CallSession, StageStats
from saas.agents.contrast import Contrast, contrast_of, instance_text
from saas.agents.factory import make_backend
from saas.agents.local_llm import LocalLLMBackend
from saas.agents.offline import OfflineBackend, calibrate, default_encoder_path
from saas.agents.overlay import Overlay, SubEdit, dropped, invalidated
from saas.agents.pipeline import run_agents
from saas.agents.prompts import PROMPT_VERSION
from saas.agents.run import AgentRun, importance_from_run
from saas.agents.stages import decompose, rate_contributions, rate_subbehaviours, sample_examples, score_instances
from saas.agents.types import (
    AgentBackend,
    AgentError,
    BatchScores,
    Behaviour,
    ContributionResult,
    DraftSubBehaviour,
    RelevanceTable,
    ReplyError,
    SubBehaviour,
)

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
    "Contrast",
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
    "contrast_of",
    "decompose",
    "default_encoder_path",
    "dropped",
    "importance_from_run",
    "instance_text",
    "invalidated",
    "make_backend",
    "prompts",
    "rate_contributions",
    "rate_subbehaviours",
    "run_agents",
    "sample_examples",
    "score_instances",
]
