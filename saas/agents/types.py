"""The bottom layer of ``saas.agents``: the agents' data types, the backend Protocol and the errors.

- :class:`SubBehaviour`: one node of the behaviour tree (Agent-1 writes name + description and says
  where they came from, Agent-2 adds the contribution c_k and a rationale, the user may edit it
  through an overlay).
- :class:`ContributionResult`: Agent-2's verdict on one sub-behaviour.
- :class:`RelevanceTable`: Agent-3's s_ik in [0, 10], N instances x K' kept sub-behaviours, with a
  flag for every repaired cell and the id of the call that produced every cell.
- :class:`DraftSubBehaviour` / :class:`BatchScores`: what a backend returns to the pipeline.
- :class:`AgentBackend`: the Protocol every backend implements.
- :class:`AgentError` (a stage failed) and :class:`ReplyError` (a reply broke its schema).

This module imports nothing else from ``saas.agents`` (the call session appears only as a type), so
every other module of the package can import it without a cycle. Every data type has ``to_dict`` /
``from_dict`` so it can be cached, exported and reloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from saas.data import BehaviourDataset, Instance

if TYPE_CHECKING:
    from saas.agents.cache import CallSession

Provenance = Literal["agent", "edited", "added"]

SCORE_MIN = 0.0
SCORE_MAX = 10.0


class AgentError(RuntimeError):
    """An agent stage could not produce a valid result (after the retries that make sense)."""


class ReplyError(ValueError):
    """A reply that does not satisfy the expected schema (raised by parsers; the call stays cached)."""


@dataclass(frozen=True)
class Behaviour:
    """The target behaviour as the agents see it: a short name and a one-paragraph description."""

    name: str
    description: str

    @classmethod
    def coerce(cls, behaviour: Behaviour | BehaviourDataset | tuple[str, str]) -> Behaviour:
        """Accept a dataset, a ``(name, description)`` pair or a Behaviour."""
        if isinstance(behaviour, Behaviour):
            return behaviour
        if isinstance(behaviour, BehaviourDataset):
            return cls(behaviour.name, behaviour.description)
        name, description = behaviour
        return cls(str(name), str(description))


@dataclass(frozen=True)
class SubBehaviour:
    """One sub-behaviour of the target behaviour.

    Attributes:
        id: Stable id: ``"S1"`` .. ``"SK"`` in Agent-1's order, ``"U1"``.. for user-added ones.
        name: Short name (a few words).
        description: One sentence.
        contribution: c_k in [0, 10] from Agent-2 (or the user); None before Agent-2 ran.
        rationale: Agent-2's one-line reason (or a note on the edit).
        kept: ``contribution >= threshold`` (default threshold 2); only kept ones are scored.
        provenance: ``"agent"``, ``"edited"`` (user changed it) or ``"added"`` (user wrote it).
        extractive: True when the name/description were extracted (offline backend: from the
            behaviour description or from phrases of the answers) rather than written by a
            language model.
        origin: Where the name came from, in words: the description clause, the mined phrases
            (with their counts in positive vs negative answers), or the language model that wrote
            it. Empty for runs saved before this field existed.
    """

    id: str
    name: str
    description: str
    contribution: float | None = None
    rationale: str = ""
    kept: bool = True
    provenance: Provenance = "agent"
    extractive: bool = False
    origin: str = ""

    @property
    def text(self) -> str:
        """``"name: description"``, the form the scoring agents see."""
        return f"{self.name}: {self.description}"

    def with_contribution(self, contribution: float, rationale: str, threshold: float) -> SubBehaviour:
        """A copy with Agent-2's contribution and rationale; ``kept = contribution >= threshold``."""
        return replace(self, contribution=float(contribution), rationale=rationale, kept=contribution >= threshold)

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubBehaviour:
        """Inverse of :meth:`to_dict`; fields missing in older files get their defaults."""
        c = d.get("contribution")
        return cls(
            id=str(d["id"]),
            name=str(d["name"]),
            description=str(d.get("description", "")),
            contribution=None if c is None else float(c),
            rationale=str(d.get("rationale", "")),
            kept=bool(d.get("kept", True)),
            provenance=d.get("provenance", "agent"),
            extractive=bool(d.get("extractive", False)),
            origin=str(d.get("origin", "")),
        )


@dataclass(frozen=True)
class ContributionResult:
    """Agent-2's verdict on one sub-behaviour.

    Attributes:
        sub_id: Which sub-behaviour.
        contribution: c_k in [0, 10] (clipped if the agent went out of range; see ``repaired``).
        rationale: One line.
        repaired: True if the raw value was out of range and clipped.
        call_id: The cache key of the call that produced it.
    """

    sub_id: str
    contribution: float
    rationale: str
    repaired: bool = False
    call_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContributionResult:
        return cls(
            sub_id=str(d["sub_id"]),
            contribution=float(d["contribution"]),
            rationale=str(d.get("rationale", "")),
            repaired=bool(d.get("repaired", False)),
            call_id=str(d.get("call_id", "")),
        )


@dataclass
class RelevanceTable:
    """Agent-3's relevance scores s_ik.

    Attributes:
        ids: Instance ids, length N (row order).
        sub_ids: Sub-behaviour ids, length K (column order).
        scores: float array [N, K], every value in [0, 10].
        flags: bool array [N, K]; True where the raw score was repaired (out of range -> clipped).
        call_ids: str array [N, K]: cache key of the call that produced each cell (open
            ``cache/agents/<call_id>.json`` to audit it).
        notes: Free-text notes on the run (e.g. extra ids a batch reply contained and that were
            ignored).
    """

    ids: list[str]
    sub_ids: list[str]
    scores: np.ndarray
    flags: np.ndarray = field(default=None)  # type: ignore[arg-type]  # None -> zeros in __post_init__
    call_ids: np.ndarray = field(default=None)  # type: ignore[arg-type]  # None -> "" in __post_init__
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n, k = len(self.ids), len(self.sub_ids)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(n, k)
        self.flags = np.zeros((n, k), bool) if self.flags is None else np.asarray(self.flags, bool).reshape(n, k)
        if self.call_ids is None:
            self.call_ids = np.full((n, k), "", dtype=object)
        else:
            self.call_ids = np.asarray(self.call_ids, dtype=object).reshape(n, k)
        if len(set(self.ids)) != n:
            raise ValueError("RelevanceTable: duplicate instance ids")
        if len(set(self.sub_ids)) != k:
            raise ValueError("RelevanceTable: duplicate sub-behaviour ids")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ids), len(self.sub_ids))

    @classmethod
    def empty(cls, ids: Sequence[str]) -> RelevanceTable:
        return cls(list(ids), [], np.zeros((len(ids), 0)))

    def column(self, sub_id: str) -> np.ndarray:
        """Scores of one sub-behaviour, shape [N]."""
        return self.scores[:, self.sub_ids.index(sub_id)]

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Scores of some instances, shape [len(ids), K]; an id not in the table raises KeyError."""
        index = {i: r for r, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"instances not scored by Agent-3: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return self.scores[[index[i] for i in ids]]

    def drop_columns(self, sub_ids: set[str] | Sequence[str]) -> RelevanceTable:
        keep = [j for j, s in enumerate(self.sub_ids) if s not in set(sub_ids)]
        return RelevanceTable(
            list(self.ids),
            [self.sub_ids[j] for j in keep],
            self.scores[:, keep],
            self.flags[:, keep],
            self.call_ids[:, keep],
            list(self.notes),
        )

    def with_columns(self, other: RelevanceTable) -> RelevanceTable:
        """This table with ``other``'s columns added (or replacing same-id ones); rows must match."""
        if set(other.ids) != set(self.ids):
            raise ValueError("with_columns: the two tables score different instances")
        order = [other.ids.index(i) for i in self.ids]
        base = self.drop_columns(set(other.sub_ids))
        return RelevanceTable(
            list(self.ids),
            base.sub_ids + list(other.sub_ids),
            np.concatenate([base.scores, other.scores[order]], axis=1),
            np.concatenate([base.flags, other.flags[order]], axis=1),
            np.concatenate([base.call_ids, other.call_ids[order]], axis=1),
            list(self.notes) + [n for n in other.notes if n not in self.notes],
        )

    def to_frame(self) -> pd.DataFrame:
        """Scores as a DataFrame: index = instance id, columns = sub-behaviour ids."""
        return pd.DataFrame(self.scores, index=pd.Index(self.ids, name="instance_id"), columns=list(self.sub_ids))

    def to_csv(self, path: str | Path) -> None:
        """Write ``instance_id`` + one column per sub-behaviour id (scores only)."""
        self.to_frame().to_csv(path)

    @classmethod
    def from_csv(cls, path: str | Path) -> RelevanceTable:
        """Read a table written by :meth:`to_csv` (flags and call ids are not in the CSV)."""
        df = pd.read_csv(path, index_col=0, dtype={0: str})
        return cls([str(i) for i in df.index], [str(c) for c in df.columns], df.to_numpy(dtype=np.float64))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": list(self.ids),
            "sub_ids": list(self.sub_ids),
            "scores": self.scores.tolist(),
            "flags": self.flags.tolist(),
            "call_ids": self.call_ids.tolist(),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RelevanceTable:
        n, k = len(d["ids"]), len(d["sub_ids"])
        return cls(
            [str(i) for i in d["ids"]],
            [str(s) for s in d["sub_ids"]],
            np.asarray(d["scores"], dtype=np.float64).reshape(n, k),
            None if d.get("flags") is None else np.asarray(d["flags"], bool).reshape(n, k),  # type: ignore[arg-type]
            None if d.get("call_ids") is None else np.asarray(d["call_ids"], dtype=object).reshape(n, k),  # type: ignore[arg-type]
            list(d.get("notes", [])),
        )


def clip_score(value: float) -> tuple[float, bool]:
    """Clip a score into [0, 10]; returns (score, repaired)."""
    if value < SCORE_MIN:
        return SCORE_MIN, True
    if value > SCORE_MAX:
        return SCORE_MAX, True
    return float(value), False


# --- what backends return -------------------------------------------------------------------


@dataclass(frozen=True)
class DraftSubBehaviour:
    """Agent-1's raw output for one sub-behaviour, before the pipeline gives it an id.

    Attributes:
        name: Short verb phrase.
        description: One sentence.
        extractive: True when extracted (offline backend), False when written by a language model.
        origin: Where the name came from (see :attr:`SubBehaviour.origin`).
    """

    name: str
    description: str
    extractive: bool = False
    origin: str = ""


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
        """The call id of every row."""
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
    number of Agent-3 calls that may run at once. Every model call goes through
    :meth:`saas.agents.cache.CallSession.call`, which caches it.
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
        """Agent-1: 5 to 10 sub-behaviours (LLM backends read ``examples``; offline mines ``pool``)."""
        ...

    def rate(
        self, behaviour: Behaviour, subs: Sequence[SubBehaviour], *, session: CallSession
    ) -> list[ContributionResult]:
        """Agent-2: one ContributionResult per sub-behaviour (no instances)."""
        ...

    def score_batch(
        self, instances: Sequence[Instance], subs: Sequence[SubBehaviour], *, session: CallSession
    ) -> BatchScores:
        """Agent-3: s_ik for one batch of instances and the given (kept) sub-behaviours."""
        ...
