"""User edits of the sub-behaviour tree, kept as an overlay on top of the agents' output.

The agents' output is never modified; an :class:`Overlay` records renames, rewordings,
contribution changes, additions and removals, and :meth:`Overlay.apply` produces the edited list
(provenance ``"edited"`` / ``"added"``). :func:`invalidated` says which relevance columns an edit
makes stale, so that only those are scored again:

==========================  =========================================================
edit                        effect on Agent-3 (relevance table)
==========================  =========================================================
rename / reword             that sub-behaviour's column is re-scored (only it)
change contribution         nothing (only Eq. 5 changes); a sub-behaviour that
                            becomes kept and has no column yet is scored
add                         the new column is scored (only it)
remove                      the column is dropped (:func:`dropped`)
==========================  =========================================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from saas.agents.types import AgentError, SubBehaviour, clip_score


@dataclass
class SubEdit:
    """The user's changes to one agent sub-behaviour (None = unchanged)."""

    name: str | None = None
    description: str | None = None
    contribution: float | None = None
    removed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubEdit:
        c = d.get("contribution")
        return cls(d.get("name"), d.get("description"), None if c is None else float(c), bool(d.get("removed", False)))


@dataclass
class Overlay:
    """Edits on top of the agents' sub-behaviours.

    Attributes:
        edits: Per agent sub-behaviour id, what the user changed.
        added: Sub-behaviours the user wrote (ids ``"U1"``, ``"U2"``, ...).
    """

    edits: dict[str, SubEdit] = field(default_factory=dict)
    added: list[SubBehaviour] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.edits or self.added)

    # --- edits ----------------------------------------------------------------------------------

    def _edit(self, sub_id: str) -> SubEdit:
        return self.edits.setdefault(sub_id, SubEdit())

    def _added_index(self, sub_id: str) -> int | None:
        for j, s in enumerate(self.added):
            if s.id == sub_id:
                return j
        return None

    def _update_added(self, sub_id: str, **changes: Any) -> bool:
        j = self._added_index(sub_id)
        if j is None:
            return False
        self.added[j] = replace(self.added[j], **changes)
        return True

    def rename(self, sub_id: str, name: str) -> None:
        if not name.strip():
            raise AgentError("a sub-behaviour needs a non-empty name")
        if not self._update_added(sub_id, name=name.strip()):
            self._edit(sub_id).name = name.strip()

    def reword(self, sub_id: str, description: str) -> None:
        if not description.strip():
            raise AgentError("a sub-behaviour needs a non-empty description")
        if not self._update_added(sub_id, description=description.strip()):
            self._edit(sub_id).description = description.strip()

    def set_contribution(self, sub_id: str, contribution: float) -> None:
        c, _ = clip_score(float(contribution))
        if not self._update_added(sub_id, contribution=c):
            self._edit(sub_id).contribution = c

    def add(
        self, name: str, description: str, contribution: float, rationale: str = "added by the user"
    ) -> SubBehaviour:
        """Add a sub-behaviour; returns it (with a fresh ``U<n>`` id)."""
        if not name.strip() or not description.strip():
            raise AgentError("a sub-behaviour needs a non-empty name and description")
        taken = {s.id for s in self.added}
        n = 1
        while f"U{n}" in taken:
            n += 1
        c, _ = clip_score(float(contribution))
        sub = SubBehaviour(f"U{n}", name.strip(), description.strip(), c, rationale, True, "added", False,
                           "written by the user")
        self.added.append(sub)
        return sub

    def remove(self, sub_id: str) -> None:
        j = self._added_index(sub_id)
        if j is not None:
            del self.added[j]
        else:
            self._edit(sub_id).removed = True

    # --- applying -------------------------------------------------------------------------------

    def apply(self, subs: Sequence[SubBehaviour], threshold: float = 2.0) -> list[SubBehaviour]:
        """The edited list: agent sub-behaviours with their edits (removed ones left out), then added ones.

        ``kept`` is recomputed as ``contribution >= threshold`` for every edited or added entry.
        """
        out: list[SubBehaviour] = []
        for s in subs:
            e = self.edits.get(s.id)
            if e is None:
                out.append(s)
                continue
            if e.removed:
                continue
            changed: dict[str, Any] = {}
            if e.name is not None and e.name != s.name:
                changed["name"] = e.name
            if e.description is not None and e.description != s.description:
                changed["description"] = e.description
            if e.contribution is not None and e.contribution != s.contribution:
                changed["contribution"] = e.contribution
                changed["rationale"] = f"contribution set by the user (agent: {s.contribution}; {s.rationale})"
            if not changed:
                out.append(s)
                continue
            new = replace(s, provenance="edited", **changed)
            c = new.contribution
            out.append(replace(new, kept=c is not None and c >= threshold))
        for a in self.added:
            out.append(replace(a, kept=a.contribution is not None and a.contribution >= threshold))
        return out

    # --- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"edits": {k: v.to_dict() for k, v in self.edits.items()}, "added": [s.to_dict() for s in self.added]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Overlay:
        return cls(
            {str(k): SubEdit.from_dict(v) for k, v in (d.get("edits") or {}).items()},
            [SubBehaviour.from_dict(s) for s in d.get("added") or []],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Overlay:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def invalidated(before: Sequence[SubBehaviour], after: Sequence[SubBehaviour]) -> set[str]:
    """Ids whose relevance column must be (re)scored when the tree goes from ``before`` to ``after``.

    A kept sub-behaviour in ``after`` is invalidated when it is new, was not kept before (it has no
    column yet), or its name or description changed. Contribution changes alone invalidate nothing.
    """
    old = {s.id: s for s in before}
    out = set()
    for s in after:
        if not s.kept:
            continue
        b = old.get(s.id)
        if b is None or not b.kept or b.text != s.text:
            out.add(s.id)
    return out


def dropped(before: Sequence[SubBehaviour], after: Sequence[SubBehaviour]) -> set[str]:
    """Ids whose column should be dropped: kept before, and removed or no longer kept after."""
    kept_after = {s.id for s in after if s.kept}
    return {s.id for s in before if s.kept and s.id not in kept_after}
