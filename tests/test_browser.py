"""The real app in a real browser: ``streamlit run app.py`` on a free port, headless Chromium.

One walk through the app as a new user makes it, on the defaults (embedded model, the optimism demo,
offline agents): the app prepares the default run by itself on first open; every page renders with
its charts; the kappa slider (Eligibility) and the temperature slider (Weights) are moved with the
keyboard and the numbers on the page change (the ``@st.fragment`` reruns in a real browser); the
Steering page streams base, prompted, CAA, SAAS and prompted + SAAS together; a second browser
context (a collaborator opening the URL) sees the prepared run without pressing Prepare. Any browser
console error other than a blocked network request fails the test. Set ``SAAS_SCREENSHOT_DIR`` to
keep the screenshots.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from saas_app.server import CHROMIUM, CHROMIUM_ARGS, serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Locator, Page

PAGES = ["Overview", "Activations", "Eligibility", "Sub-behaviours", "Weights", "Steering", "Evaluation"]
#: Console errors that only say the machine has no network (fonts, telemetry, a CDN): not app errors.
BLOCKED_NETWORK = re.compile(r"net::ERR_|Failed to load resource|ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED|"
                             r"ERR_CONNECTION_REFUSED|ERR_ADDRESS_UNREACHABLE", re.I)

pytestmark = pytest.mark.browser


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    with serve(tmp_path / "server.log", env={"SAAS_APP_AUTOPREPARE": "1"}) as url:
        yield url


class Console:
    """Collects the page's console errors and uncaught exceptions."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def attach(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        return page

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error" and not BLOCKED_NETWORK.search(msg.text):
            self.errors.append(f"console: {msg.text}")


def metric(page: Page, label: str) -> str:
    """The displayed value of the ``st.metric`` with this label."""
    box = page.locator('[data-testid="stMetric"]').filter(has=page.get_by_text(label, exact=True)).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def slider(page: Page, label_start: str) -> Locator:
    """The thumb of the slider whose label starts with ``label_start``."""
    box = page.locator('[data-testid="stSlider"]').filter(has=page.get_by_text(label_start)).first
    return box.locator('input[type="range"]').first


def wait_change(page: Page, label: str, before: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = metric(page, label)
        if now != before:
            return now
        time.sleep(0.1)
    raise AssertionError(f"metric {label!r} stayed {before!r} for {timeout} s")


def goto(page: Page, name: str, charts: int = 1) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    page.get_by_role("heading", name=name if name != "Overview" else "Overview").first.wait_for(timeout=120_000)
    if charts:  # charts inside collapsed expanders stay hidden: wait for visible ones
        page.locator(".js-plotly-plot:visible").nth(charts - 1).wait_for(state="visible", timeout=120_000)
    time.sleep(1.0)  # let plotly finish drawing
    check_page(page)


def check_page(page: Page) -> None:
    """The title is on screen; no exception box, no traceback."""
    assert page.get_by_role("heading", name="SAAS Explorer").is_visible()
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.inner_text("body")


def launch(pw: Any) -> Browser:
    assert Path(CHROMIUM).exists(), "install Debian's chromium: apt-get install -y chromium"
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def test_walk_the_app_in_headless_chromium(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    keep = os.environ.get("SAAS_SCREENSHOT_DIR")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    console = Console()
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = console.attach(browser.new_page(viewport={"width": 1400, "height": 1800}))
            page.goto(server, timeout=120_000)
            page.get_by_role("heading", name="SAAS Explorer").wait_for(timeout=120_000)
            # Ready on open: the default run prepares itself, no Prepare press.
            page.get_by_text("Ready:").first.wait_for(timeout=900_000)
            page.locator(".js-plotly-plot:visible").first.wait_for(state="visible", timeout=120_000)
            time.sleep(1.5)
            page.screenshot(path=str(shots / "overview.png"))
            check_page(page)
            assert metric(page, "Pairs") == "150"

            # A collaborator opening the URL sees the prepared run at once.
            other = console.attach(browser.new_context(viewport={"width": 1400, "height": 1200}).new_page())
            t0 = time.monotonic()
            other.goto(server, timeout=120_000)
            other.get_by_text("Ready:").first.wait_for(timeout=60_000)
            assert time.monotonic() - t0 < 60
            assert other.get_by_text("Nothing prepared yet").count() == 0
            other.close()

            for name in PAGES[1:]:
                goto(page, name, charts=0 if name == "Steering" else 1)
                page.screenshot(path=str(shots / f"{name.lower()}.png"))
                if name == "Eligibility":
                    before = metric(page, "Cutoff kappa x D")
                    thumb = slider(page, "kappa (cutoff")
                    thumb.focus()
                    for _ in range(10):  # kappa 0.5 -> 1.0 with the keyboard
                        page.keyboard.press("ArrowRight")
                    after = wait_change(page, "Cutoff kappa x D", before)
                    assert float(after) > float(before)
                    page.screenshot(path=str(shots / "eligibility_kappa.png"))
                if name == "Weights":
                    before = metric(page, "Effective N")
                    thumb = slider(page, "log10 temperature")
                    thumb.focus()
                    page.keyboard.press("Home")  # the coldest temperature: a few pairs dominate
                    after = wait_change(page, "Effective N", before)
                    assert float(after) < float(before)
                if name == "Steering":
                    page.get_by_role("button", name="Generate").click()
                    columns = ("base", "prompted", "caa", "saas", "prompted_saas")
                    deadline = time.monotonic() + 600
                    texts: list[str] = []
                    while time.monotonic() < deadline:
                        boxes = [page.locator(f".st-key-steer_text_{c}") for c in columns]
                        texts = [b.inner_text().strip() if b.count() else "" for b in boxes]
                        if all(len(t) > 10 for t in texts) and page.get_by_text("generating").count() == 0:
                            break
                        time.sleep(0.5)
                    else:
                        raise AssertionError(f"the five columns did not fill: {texts}")
                    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=600_000)
                    texts = [page.locator(f".st-key-steer_text_{c}").inner_text().strip() for c in columns]
                    assert len(set(texts)) >= 2, texts  # prompting (or steering) changes the reply
                    page.screenshot(path=str(shots / "steering.png"))
                    check_page(page)
        finally:
            browser.close()
    assert not console.errors, console.errors
    assert (shots / "overview.png").stat().st_size > 20_000  # a rendered page, not a blank one
