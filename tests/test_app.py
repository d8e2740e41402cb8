"""Every page of the app through ``streamlit.testing.v1.AppTest``, driven from ``app.py``.

Tiers: the tests without a marker need no model (pages before Prepare, upload validation, the
download helpers); the ``model`` tests press Prepare on the embedded SmolLM2 and the bundled demo
with the offline agents (activations, agent calls and model scores come from the disk cache after
the first run) and drive every page's sliders and buttons.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from saas_app import artifacts
from saas_app.apptest import PAGES, app_test, page_path


def problems(at: AppTest) -> list[str]:
    """Exceptions on the page (tracebacks): there must never be any."""
    return [e.value for e in at.exception]


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def chart_titles(at: AppTest) -> list[str]:
    return [c["layout"].get("title", {}).get("text", "") for c in charts(at)]


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def goto(at: AppTest, name: str) -> AppTest:
    at.switch_page(page_path(name)).run()
    assert not problems(at), problems(at)
    assert [t.value for t in at.title] == ["SAAS Explorer"]
    return at


# --------------------------------------------------------------------------------------------
# no model


def test_every_page_before_prepare_asks_for_prepare() -> None:
    at = app_test().run()
    assert not problems(at)
    assert [t.value for t in at.title] == ["SAAS Explorer"]
    assert at.button(key="prepare").label == "Prepare"
    assert "Prepare" in at.info[0].value
    assert metric(at, "Pairs") == "150"  # the demo's table and metrics need no model
    for name in PAGES[1:]:
        goto(at, name)
        assert any("Prepare" in i.value for i in at.info), name


def test_switching_pages_keeps_app_py_around_them() -> None:
    """Every rerun runs app.py (title, sidebar, navigation) around the page: the page files live in
    app_pages/, so Streamlit's legacy pages/ folder mode never takes over."""
    at = app_test(timeout=60).run()
    for name in ("eligibility", "weights", "home"):
        at.switch_page(page_path(name)).run()
        assert not problems(at)
        assert [t.value for t in at.title] == ["SAAS Explorer"] and at.button(key="prepare")
    at.run()
    assert [t.value for t in at.title] == ["SAAS Explorer"]


def test_instance_limit_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAAS_APP_LIMIT", "30")
    at = app_test().run()
    assert at.number_input(key="sb_limit").value == 30
    monkeypatch.setenv("SAAS_APP_LIMIT", "not a number")
    assert app_test().run().number_input(key="sb_limit").value == 0


def test_bad_upload_shows_the_line_number() -> None:
    at = app_test().run()
    at.radio(key="sb_data_kind").set_value("upload").run()
    bad = (b'{"prompt": "a", "positive": "x", "negative": "y"}\n'
           b'{"prompt": "b", "positive": "x", "negative": "y"}\n'
           b'{"prompt": "c", "positive": "x"}\n')
    at.file_uploader(key="sb_upload").set_value(("bad.jsonl", bad, "application/json")).run()
    assert not problems(at)
    errors = [e.value for e in at.error]
    assert any("bad.jsonl, line 3, field 'negative'" in e for e in errors), errors
    assert at.button(key="prepare").disabled  # nothing valid to prepare


def test_good_upload_is_accepted() -> None:
    at = app_test().run()
    at.radio(key="sb_data_kind").set_value("upload").run()
    rows = "".join(json.dumps({"prompt": f"q{i}", "positive": f"yes {i}", "negative": f"no {i}"}) + "\n" for i in range(6))
    at.file_uploader(key="sb_upload").set_value(("mine.jsonl", rows.encode(), "application/json")).run()
    assert not problems(at) and not at.error
    assert any("6 instances" in c.value for c in at.caption)
    assert not at.button(key="prepare").disabled


def test_anthropic_backend_is_offered_only_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    at = app_test().run()
    assert at.selectbox(key="sb_agents").options == ["Offline (sentence encoder)", "Local chat model"]
    at = app_test()
    at.secrets["ANTHROPIC_API_KEY"] = "sk-test"
    at.run()
    assert "Anthropic (Claude)" in at.selectbox(key="sb_agents").options
    at.selectbox(key="sb_agents").set_value("anthropic").run()
    assert at.text_input(key="sb_agent_claude").value  # the default Claude model id, editable


def test_missing_model_is_a_clear_error() -> None:
    at = app_test().run()
    at.radio(key="sb_model_kind").set_value("path").run()
    at.text_input(key="sb_model_path").set_value("/nonexistent/model-folder").run()
    at.button(key="prepare").click().run()
    assert not problems(at)
    assert at.error and "Prepare again" in at.error[0].value
    assert any("Prepare" in i.value for i in at.info)  # still nothing prepared


def test_download_helpers(tmp_path: Path) -> None:
    from test_explore import synthetic_prepared

    from saas.pipeline import compute

    prep = synthetic_prepared()
    res = compute(prep, layer=2)
    with zipfile.ZipFile(io.BytesIO(artifacts.vector_zip(res.vectors["saas"], "v"))) as zf:
        assert sorted(zf.namelist()) == ["v.json", "v.safetensors"]
    assert artifacts.vector_gguf(res.vectors["saas"], "v")[:4] == b"GGUF"
    res = compute(prep, layer=2, kappa=0.7, temperature=3.0)
    with zipfile.ZipFile(io.BytesIO(artifacts.run_bundle(prep, res, 0.5))) as zf:
        names = set(zf.namelist())
        config = json.loads(zf.read("run/config.json"))
    assert {"run/config.json", "run/summary.json", "run/eligibility.csv", "run/vectors/saas.safetensors"} <= names
    assert (config["layer"], config["kappa"], config["shrinkage"], config["temperature"]) == (2, 0.7, 0.5, 3.0)


def test_saved_figures(tmp_path: Path) -> None:
    import plotly.graph_objects as go

    (tmp_path / "ocean" / "figs").mkdir(parents=True)
    go.Figure(go.Scatter(x=[1, 2], y=[3, 4])).write_json(str(tmp_path / "ocean" / "figs" / "alpha.json"))
    (tmp_path / "ocean" / "summary.json").write_text('{"rows": 3}')
    found = artifacts.saved_figures(tmp_path)
    assert list(found) == ["ocean"] and [p.name for p in found["ocean"]] == ["alpha.json"]
    assert list(artifacts.load_figure(found["ocean"][0]).data[0].y) == [3, 4]
    assert artifacts.saved_figures(tmp_path / "missing") == {}


# --------------------------------------------------------------------------------------------
# on the embedded model


@pytest.fixture(scope="module")
def app() -> AppTest:
    """A session that opened the app: it prepared the default run by itself (no Prepare press)."""
    at = app_test(auto_prepare=True).run()
    assert not problems(at), problems(at)
    assert any("Ready" in s.value for s in at.success), [e.value for e in at.error]
    assert at.session_state["run_spec"].dataset == "demo" and at.session_state["run_spec"].agents == "offline"
    return at


@pytest.mark.model
def test_a_second_session_reuses_the_prepared_run_at_once(app: AppTest) -> None:
    import time

    t0 = time.perf_counter()
    other = app_test(auto_prepare=True).run()  # another tab / collaborator opening the URL
    seconds = time.perf_counter() - t0
    assert not problems(other) and any("Ready" in s.value for s in other.success)
    assert seconds < 30, seconds  # the server's prepared run, not a new extraction
    goto(other, "eligibility")
    assert metric(other, "Eligible") == metric(goto(app, "eligibility"), "Eligible")
    other.slider(key="w_kappa").set_value(1.5).run()  # settings stay per session
    assert app.session_state["kappa"] == 0.5


@pytest.mark.model
def test_every_page_renders_after_prepare(app: AppTest) -> None:
    expected = {"home": 1, "activations": 2, "eligibility": 2, "subbehaviours": 1, "weights": 3, "steering": 0,
                "evaluation": 1}
    for name in PAGES:
        goto(app, name)
        assert len(charts(app)) >= expected[name], (name, chart_titles(app))
        assert not app.error, (name, [e.value for e in app.error])
    goto(app, "home")
    assert metric(app, "Pairs") == "150"
    assert metric(app, "Train / val / test") == "105 / 30 / 15"


@pytest.mark.model
def test_activations_map_and_umap_on_request(app: AppTest) -> None:
    goto(app, "activations")
    titles = chart_titles(app)
    assert "Activations (PCA)" in titles[0] and "Per-layer" in titles[1]
    pca = charts(app)[0]
    assert sum(len(t["hovertext"]) for t in pca["data"]) == 2 * 105  # both answers of every training pair
    app.radio(key="act_colour").set_value("annotation").run()  # the demo is annotated
    assert not problems(app)
    names = [t["name"] for t in charts(app)[0]["data"]]
    assert names[0] == "clean (annotation, not used by the method)" and len(names) == 5
    assert sum(len(t["hovertext"]) for t in charts(app)[0]["data"]) == 2 * 105
    app.radio(key="act_colour").set_value("eligibility").run()
    app.radio(key="act_map_method").set_value("UMAP").run()
    assert not problems(app) and any("UMAP runs on request" in i.value for i in app.info)
    assert "Activations (PCA)" not in chart_titles(app)[0]  # nothing slow ran on its own
    app.button(key="act_umap").click().run()
    assert not problems(app) and "UMAP" in chart_titles(app)[0]
    goto(app, "activations")  # cached: shown without the button
    assert "UMAP" in chart_titles(app)[0]
    app.radio(key="act_map_method").set_value("PCA").run()


@pytest.mark.model
def test_layer_select_in_the_sidebar(app: AppTest) -> None:
    goto(app, "home")
    assert metric(app, "Layer") == "15"  # the middle layer by default
    app.selectbox(key="w_layer").set_value(16).run()
    assert metric(app, "Layer") == "16"
    goto(app, "eligibility")
    assert "(layer 16)" in [m.value for m in app.markdown if m.value.startswith("**Rule**")][0]
    app.selectbox(key="w_layer").set_value(15).run()


def eligible_count(at: AppTest) -> tuple[int, int]:
    kept, total = metric(at, "Eligible").split(" / ")
    return int(kept), int(total)


@pytest.mark.model
def test_eligibility_kappa_axis_and_dropped_table(app: AppTest) -> None:
    goto(app, "eligibility")
    n_elig, n_train = eligible_count(app)
    assert n_train == 105 and 0 < n_elig <= n_train
    assert "Separability" in chart_titles(app)[0]
    # The annotated demo: a quality x kept / dropped table that adds up to the metrics.
    quality = [d.value for d in app.dataframe if "quality" in d.value.columns and "kept" in d.value.columns]
    assert quality, "no quality x eligibility table on the annotated demo"
    table = quality[0].set_index("quality")
    assert table.loc["total", "pairs"] == n_train and table.loc["total", "kept"] == n_elig
    assert list(table.index[:-1]) == ["clean", "swapped", "neutral", "confounded", "weak"]
    assert any("annotation, not used by the method" in c.value for c in app.caption)
    app.radio(key="elig_colour").set_value("annotation").run()
    assert not problems(app)
    traces = [t["name"] for t in charts(app)[0]["data"] if t.get("mode") == "markers"]
    assert traces[0].startswith("clean:") and all("annotation, not used by the method" in t for t in traces)
    app.radio(key="elig_colour").set_value("eligibility").run()
    app.slider(key="w_kappa").set_value(1.0).run()
    assert not problems(app)
    n_high, _ = eligible_count(app)
    assert 0 < n_high < n_elig
    assert metric(app, "Cutoff kappa x D") == f"{float(metric(app, 'Mean separation D')):.4g}"
    dropped = [d.value for d in app.dataframe if "reasons" in d.value.columns]
    assert dropped and len(dropped[0]) == n_train - n_high
    assert "annotation (not used by the method)" in dropped[0].columns
    app.radio(key="elig_view").set_value("Sorted gaps").run()
    assert not problems(app) and any("gap" in t.lower() for t in chart_titles(app))
    app.radio(key="elig_view").set_value("Scatter n vs p").run()
    app.radio(key="w_axis").set_value("mean_diff").run()
    assert not problems(app) and any("mean-difference axis" in m.value for m in app.markdown)
    app.slider(key="w_kappa").set_value(2.0).run()  # nothing left: a clear error, no traceback
    assert not problems(app)
    assert any("No pair is eligible" in e.value for e in app.error)
    goto(app, "steering")  # SAAS has no vector: the page says so
    assert any("SAAS has no vector" in e.value for e in app.error)
    goto(app, "eligibility")
    app.radio(key="elig_shrink_kind").set_value("ridge lambda x I").run()
    app.number_input(key="elig_lambda").set_value(0.5).run()
    app.radio(key="w_axis").set_value("fisher").run()
    app.slider(key="w_kappa").set_value(0.5).run()
    assert not problems(app) and "ridge lambda 0.5" in [m.value for m in app.markdown if "**Rule**" in m.value][0]
    app.radio(key="elig_shrink_kind").set_value("Ledoit-Wolf").run()
    assert eligible_count(app) == (n_elig, n_train)


@pytest.mark.model
def test_weights_temperature_slider(app: AppTest) -> None:
    goto(app, "weights")
    auto_t = float(metric(app, "Temperature t"))
    ess_auto = float(metric(app, "Effective N"))
    assert app.button(key="wt_auto_t").disabled
    app.slider(key="w_log_t").set_value(app.slider(key="w_log_t").min).run()  # coldest: a few pairs dominate
    assert not problems(app)
    assert float(metric(app, "Temperature t")) < auto_t
    assert float(metric(app, "Effective N")) < ess_auto
    assert "Instance weights" in chart_titles(app)[-2]
    tops = [d.value for d in app.dataframe if "weight" in d.value.columns]
    assert len(tops) == 2 and tops[0]["weight"].iloc[0] >= tops[1]["weight"].iloc[0]
    assert "annotation (not used by the method)" in tops[0].columns
    flawed = float(metric(app, "SAAS weight on flawed pairs").rstrip("%"))
    uniform = float(metric(app, "Under uniform weights (eligible)").rstrip("%"))
    assert 0.0 <= flawed <= 100.0 and 0.0 < uniform < 100.0
    app.button(key="wt_auto_t").click().run()
    assert float(metric(app, "Temperature t")) == pytest.approx(auto_t)


@pytest.mark.model
def test_subbehaviours_add_and_undo(app: AppTest) -> None:
    goto(app, "subbehaviours")
    tree = charts(app)[0]
    n_before = len(tree["data"][0]["labels"])
    app.text_input(key="sub_add_name").set_value("reassurance")
    app.text_input(key="sub_add_desc").set_value("The reply tells the person they will be fine.")
    app.slider(key="sub_add_c").set_value(8.0)
    [b for b in app.button if b.label == "Add"][0].click().run()
    assert not problems(app) and not app.error
    assert len(charts(app)[0]["data"][0]["labels"]) == n_before + 1
    assert "reassurance" in charts(app)[0]["data"][0]["labels"]
    goto(app, "weights")  # the new scores reach the weights
    goto(app, "subbehaviours")
    app.button(key="sub_reset").click().run()
    assert len(charts(app)[0]["data"][0]["labels"]) == n_before


@pytest.mark.model
def test_steering_generates_all_columns_in_one_batch(app: AppTest) -> None:
    goto(app, "steering")
    assert app.multiselect(key="steer_methods").value == ["base", "prompted", "caa", "saas", "prompted+saas"]
    app.slider(key="steer_tokens").set_value(8)
    app.slider(key="w_alpha").set_value(2.0)
    app.button(key="steer_go").click().run()
    assert not problems(app) and not app.error
    texts = [m.value for m in app.markdown]
    assert "**base**" in texts and "**prompted**" in texts
    assert any(t.startswith("**SAAS**  (alpha +2") for t in texts)
    assert any(t.startswith("**prompted + SAAS**  (alpha +2") for t in texts)
    outputs = app.session_state["steer_last"]["outputs"]
    assert list(outputs) == ["base", "prompted", "caa", "saas", "prompted+saas"] and all(outputs.values())
    app.radio(key="steer_positions").set_value("all").run()  # llama.cpp's mode is offered
    app.multiselect(key="steer_methods").set_value(["base", "saas"])
    app.button(key="steer_go").click().run()
    assert not problems(app) and app.session_state["steer_last"]["positions"] == "all"
    app.slider(key="w_alpha").set_value(1.0).run()  # moving alpha does not run the model; the last texts stay
    assert any("Last generation" in c.value for c in app.caption)
    app.radio(key="steer_positions").set_value("generated").run()


@pytest.mark.model
def test_evaluation_sweeps_and_tables(app: AppTest) -> None:
    goto(app, "evaluation")
    assert "Cosine similarity" in chart_titles(app)[0]
    assert {b.label for b in app.get("download_button")} >= {"Vector (safetensors + JSON)", "GGUF control vector",
                                                              "Run bundle (zip)"}
    app.number_input(key="ev_cap").set_value(2)
    app.multiselect(key="ev_methods").set_value(["saas"])
    app.multiselect(key="ev_alphas").set_value([-1.0, 1.0])
    app.button(key="ev_alpha_go").click().run()
    assert not problems(app) and not app.error
    table = [d.value for d in app.dataframe if "delta" in d.value.columns][0]
    assert table["method"].tolist() == ["SAAS"] and list(table.columns)[1:3] == ["alpha=-1", "alpha=+1"]
    assert np.isfinite(table["delta"]).all()
    app.multiselect(key="ev_layers").set_value([16])
    app.button(key="ev_layer_go").click().run()
    assert not problems(app) and any("Best layer" in c.value for c in app.caption)
    app.slider(key="ev_temp_count").set_value(2)
    app.button(key="ev_temp_go").click().run()
    assert not problems(app) and any("Best temperature" in c.value for c in app.caption)
    titles = chart_titles(app)
    assert any("multiplier" in t for t in titles) and any("layer" in t for t in titles)
    assert any("temperature" in t for t in titles)


@pytest.mark.model
def test_two_sessions_keep_their_own_settings(app: AppTest) -> None:
    other = app_test().run()
    other.button(key="prepare").click().run()  # the shared prepared run: a cache hit
    assert not problems(other)
    goto(other, "eligibility")
    other.slider(key="w_kappa").set_value(1.2).run()
    goto(app, "eligibility")
    mine = metric(app, "Eligible")
    assert app.session_state["kappa"] == 0.5 and other.session_state["kappa"] == 1.2
    assert eligible_count(other)[0] < eligible_count(app)[0]
    goto(app, "eligibility")
    assert metric(app, "Eligible") == mine


@pytest.mark.model
def test_agent_failure_is_an_error_not_a_traceback() -> None:
    at = app_test().run()
    at.selectbox(key="sb_agents").set_value("local").run()
    at.text_input(key="sb_agent_local").set_value("/nonexistent/chat-model").run()
    at.button(key="prepare").click().run()
    assert not problems(at)
    assert any("Ready" in s.value for s in at.success)  # the activations do not depend on the agents
    for name in ("home", "subbehaviours", "weights"):
        goto(at, name)
        assert any("The agents failed" in e.value for e in at.error), name
    goto(at, "subbehaviours")  # page loads do not retry the failed agents; this button does
    at.button(key="sub_rerun").click().run()
    assert not problems(at) and any("The agents failed" in e.value for e in at.error)
    assert at.button(key="sub_rerun").label == "Retry the agents"
    goto(at, "eligibility")
    assert eligible_count(at)[1] == 105


@pytest.mark.model
def test_eligibility_on_persona_openness_shows_steerability_and_the_confound_warning(shared_data: Path) -> None:
    """Yes/No persona data: the consistency test keeps one answer polarity (RESULTS.md), and the page
    says so; the steerability diagnostic sits next to the selection."""
    at = app_test()
    at.session_state["sb_data_kind"] = "path"
    at.session_state["sb_data_path"] = str(shared_data / "persona" / "openness.jsonl")
    at.session_state["sb_limit"] = 200
    at.run()
    at.button(key="prepare").click().run()
    assert not problems(at) and any("Ready" in s.value for s in at.success), [e.value for e in at.error]
    goto(at, "eligibility")
    assert at.radio(key="w_consistency").value == "mean"  # the method as specified is the default
    warnings = [w.value for w in at.warning]
    assert any("Answer-token confound" in w and "polarity-balanced" in w for w in warnings), warnings
    tokens = [d.value for d in at.dataframe if "token" in d.value.columns][0].set_index("token")
    assert set(tokens.index) == {"Yes", "No"} and tokens["eligible %"].max() >= 80
    go = [b for b in at.button if b.key == "elig_steer_go"]  # absent when an earlier run cached the slopes
    if go:
        go[0].click().run()
    assert not problems(at)
    titles = chart_titles(at)
    assert any(t.startswith("Steerability vs gap") for t in titles), titles
    assert metric(at, "Anti-steerable among eligible").endswith("%")
    dropped = [d.value for d in at.dataframe if "reasons" in d.value.columns][0]
    assert "steerability" in dropped.columns and dropped["steerability"].notna().all()
    # The remedy: the polarity-balanced reference keeps both polarities.
    at.radio(key="w_consistency").set_value("polarity-balanced").run()
    assert not problems(at)
    tokens = [d.value for d in at.dataframe if "token" in d.value.columns][0].set_index("token")
    assert tokens["eligible"].min() > 0
    assert "positive-answer tokens" in [m.value for m in at.markdown if m.value.startswith("**Rule**")][0]


@pytest.mark.model
def test_an_uploaded_pair_over_the_context_length_is_a_clear_error() -> None:
    rows = [{"question": 'Is the following statement something you would say?\n"I like art"', "statement": "I like art",
             "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"},
            {"question": "Is the following statement something you would say?\n\"" + "word " * 1_000_000 + '"',
             "statement": "x", "answer_matching_behavior": " No", "answer_not_matching_behavior": " Yes"}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    at = app_test().run()
    at.radio(key="sb_data_kind").set_value("upload").run()
    at.file_uploader(key="sb_upload").set_value(("long.jsonl", data, "application/json")).run()
    assert not problems(at) and not at.button(key="prepare").disabled  # the file itself is valid JSONL
    at.button(key="prepare").click().run()
    assert not problems(at)
    errors = [e.value for e in at.error]
    assert any("long.jsonl, line 2, field 'question': prompt + answer is at least" in e and "8,192 tokens" in e
               for e in errors), errors
    assert any("Prepare" in i.value for i in at.info)  # nothing prepared, nothing lost
