"""The annotation views: quality x eligibility, weight shares, the pairs an evaluation uses."""

from __future__ import annotations

import numpy as np
import pytest

from saas import annotated
from saas.data import Instance
from saas.eligibility import REASON_AGAINST, REASON_GAP, apply_cutoff, project


def _inst(k: int, quality: str | None, facet: str | None = None) -> Instance:
    meta = {} if quality is None else {"quality": quality}
    if facet:
        meta["facet"] = facet
    return Instance(f"i{k}", f"q{k}?", f"pos {k}", f"neg {k}", meta=meta)


def _eligibility(reasons: list[list[str]]) -> object:
    """An eligibility result with the given reasons (rows without reasons are eligible)."""
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(len(reasons), 8)) + 3.0
    neg = rng.normal(size=(len(reasons), 8))
    el = apply_cutoff(project(pos, neg, axis="mean_diff"), kappa=0.0)
    el.reasons = [list(r) for r in reasons]
    el.eligible = np.array([not r for r in reasons])
    return el


def test_quality_table_counts_each_kind_and_reason() -> None:
    quals = ["clean", "clean", "clean", "swapped", "swapped", "weak", None]
    insts = [_inst(k, q) for k, q in enumerate(quals)]
    reasons = [[], [REASON_GAP], [], [REASON_AGAINST], [REASON_GAP, REASON_AGAINST], [], [REASON_GAP]]
    table = annotated.quality_table(_eligibility(reasons), insts).set_index("quality")
    assert list(table.index) == ["clean", "swapped", "weak", "unannotated", "total"]
    assert table.loc["clean"].tolist() == [3, 2, 1, 1, 0, pytest.approx(100 / 3)]
    assert table.loc["swapped", ["pairs", "kept", "dropped", "not separable", "inconsistent"]].tolist() == [2, 0, 2, 1, 2]
    assert table.loc["weak", "dropped"] == 0
    assert table.loc["total", ["pairs", "kept", "dropped"]].tolist() == [7, 3, 4]
    with pytest.raises(ValueError, match="3 instances"):
        annotated.quality_table(_eligibility(reasons), insts[:3])


def test_weight_shares_against_hand_sums() -> None:
    quals = ["clean", "clean", "neutral", "swapped", "clean"]
    insts = [_inst(k, q) for k, q in enumerate(quals)]
    eligible = np.array([True, True, True, False, True])
    w = np.array([0.5, 0.1, 0.3, 0.0, 0.1])
    shares = annotated.weight_shares(w, eligible, insts).set_index("quality")
    assert shares.loc["flawed", "saas weight %"] == pytest.approx(30.0)  # neutral 0.3, swapped dropped
    assert shares.loc["flawed", "uniform weight %"] == pytest.approx(25.0)  # 1 of 4 eligible is flawed
    assert shares.loc["flawed", "share of pairs %"] == pytest.approx(40.0)  # 2 of 5 pairs
    assert shares.loc["clean", "saas weight %"] == pytest.approx(70.0)
    assert shares.loc["swapped", "eligible"] == 0


def test_evaluation_pairs_keep_clean_pairs_on_annotated_data_only() -> None:
    labelled = [_inst(0, "clean"), _inst(1, "swapped"), _inst(2, "clean"), _inst(3, None)]
    keep, text = annotated.evaluation_pairs(labelled)
    assert keep == [0, 2] and "clean pairs only (2 of 4" in text
    plain = [_inst(0, None), _inst(1, None)]
    assert annotated.evaluation_pairs(plain) == ([0, 1], "all pairs (2)")


def test_annotation_summary_and_lines() -> None:
    insts = [_inst(0, "clean", "warm"), _inst(1, "swapped")]
    el = _eligibility([[], [REASON_AGAINST]])
    summary = annotated.annotation_summary(el, np.array([1.0, 0.0]), insts)
    assert summary["quality_x_eligibility"]["swapped"]["dropped"] == 1
    assert summary["weight_shares_pct"]["flawed"]["saas weight %"] == 0.0
    lines = annotated.summary_lines(summary)
    assert lines[0].startswith("annotated quality x eligibility (annotation, not used by the method)")
    assert any(line.startswith("weight on flawed pairs: SAAS 0.0%") for line in lines)
    assert annotated.annotation_summary(el, np.array([1.0, 0.0]), [_inst(0, None), _inst(1, None)]) == {}
    assert annotated.annotation_labels(insts) == ["clean · warm", "swapped"]


# --------------------------------------------------------------------------------------------
# the answer-token confound check (saas.diagnostics)


def _yesno(tokens: list[str]) -> list[Instance]:
    return [Instance(f"p{k}", f"s{k}?", t, "No" if t == "Yes" else "Yes") for k, t in enumerate(tokens)]


def test_confound_check_flags_a_one_polarity_selection_of_balanced_data() -> None:
    from saas.diagnostics import confound_check

    insts = _yesno(["Yes", "No"] * 10)  # balanced: 50 / 50
    eligible = np.array([t == "Yes" for t in ["Yes", "No"] * 10])  # only the Yes positives survive
    eligible[1] = True  # one No
    w = eligible / eligible.sum()
    check = confound_check(insts, eligible, w)
    assert check.flagged and check.token == "Yes"
    assert "91% of the eligible pairs have the positive answer 'Yes'" in check.message
    assert "polarity-balanced" in check.message
    split = check.split.set_index("token")
    assert split.loc["Yes", "eligible"] == 10 and split.loc["No", "eligible"] == 1
    assert split.loc["Yes", "saas weight %"] == pytest.approx(100 * 10 / 11)


def test_confound_check_quiet_on_a_mixed_selection_or_unbalanced_data() -> None:
    from saas.diagnostics import confound_check

    insts = _yesno(["Yes", "No"] * 10)
    assert not confound_check(insts, np.ones(20, bool), np.full(20, 0.05)).flagged
    unbalanced = _yesno(["Yes"] * 17 + ["No"] * 3)  # 85 % Yes in the data itself: not the selection's doing
    assert not confound_check(unbalanced, np.ones(20, bool), np.full(20, 0.05)).flagged
    # The weight alone can trigger it: every pair eligible, the weight on the No pairs.
    w = np.array([0.0, 0.1] * 10)
    check = confound_check(insts, np.ones(20, bool), w)
    assert check.flagged and check.token == "No" and "of the SAAS weight" in check.message
    assert "temperature" in check.message and "polarity-balanced" not in check.message  # the eligibility is not the cause
