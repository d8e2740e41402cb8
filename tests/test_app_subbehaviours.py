"""The Sub-behaviours page shows where every sub-behaviour came from (its origin), in the tree's hover
and in the table, through ``streamlit.testing.v1.AppTest`` from ``app.py``.

Prepare loads the embedded SmolLM2 (``model`` marker); the agents are the offline backend on the
bundled optimism demo, so the origins are description clauses and mined phrases.
"""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from saas_app.apptest import app_test, page_path


def _problems(at: AppTest) -> list[str]:
    return [e.value for e in at.exception]


@pytest.fixture(scope="module")
def page() -> AppTest:
    at = app_test().run()
    at.button(key="prepare").click().run()
    assert not _problems(at), _problems(at)
    at.switch_page(page_path("subbehaviours")).run()
    assert not _problems(at) and not at.error, (_problems(at), [e.value for e in at.error])
    return at


@pytest.mark.model
def test_tree_hover_shows_each_origin(page: AppTest) -> None:
    tree = json.loads(page.get("plotly_chart")[0].proto.spec)["data"][0]
    hovers = tree["hovertext"][1:]  # [0] is the behaviour itself
    assert hovers and all("<i>source:</i>" in h for h in hovers)
    assert any("description clause" in h for h in hovers)
    assert any("phrases mined from" in h for h in hovers)
    assert not any("not recorded" in h for h in hovers)


@pytest.mark.model
def test_table_has_a_read_only_origin_column(page: AppTest) -> None:
    editors = [e for e in page.dataframe if "origin" in e.value.columns]
    assert len(editors) == 1
    table = editors[0].value
    assert table["origin"].str.len().min() > 0
    names = dict(zip(table["name"], table["origin"], strict=True))
    assert names["credits the person's own preparation and strengths"].startswith("description clause:")
    assert any(o.startswith("phrases mined from") and "positive vs" in o for o in table["origin"])


@pytest.mark.model
def test_user_added_subbehaviour_says_so(page: AppTest) -> None:
    page.text_input(key="sub_add_name").set_value("reassures the person")
    page.text_input(key="sub_add_desc").set_value("The reply tells the person they will be fine.")
    [b for b in page.button if b.label == "Add"][0].click().run()
    assert not _problems(page) and not page.error
    table = next(e.value for e in page.dataframe if "origin" in e.value.columns)
    assert table.set_index("name").loc["reassures the person", "origin"] == "written by the user"
    page.button(key="sub_reset").click().run()
