"""Typed results of the three agents.

- :class:`SubBehaviour`: one node of the behaviour tree (Agent-1 writes name + description, Agent-2
  adds the contribution c_k and a rationale, the user may edit it through an overlay).
- :class:`ContributionResult`: Agent-2's verdict on one sub-behaviour.
- :class:`RelevanceTable`: Agent-3's s_ik in [0, 10], N instances x K' kept sub-behaviours, with a
  flag for every repaired cell and the id of the call that produced every cell.

Every type has ``to_dict`` / ``from_dict`` so it can be cached, exported and reloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from saas.data import BehaviourDataset

Provenance = Literal["agent", "edited", "added"]

SCORE_MIN = 0.0
SCORE_MAX = 10.0


class AgentError(RuntimeError):
    """An agent stage could not produce a valid result (after the retries that make sense)."""


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
        extractive: True when the name/description were extracted from instances (offline
            backend) rather than written by a language model.
    """

    id: str
    name: str
    description: str
    contribution: float | None = None
    rationale: str = ""
    kept: bool = True
    provenance: Provenance = "agent"
    extractive: bool = False

    @property
    def text(self) -> str:
        """``"name: description"``, the form the scoring agents see."""
        return f"{self.name}: {self.description}"

    def with_contribution(self, contribution: float, rationale: str, threshold: float) -> SubBehaviour:
        return replace(self, contribution=float(contribution), rationale=rationale, kept=contribution >= threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubBehaviour:
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
    flags: np.ndarray = field(default=None)  # type: ignore[assignment]
    call_ids: np.ndarray = field(default=None)  # type: ignore[assignment]
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
            None if d.get("flags") is None else np.asarray(d["flags"], bool).reshape(n, k),
            None if d.get("call_ids") is None else np.asarray(d["call_ids"], dtype=object).reshape(n, k),
            list(d.get("notes", [])),
        )


def clip_score(value: float) -> tuple[float, bool]:
    """Clip a score into [0, 10]; returns (score, repaired)."""
    if value < SCORE_MIN:
        return SCORE_MIN, True
    if value > SCORE_MAX:
        return SCORE_MAX, True
    return float(value), False
