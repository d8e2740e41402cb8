"""The CLI end to end on the embedded model: ``saas extract``, ``run``, ``eval``, ``generate``, ``agents``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from saas.cli import main

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_run")
    assert main(["run", "--dataset", "demo", "--layer", "15", "--agents", "offline", "--out", str(out)]) == 0
    return out


def test_run_writes_every_artifact(demo_run) -> None:
    elig = pd.read_csv(demo_run / "eligibility.csv")
    assert list(elig.columns[:9]) == ["id", "p", "n", "gap", "cosine", "separable", "consistent", "eligible", "reasons"]
    assert list(elig.columns[9:]) == ["steerability", "quality", "facet"]  # diagnostics and annotations
    assert elig["steerability"].notna().all()
    weights = pd.read_csv(demo_run / "weights.csv")
    assert list(weights.columns) == ["id", "score", "weight", "eligible", "quality"]
    assert abs(weights["weight"].sum() - 1.0) < 1e-9
    assert (weights.loc[~weights["eligible"], "weight"] == 0).all()
    methods = {p.stem for p in (demo_run / "vectors").glob("*.safetensors")}
    assert {"saas", "caa", "pca-center", "pca-midpoint", "pca-diff", "logit-diff", "conf", "uniform-eligible"} <= methods
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["layer"] == 15 and summary["n_instances"] == 150
    assert summary["split_sizes"] == {"train": 105, "val": 30, "test": 15}
    notes = summary["annotations"]  # the demo is annotated: quality x eligibility and weight shares
    table = notes["quality_x_eligibility"]
    assert table["total"]["pairs"] == 105 and table["total"]["kept"] == summary["eligibility"]["n_eligible"]
    assert sum(table[q]["pairs"] for q in ("clean", "swapped", "neutral", "confounded", "weak")) == 105
    flawed = notes["weight_shares_pct"]["flawed"]
    assert 0 <= flawed["saas weight %"] <= 100 and flawed["share of pairs %"] == pytest.approx(
        100 * sum(table[q]["pairs"] for q in ("swapped", "neutral", "confounded", "weak")) / 105)
    steer = summary["steerability"]
    assert steer["vector"] == "caa" and steer["layer"] == 15 and steer["alphas"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert 0.0 <= steer["anti_steerable_eligible"] <= 1.0 and "by_quality" in steer
    assert summary["scores_source"] == "agents:offline"
    subs = json.loads((demo_run / "agents" / "subbehaviours.json").read_text())
    assert 5 <= len(subs["subbehaviours"] if isinstance(subs, dict) else subs) <= 10
    # SAAS weights come from the agents' scores, so the SAAS vector is not CAA
    from saas.export import load_vector

    saas_v = load_vector(demo_run / "vectors" / "saas").numpy()
    caa_v = load_vector(demo_run / "vectors" / "caa").numpy()
    assert not np.allclose(saas_v, caa_v)
    assert weights["weight"].max() > 2.0 / len(weights)


def test_eval_caa_orders_alignment_by_alpha(demo_run, capsys) -> None:
    """Measured here: CAA at layer 15 moves the held-out likelihood preference 0.49 / 0.53 / 0.58."""
    assert main(["eval", "--run", str(demo_run), "--alphas", "-1,0,1", "--methods", "caa,saas"]) == 0
    df = pd.read_csv(demo_run / "eval.csv")
    assert set(df["split"]) == {"test"} and set(df["method"]) == {"caa", "saas"}
    assert df["pairs"].str.startswith("clean pairs only").all()  # annotated data: the clean held-out pairs
    assert (df["n"] < 15).all()
    caa = df[df["method"] == "caa"].set_index("alpha")["alignment"]
    print(caa.to_dict())
    assert caa[-1.0] < caa[0.0] < caa[1.0]
    assert "caa" in capsys.readouterr().out


def test_generate_prints_base_and_steered(demo_run, capsys) -> None:
    assert main(["generate", "--run", str(demo_run), "--method", "caa", "--alpha", "-2",
                 "--prompt", "My exam is tomorrow. How will it go?", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "=== base" in out and "=== caa (alpha=-2)" in out
    base, steered = out.split("=== caa (alpha=-2)")
    assert base.strip() != steered.strip()


def test_generate_with_prompted_columns_in_one_batch(demo_run, capsys, monkeypatch) -> None:
    import saas.generation as generation

    calls = []
    real = generation.generate_columns
    monkeypatch.setattr(generation, "generate_columns", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    assert main(["generate", "--run", str(demo_run), "--method", "caa,saas", "--alpha", "1", "--prompted",
                 "--positions", "all", "--prompt", "My exam is tomorrow. How will it go?", "--max-new-tokens", "8"]) == 0
    assert calls == [6]  # base, prompted, caa, saas, prompted+caa, prompted+saas: one generate call
    out = capsys.readouterr().out
    for label in ("=== base", "=== prompted\n", "=== caa (alpha=1)", "=== saas (alpha=1)", "=== prompted+caa (alpha=1)",
                  "=== prompted+saas (alpha=1)"):
        assert label in out, label
    assert "Respond in a way that shows optimism" in out


def test_persona_file_through_run_and_eval(shared_data, tmp_path, capsys) -> None:
    """A real persona file end to end. On the 135M model persona alignment sits near chance: we
    check the plumbing and the reported Yes/No mass, not a direction."""
    path = shared_data / "persona" / "openness.jsonl"
    out = tmp_path / "persona"
    assert main(["run", "--dataset", str(path), "--limit", "30", "--layer", "15", "--agents", "none", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answer_kind"] == "yesno" and summary["n_instances"] == 30
    assert main(["eval", "--run", str(out), "--alphas", "-1,1", "--methods", "caa"]) == 0
    df = pd.read_csv(out / "eval.csv")
    assert len(df) == 2 and df["alignment"].between(0, 1).all() and df["mass"].between(0, 1).all()
    print(df.to_string())


def test_extract_and_agents_commands(tmp_path, capsys) -> None:
    assert main(["extract", "--dataset", "demo", "--limit", "12", "--out", str(tmp_path / "x")]) == 0
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert (summary["N"], summary["layers"], summary["d"]) == (12, 30, 576)
    assert np.load(tmp_path / "x" / "positive.npy").shape == (12, 30, 576)
    assert main(["agents", "--dataset", "demo", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "subbehaviours.json").is_file() and (tmp_path / "a" / "relevance.csv").is_file()


def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "positive": "b", "negative": "c"}\n{not json\n')
    assert main(["extract", "--dataset", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 2" in err and "Traceback" not in err
    assert main(["eval", "--run", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_5_mb_prompt_fails_fast_with_file_line_field(tmp_path, capsys) -> None:
    """It used to run for more than 300 s. The real time (< 10 s) is measured in the closing notes;
    here the bound only guards against the hang."""
    import time

    big = tmp_path / "huge.jsonl"
    rows = [{"question": 'Is the following statement something you would say?\n"I like art"', "statement": "I like art",
             "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"},
            {"question": "Is the following statement something you would say?\n\"" + "word " * 1_000_000 + '"',
             "statement": "x", "answer_matching_behavior": " No", "answer_not_matching_behavior": " Yes"}]
    big.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    t0 = time.perf_counter()
    assert main(["extract", "--dataset", str(big), "--out", str(tmp_path / "x")]) == 2
    assert time.perf_counter() - t0 < 60
    err = capsys.readouterr().err
    assert "error: huge.jsonl, line 2, field 'question': prompt + answer is at least" in err
    assert "over the limit of 8,192 tokens (the model context)" in err and "--max-prompt-tokens" in err
    # On request, the long prompt is truncated instead, and the count is reported.
    assert main(["extract", "--dataset", str(big), "--max-prompt-tokens", "64", "--out", str(tmp_path / "y")]) == 0
    summary = json.loads((tmp_path / "y" / "summary.json").read_text())
    assert summary["lengths"]["truncated"] == 1 and summary["lengths"]["longest"] < 200
