"""The agent backend Protocol, shared helpers, and :func:`make_backend`.

A backend implements the three agent operations; the pipeline (``saas.agents.pipeline``) does the
sampling, id assignment, thresholding, batching, concurrency, resume and bookkeeping around them.
Every model call a backend makes goes through :meth:`CallSession.call`, which caches it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from saas.agents.cache import CallSession
from saas.agents.types import AgentError, Behaviour, ContributionResult
from saas.data import Instance

BackendName = Literal["anthropic", "offline", "local", "auto"]


@dataclass(frozen=True)
class DraftSubBehaviour:
    """Agent-1's raw output for one sub-behaviour, before the pipeline gives it an id."""

    name: str
    description: str
    extractive: bool = False


@dataclass
class BatchScores:
    """Agent-3's reply for one batch.

    Attributes:
        ids: Instance ids the reply scored (a subset of those asked; extra ids already dropped).
        scores: float [len(ids), K] in [0, 10] (already clipped).
        flags: bool [len(ids), K]; True where a value was clipped.
        call_id: The cache key of the call.
        notes: Anything worth keeping (extra ids ignored, low digit mass, ...).
        row_call_ids: Per-row call ids when rows came from different calls (a re-ask); empty
            means every row came from ``call_id``.
    """

    ids: list[str]
    scores: np.ndarray
    flags: np.ndarray
    call_id: str
    notes: list[str] = field(default_factory=list)
    row_call_ids: list[str] = field(default_factory=list)

    def call_id_of_rows(self) -> list[str]:
        return self.row_call_ids or [self.call_id] * len(self.ids)

    def merged(self, other: BatchScores, note: str = "") -> BatchScores:
        """This batch's rows followed by ``other``'s, each row keeping its own call id."""
        return BatchScores(
            self.ids + other.ids,
            np.concatenate([self.scores, other.scores]),
            np.concatenate([self.flags, other.flags]),
            self.call_id,
            self.notes + other.notes + ([note] if note else []),
            self.call_id_of_rows() + other.call_id_of_rows(),
        )


@runtime_checkable
class AgentBackend(Protocol):
    """What a backend provides. ``name`` and ``model_id`` are part of every cache key.

    ``signature`` holds every other setting that changes results (temperature, calibration, ...).
    ``batch_size`` is the default number of instances per Agent-3 call and ``max_concurrency`` the
    number of Agent-3 calls that may run at once.
    """

    name: str
    model_id: str
    batch_size: int
    max_concurrency: int

    @property
    def signature(self) -> dict[str, Any]: ...

    def decompose(
        self,
        behaviour: Behaviour,
        examples: Sequence[Instance],
        pool: Sequence[Instance],
        *,
        seed: int,
        session: CallSession,
    ) -> list[DraftSubBehaviour]:
        """Agent-1: 5 to 10 sub-behaviours (LLM backends read ``examples``; offline clusters ``pool``)."""
        ...

    def rate(self, behaviour: Behaviour, subs: Sequence[Any], *, session: CallSession) -> list[ContributionResult]:
        """Agent-2: one ContributionResult per sub-behaviour (subs: SubBehaviour; no instances)."""
        ...

    def score_batch(self, instances: Sequence[Instance], subs: Sequence[Any], *, session: CallSession) -> BatchScores:
        """Agent-3: s_ik for one batch of instances and the given (kept) sub-behaviours."""
        ...


# --- helpers shared by the backends -----------------------------------------------------------

_PERSONA_PREFIX = re.compile(r'^\s*Is the following statement something you would say\?\s*"(?P<s>.*)"', re.DOTALL)


def instance_text(inst: Instance) -> str:
    """The text that represents an instance for the offline encoder.

    Rule: the prompt, plus the positive answer when it is a sentence (more than three words). Short
    labels ("(A)", " Yes") add nothing an encoder can use, and the negative answer is left out
    because it shows the *opposite* of the behaviour and would blur the instance's embedding.
    For persona prompts (``Is the following statement something you would say?\n"<statement>"``,
    possibly followed by an answer instruction such as "Answer with Yes or No.") only the statement is
    embedded: the wrapper is shared by every persona instance and only adds noise.
    """
    prompt = inst.prompt.strip()
    m = _PERSONA_PREFIX.match(prompt)
    if m:
        prompt = m.group("s").strip()
    answer = inst.positive.strip()
    if len(answer.split()) > 3:
        return f"{prompt}\n{answer}"
    return prompt


def make_backend(name: BackendName | str, **kw: Any) -> AgentBackend:
    """Build a backend by name.

    Args:
        name: ``"anthropic"`` (Claude; needs ``api_key=`` or ``$ANTHROPIC_API_KEY``), ``"offline"``
            (sentence encoder), ``"local"`` (a transformers chat model: pass ``model=`` and
            ``tokenizer=``, or ``model_path=``), or ``"auto"`` (anthropic if a key is present, else
            offline).
        **kw: Passed to the backend's constructor.
    """
    if name == "auto":
        if kw.get("api_key") or os.environ.get("ANTHROPIC_API_KEY"):
            name = "anthropic"
        else:
            kw.pop("api_key", None)
            name = "offline"
    if name == "anthropic":
        from saas.agents.anthropic_backend import AnthropicBackend

        return AnthropicBackend(**kw)
    if name == "offline":
        from saas.agents.offline import OfflineBackend

        return OfflineBackend(**kw)
    if name == "local":
        from saas.agents.local_llm import LocalLLMBackend

        path = kw.pop("model_path", None)
        if path is not None:
            return LocalLLMBackend.from_pretrained(path, **kw)
        if "model" not in kw or "tokenizer" not in kw:
            raise AgentError("the local backend needs model= and tokenizer= (or model_path=)")
        return LocalLLMBackend(**kw)
    raise AgentError(f"unknown agent backend {name!r}: use anthropic, offline, local or auto")
