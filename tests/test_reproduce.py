"""``saas reproduce``: splits, table builders, and the quick path end to end on a small subset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest
import torch

from saas import baselines
from saas.cli import build_parser
from saas.pipeline import split_indices
from saas.reproduce import (
    ABLATIONS,
    EXTRA_METHODS,
    LABELS,
    MAIN_METHODS,
    NO_AGENT2,
    NO_ELIGIBILITY,
    ReproduceConfig,
    default_layers,
    mmlu_instances,
    parse_layers,
    render_outputs,
    run_reproduction,
    table1,
    table2,
)

ALL = [*MAIN_METHODS, *EXTRA_METHODS, NO_ELIGIBILITY, NO_AGENT2]


@pytest.mark.parametrize("n", [10, 200, 1000])
def test_split_is_deterministic_per_seed_and_disjoint(n: int) -> None:
    a, b, other = split_indices(n, 3), split_indices(n, 3), split_indices(n, 4)
    assert a == b
    assert a["train"] != other["train"]
    parts = [set(a[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(n))
    assert [len(a[k]) for k in ("train", "val", "test")] == [round(0.7 * n), round(0.2 * n), round(0.1 * n)]


def synthetic(seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for b in ("openness", "neuroticism"):
        for s in range(seeds):
            rows.append({"behaviour": b, "seed": s, "method": "none", "alpha": 0.0, "alignment": 0.5, "mass": 0.6})
            for k, m in enumerate(ALL):
                effect = 0.2 if m == baselines.SAAS else 0.1 - 0.01 * k
                for a in (-1.0, 1.0):
                    rows.append({"behaviour": b, "seed": s, "method": m, "alpha": a, "mass": 0.6,
                                 "alignment": 0.5 + a * effect + 0.001 * rng.normal()})
    return pd.DataFrame(rows)


def test_table1_bolds_the_lowest_at_minus_one_and_the_highest_at_plus_one() -> None:
    md, csv = table1(synthetic())
    saas_line = next(line for line in md.splitlines() if line.startswith("| SAAS |"))
    assert saas_line.count("**") == 2 * 6  # 2 behaviours x 2 alphas + 2 averages, all bold
    for m in (*MAIN_METHODS, *EXTRA_METHODS):
        assert f"| {LABELS[m]}" in md
    assert "*unsteered (α=0)*" in md and "±" in md
    assert set(csv["method"]) == set(ALL)


def test_table2_relative_change_is_negative_when_the_ablation_steers_less() -> None:
    md, t = table2(synthetic(), {"openness": [0.95, 0.9, 0.93], "neuroticism": [0.97, 0.96, 0.98]})
    assert (t["relative_change_pct"] < 0).all()
    for label in ABLATIONS.values():
        assert label in md
    assert "92.7 ± 2.5" in md  # eligible % of openness


def test_layers_and_parsing() -> None:
    assert default_layers(30) == [6, 9, 12, 14, 17, 20, 23]
    assert len(default_layers(30, quick=True)) == 3
    assert all(0 < x < 30 for x in default_layers(30))
    assert parse_layers("10,15,20") == [10, 15, 20]
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers(None) is None


def test_cli_parses_reproduce() -> None:
    args = build_parser().parse_args(["reproduce", "--quick", "--limit", "40", "--layers", "10,15", "--no-bipo", "--mmlu", "0"])
    assert args.quick and args.limit == 40 and args.layers == "10,15" and args.no_bipo and args.mmlu == 0


def test_mmlu_instances_are_sentence_pairs(shared_data) -> None:
    items = mmlu_instances(12, shared_data / "caa" / "mmlu" / "mmlu.json")
    assert 10 <= len(items) <= 12
    raw = json.loads((shared_data / "caa" / "mmlu" / "mmlu.json").read_text())
    first = raw[0]
    assert items[0].positive.strip() == first["correct_full_text"].strip()
    assert items[0].negative.strip() == first["incorrect_full_text"].strip()
    assert len({i.meta["category"] for i in items}) >= 10


@pytest.mark.model
def test_quick_path_end_to_end_writes_every_table(embedded, shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    out = tmp_path / "run"
    config = ReproduceConfig.quick_defaults(
        behaviours=[str(shared_data / "persona" / "openness.jsonl")], limit=40, layers=[10, 15], bipo_epochs=1,
        mmlu=6, temperature_factors=[0.3, 1.0, 3.0], png=False, threads=1, out=str(out))
    result = run_reproduction(config, lm=embedded, say=lambda _m: None, command="pytest")
    for name in ("table1.md", "table1.csv", "table2.md", "table2.csv", "table3.md", "table3.csv", "per_seed.csv", "run.json"):
        assert (out / name).is_file(), name
    t1 = (out / "table1.md").read_text()
    for m in (*MAIN_METHODS, *EXTRA_METHODS):
        assert f"| {LABELS[m]}" in t1, m
    per_seed = pd.read_csv(out / "per_seed.csv")
    assert set(ALL) <= set(per_seed["method"])
    assert set(per_seed["alpha"]) >= {-1.0, 0.0, 1.0}
    assert per_seed["alignment"].between(0, 1).all()
    t2 = (out / "table2.md").read_text()
    assert all(label in t2 for label in ABLATIONS.values())
    t3 = (out / "table3.md").read_text()
    assert "MMLU accuracy unsteered" in t3 and "| openness |" in t3 and "n/a" not in t3.split("\n\n")[1]
    run = json.loads((out / "run.json").read_text())
    seed = run["behaviours"][0]["seeds"][0]
    assert seed["layer"] in (10, 15) and 0 < seed["eligible_fraction"] <= 1
    assert seed["bipo"]["steps"] == -(-seed["n_train"] // config.bipo_batch_size)  # one epoch
    assert set(seed["answer_balance"]) == {"Yes", "No"}
    assert run["command"] == "pytest" and run["wall_seconds"] > 0
    fig = pio.read_json(str(out / "plots" / "openness_alpha.json"))
    assert {tr.name for tr in fig.data} >= {"SAAS", "CAA", "BiPO"}
    assert (out / "plots" / "openness_layers.json").is_file() and (out / "plots" / "openness_temperature.json").is_file()
    assert result.wall_seconds > 0
    assert torch.get_num_threads() == threads  # restored
    # the tables and plots rebuild from the run folder alone (no model)
    before = {n: (out / n).read_text() for n in ("table1.md", "table2.md", "table3.md")}
    for n in before:
        (out / n).unlink()
    render_outputs(out, png=False)
    assert {n: (out / n).read_text() for n in before} == before
