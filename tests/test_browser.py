"""The real app in a real browser: ``streamlit run app.py`` on a free port, headless Chromium.

Presses Prepare (embedded model, demo behaviour, offline agents), waits for the charts, takes
screenshots and checks that the page shows the app's title and a chart, not a blank page or an
exception box. Set ``SAAS_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    streamlit = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "streamlit"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(streamlit if streamlit.exists() else shutil.which("streamlit")), "run", "app.py",
         "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def test_app_in_headless_chromium(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium: apt-get install -y chromium"
    keep = os.environ.get("SAAS_SCREENSHOT_DIR")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(server, timeout=120_000)
            page.get_by_role("heading", name="SAAS Explorer").wait_for(timeout=120_000)
            page.get_by_text("Press Prepare in the sidebar").first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "before_prepare.png"))

            page.get_by_role("button", name="Prepare").click()
            page.get_by_text("Ready:").first.wait_for(timeout=600_000)
            page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=120_000)
            time.sleep(1.5)  # let plotly finish drawing
            page.screenshot(path=str(shots / "overview.png"))
            check_page(page)

            page.get_by_role("link", name="Eligibility").click()
            page.get_by_role("heading", name="Eligibility").wait_for(timeout=60_000)
            page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=120_000)
            time.sleep(1.5)
            page.screenshot(path=str(shots / "eligibility.png"))
            check_page(page)
            assert page.get_by_text("Mean separation D").count() >= 1
        finally:
            browser.close()
    assert (shots / "overview.png").stat().st_size > 20_000  # a rendered page, not a blank one


def check_page(page: Page) -> None:
    """The title and at least one chart are on screen; no exception box, no traceback."""
    assert page.get_by_role("heading", name="SAAS Explorer").is_visible()
    assert page.locator(".js-plotly-plot").count() >= 1
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.inner_text("body")
