"""The record of one agent run (:class:`AgentRun`) and Eq. 5 on it (:func:`importance_from_run`)."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saas.agents.cache import CallCache, StageStats
from saas.agents.overlay import Overlay
from saas.agents.stages import Progress, session_for, update_table
from saas.agents.types import AgentBackend, AgentError, Behaviour, ContributionResult, RelevanceTable, SubBehaviour
from saas.data import Instance


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
        """The kept sub-behaviours of the tree in use (the ones Eq. 5 sums over)."""
        return [s for s in self.subs if s.kept]

    def importance(self, ids: Sequence[str]) -> np.ndarray:
        """Eq. 5 for these instances; see :func:`importance_from_run`."""
        return importance_from_run(self, ids)

    def summary(self) -> str:
        """One line per stage: calls, cache hits, wall time and, for LLM backends, the input tokens
        split into uncached / written to the prompt cache / read from it, and the output tokens."""
        return "\n".join(f"{stage}: {st.describe()}" for stage, st in self.stats.items())

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
        s = session_for(None, cache, refresh)
        after = overlay.apply(self.agent_subs, self.threshold)
        t0 = time.perf_counter()
        table = update_table(self.table, self.subs, after, instances, backend, s, progress)
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
        """The full record, JSON-ready."""
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
        """Inverse of :meth:`to_dict`."""
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
                    "origin": s.origin,
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
        overlay = _load_overlay(d / "overlay.json")
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


def _load_overlay(path: Path) -> Overlay | None:
    """The overlay saved beside a run; a corrupted file is ignored with a warning (the run's own
    sub-behaviours and scores are still loaded; only the user's edits are lost)."""
    if not path.exists():
        return None
    try:
        return Overlay.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.warn(f"ignoring the unreadable overlay file {path} ({err}); the run is loaded without edits",
                      stacklevel=3)
        return None


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
