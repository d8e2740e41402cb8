"""The optional ``facet`` / ``quality`` annotations of a dataset, compared with what the method did.

The method never reads annotations (DESIGN.md section 5): eligibility, the agents and the weights
see only the texts and the activations. This module puts the annotations next to the method's
decisions so that a reader can judge them:

- :func:`quality_table`: annotated quality x kept / dropped (and why), for one eligibility result;
- :func:`weight_shares`: the share of the SAAS weight that lands on flawed pairs, next to the share
  the same pairs get under uniform weights over the eligible pairs (the method without its agents)
  and their share of all training pairs;
- :func:`evaluation_pairs`: the held-out pairs an evaluation should use on annotated data (the
  clean ones: a flawed pair's "positive" is not the behaviour);
- :func:`annotation_summary`: both tables as JSON-friendly dicts (``saas run``'s summary.json).

Everything here is pure (no model, no streamlit). An instance without a ``quality`` annotation is
reported as ``"unannotated"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from saas.data import FLAWS, QUALITIES, BehaviourDataset, Instance
from saas.eligibility import REASON_AGAINST, REASON_GAP, REASON_ZERO, EligibilityResult

UNANNOTATED = "unannotated"
NOTE = "annotation, not used by the method"
"""The label every view of an annotation carries."""


def is_annotated(instances: Sequence[Instance]) -> bool:
    """True when at least one instance has a ``quality`` annotation."""
    return any(i.quality is not None for i in instances)


def qualities(instances: Sequence[Instance]) -> list[str]:
    """Each instance's ``quality`` annotation, ``"unannotated"`` where it has none."""
    return [i.quality or UNANNOTATED for i in instances]


def annotation_labels(instances: Sequence[Instance]) -> list[str]:
    """A short annotation text per instance for tables and hovers: ``"clean · credits-preparation"``,
    ``"swapped"``, ... (``""`` for an unannotated instance)."""
    out = []
    for inst in instances:
        parts = [p for p in (inst.quality, inst.facet) if p]
        out.append(" · ".join(parts))
    return out


def _kinds(present: Sequence[str]) -> list[str]:
    """The quality kinds in canonical order, only those present."""
    order = [*QUALITIES, UNANNOTATED]
    return [k for k in order if k in set(present)]


def quality_table(elig: EligibilityResult, instances: Sequence[Instance]) -> pd.DataFrame:
    """Annotated quality x kept / dropped (and why) for the instances an eligibility result covers.

    Args:
        elig: The eligibility result (in the order of ``instances``).
        instances: The instances it was computed on (e.g. the training split).

    Returns:
        One row per quality kind present (clean first, then the flaw kinds, then unannotated) and a
        ``total`` row; columns ``quality, pairs, kept, dropped, not separable, inconsistent,
        dropped %``. A dropped pair may have both reasons, so the two reason columns can sum to
        more than ``dropped``.
    """
    if len(instances) != len(elig):
        raise ValueError(f"{len(instances)} instances for an eligibility result of {len(elig)}")
    q = np.asarray(qualities(instances))
    keep = np.asarray(elig.eligible, dtype=bool)
    gap = np.array([REASON_GAP in r for r in elig.reasons])
    against = np.array([REASON_AGAINST in r or REASON_ZERO in r for r in elig.reasons])
    rows = []
    for kind in [*_kinds(q.tolist()), "total"]:
        m = np.ones(len(q), dtype=bool) if kind == "total" else q == kind
        n = int(m.sum())
        dropped = int((m & ~keep).sum())
        rows.append({"quality": kind, "pairs": n, "kept": int((m & keep).sum()), "dropped": dropped,
                     "not separable": int((m & gap).sum()), "inconsistent": int((m & against).sum()),
                     "dropped %": 100.0 * dropped / n if n else float("nan")})
    return pd.DataFrame(rows, columns=["quality", "pairs", "kept", "dropped", "not separable", "inconsistent",
                                       "dropped %"])


def weight_shares(weights: np.ndarray, eligible: np.ndarray, instances: Sequence[Instance]) -> pd.DataFrame:
    """Where the SAAS weight goes, per annotated quality, next to two references.

    Args:
        weights: [N] SAAS weights (sum 1 over the eligible instances, 0 elsewhere).
        eligible: [N] bool eligibility mask.
        instances: The N instances (training split order).

    Returns:
        One row per quality kind present and a ``flawed`` row (every flaw kind together); columns
        ``quality, pairs, eligible, saas weight %`` (share of the SAAS weight), ``uniform weight %``
        (share under uniform weights over the eligible pairs, i.e. SAAS without its agents) and
        ``share of pairs %`` (share among all N pairs, i.e. CAA's weighting).
    """
    w = np.asarray(weights, dtype=np.float64)
    keep = np.asarray(eligible, dtype=bool)
    if w.shape != (len(instances),) or keep.shape != w.shape:
        raise ValueError(f"weights {w.shape} and eligible {keep.shape} must both be [{len(instances)}]")
    q = np.asarray(qualities(instances))
    total_w = float(w.sum())
    n_elig = int(keep.sum())
    rows = []
    flawed = np.isin(q, FLAWS)
    for kind in [*_kinds(q.tolist()), "flawed"]:
        m = flawed if kind == "flawed" else q == kind
        rows.append({
            "quality": kind, "pairs": int(m.sum()), "eligible": int((m & keep).sum()),
            "saas weight %": 100.0 * float(w[m].sum()) / total_w if total_w > 0 else float("nan"),
            "uniform weight %": 100.0 * int((m & keep).sum()) / n_elig if n_elig else float("nan"),
            "share of pairs %": 100.0 * int(m.sum()) / len(q) if len(q) else float("nan"),
        })
    return pd.DataFrame(rows, columns=["quality", "pairs", "eligible", "saas weight %", "uniform weight %",
                                       "share of pairs %"])


def steerability_by_quality(slopes: np.ndarray, eligible: np.ndarray, instances: Sequence[Instance]) -> pd.DataFrame:
    """Per annotated quality: pairs, anti-steerable pairs (slope < 0) and their share, median slope,
    and the anti-steerable share among the kept and among the dropped pairs of that quality."""
    s = np.asarray(slopes, dtype=np.float64)
    keep = np.asarray(eligible, dtype=bool)
    q = np.asarray(qualities(instances))
    rows = []
    for kind in [*_kinds(q.tolist()), "total"]:
        m = np.ones(len(q), dtype=bool) if kind == "total" else q == kind
        anti = m & (s < 0)

        def pct(mask: np.ndarray, anti: np.ndarray = anti) -> float:
            return 100.0 * int((anti & mask).sum()) / int(mask.sum()) if mask.any() else float("nan")

        rows.append({"quality": kind, "pairs": int(m.sum()), "anti-steerable": int(anti.sum()),
                     "anti-steerable %": pct(m), "median slope": float(np.median(s[m])) if m.any() else float("nan"),
                     "anti % of kept": pct(m & keep), "anti % of dropped": pct(m & ~keep)})
    return pd.DataFrame(rows, columns=["quality", "pairs", "anti-steerable", "anti-steerable %", "median slope",
                                       "anti % of kept", "anti % of dropped"])


def evaluation_pairs(instances: Sequence[Instance]) -> tuple[list[int], str]:
    """Which held-out pairs to evaluate on: on annotated data the clean ones, else all.

    Returns:
        ``(positions into instances, description)`` where description is e.g. ``"clean pairs only
        (9 of 12; 3 flawed left out, annotation)"`` or ``"all pairs (12)"``.
    """
    if not is_annotated(instances):
        return list(range(len(instances))), f"all pairs ({len(instances)})"
    keep = [k for k, i in enumerate(instances) if i.quality == "clean"]
    left = len(instances) - len(keep)
    return keep, f"clean pairs only ({len(keep)} of {len(instances)}; {left} flawed or unannotated left out by annotation)"


def clean_positions(dataset: BehaviourDataset, indices: Sequence[int]) -> list[int]:
    """The dataset positions among ``indices`` to evaluate on (:func:`evaluation_pairs`)."""
    picked, _ = evaluation_pairs([dataset.instances[i] for i in indices])
    return [int(indices[k]) for k in picked]


def annotation_summary(elig: EligibilityResult, weights: np.ndarray, instances: Sequence[Instance]) -> dict[str, Any]:
    """:func:`quality_table` and :func:`weight_shares` as JSON-friendly dicts (``{}`` when unannotated)."""
    if not is_annotated(instances):
        return {}
    table = quality_table(elig, instances)
    shares = weight_shares(weights, elig.eligible, instances)
    return {
        "note": NOTE,
        "quality_x_eligibility": {r["quality"]: {k: r[k] for k in table.columns if k != "quality"}
                                  for r in table.to_dict("records")},
        "weight_shares_pct": {r["quality"]: {k: r[k] for k in shares.columns if k != "quality"}
                              for r in shares.to_dict("records")},
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """:func:`annotation_summary` as a few printable lines (the CLI's output)."""
    if not summary:
        return []
    lines = [f"annotated quality x eligibility ({NOTE}):"]
    for kind, row in summary["quality_x_eligibility"].items():
        lines.append(f"  {kind:12s} {row['pairs']:4d} pairs: kept {row['kept']:4d}, dropped {row['dropped']:4d} "
                     f"(not separable {row['not separable']}, inconsistent {row['inconsistent']})")
    fl = summary["weight_shares_pct"].get("flawed")
    if fl is not None:
        lines.append(f"weight on flawed pairs: SAAS {fl['saas weight %']:.1f}% vs uniform over eligible "
                     f"{fl['uniform weight %']:.1f}% ({fl['share of pairs %']:.1f}% of the training pairs)")
    return lines
