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
    weights = pd.read_csv(demo_run / "weights.csv")
    assert list(weights.columns) == ["id", "score", "weight", "eligible"]
    assert abs(weights["weight"].sum() - 1.0) < 1e-9
    assert (weights.loc[~weights["eligible"], "weight"] == 0).all()
    methods = {p.stem for p in (demo_run / "vectors").glob("*.safetensors")}
    assert {"saas", "caa", "pca-center", "pca-midpoint", "pca-diff", "logit-diff", "conf", "uniform-eligible"} <= methods
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["layer"] == 15 and summary["n_instances"] == 90
    assert summary["split_sizes"] == {"train": 63, "val": 18, "test": 9}
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
