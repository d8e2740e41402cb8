"""Benchmark: in a real browser, a key press on the kappa / temperature slider to updated numbers on the page.

Issue 11, target (f): <= 150 ms. Starts the app (``streamlit run``) on the warm disk cache, opens it in
headless Chromium (Playwright), lets the default run prepare itself, then on the Eligibility page
presses ArrowRight on the kappa slider and on the Weights page on the log10-temperature slider,
``--moves`` times each. The time of one move is measured inside the page: from just before the key
press to the first DOM mutation after which the watched metric ("Cutoff kappa x D", "Effective N")
shows a new value (a MutationObserver on the document). Also reported: the time from ``goto`` to
the first chart on a freshly started server with a warm disk cache (issue 11 (e), in a browser).

    .venv/bin/python bench/browser_sliders.py [--moves 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from saas_app.server import CHROMIUM, CHROMIUM_ARGS, serve

TARGET_MS = 150.0

WATCH = """(label) => {
  const value = () => {
    const box = [...document.querySelectorAll('[data-testid="stMetric"]')]
      .find(m => m.querySelector('[data-testid="stMetricLabel"]')?.innerText.trim() === label);
    return box ? box.querySelector('[data-testid="stMetricValue"]').innerText : null;
  };
  window.__prev = value(); window.__t = null;
  if (window.__obs) window.__obs.disconnect();
  window.__obs = new MutationObserver(() => {
    if (window.__t === null) { const v = value(); if (v !== null && v !== window.__prev) window.__t = performance.now(); }
  });
  window.__obs.observe(document.body, {subtree: true, childList: true, characterData: true});
  window.__t0 = performance.now();
  return window.__prev;
}"""


def slider(page: Any, label_start: str) -> Any:
    box = page.locator('[data-testid="stSlider"]').filter(has=page.get_by_text(label_start)).first
    return box.locator('input[type="range"]').first


def moves(page: Any, slider_label: str, metric: str, n: int, key: str = "ArrowRight") -> list[float]:
    thumb = slider(page, slider_label)
    out = []
    for _ in range(n):
        thumb.focus()
        page.evaluate(WATCH, metric)
        page.keyboard.press(key)
        page.wait_for_function("() => window.__t !== null", timeout=30_000)
        out.append(float(page.evaluate("() => window.__t - window.__t0")))
        time.sleep(0.6)  # let the fragment finish (charts) before the next move
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    log = Path(tempfile.mkdtemp(prefix="saas-bench-")) / "server.log"
    t_server = time.perf_counter()
    with serve(log, env={"SAAS_APP_AUTOPREPARE": "1"}) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        t0 = time.perf_counter()
        page.goto(url, timeout=120_000)
        page.locator(".js-plotly-plot:visible").first.wait_for(state="visible", timeout=600_000)
        first_chart = time.perf_counter() - t0
        print(f"fresh server, warm disk cache: first chart {first_chart:.1f} s after goto "
              f"({time.perf_counter() - t_server:.1f} s after the server start)")
        results: dict[str, Any] = {"first_chart_s": first_chart}
        for link, slider_label, metric, name in (("Eligibility", "kappa (cutoff", "Cutoff kappa x D", "kappa"),
                                                 ("Weights", "log10 temperature", "Effective N", "temperature")):
            page.get_by_role("link", name=link, exact=True).click()
            page.locator(".js-plotly-plot:visible").first.wait_for(state="visible", timeout=120_000)
            time.sleep(1.5)
            ms = moves(page, slider_label, metric, args.moves)
            results[name] = ms
            med = statistics.median(ms)
            print(f"{name:12s} key press -> new '{metric}' median {med:6.0f} ms (min {min(ms):.0f}, max {max(ms):.0f}) "
                  f"over {len(ms)} moves; target <= {TARGET_MS:.0f} ms: {'OK' if med <= TARGET_MS else 'MISSES'}")
        browser.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
