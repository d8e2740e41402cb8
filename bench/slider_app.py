"""Benchmark: server time per kappa / temperature slider move in the app, at the demo size.

Drives ``app.py`` headless with ``streamlit.testing.v1.AppTest``: presses Prepare (the embedded
SmolLM2-135M and the bundled demo, 90 pairs, offline agents; disk caches make this quick after the
first run), then moves

- the kappa slider on the Eligibility page, and
- the log10-temperature slider on the Weights page,

``--moves`` times each, to values not seen before (so every move recomputes eligibility, weights
and every method's vector from the cached activations: the worst case; the Fisher solve is cached
per layer and axis). Each timing is one ``AppTest.run()``: a FULL script run (sidebar + page), so
it is an upper bound on what a browser waits for, where only the page's ``@st.fragment`` reruns.
No move runs the model (asserted: the model's forward is patched to fail).

Run: ``.venv/bin/python bench/slider_app.py [--moves 10]``. Target: < 300 ms per move.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamlit.testing.v1 import AppTest  # noqa: E402

from saas.paths import set_offline_defaults  # noqa: E402
from saas_app.apptest import app_test, page_path  # noqa: E402

TARGET_MS = 300.0


def timed_moves(at: AppTest, key: str, values: list[float]) -> list[float]:
    times = []
    for v in values:
        at.slider(key=key).set_value(v)
        t0 = time.perf_counter()
        at.run()
        times.append((time.perf_counter() - t0) * 1e3)
        if at.exception:
            raise RuntimeError(at.exception[0].value)
    return times


def forbid_model() -> None:
    """Make any forward pass of the shared model raise, to prove the sliders never run it."""
    from saas_app import resources

    lm = resources.model("default")  # the process-wide instance the app uses (a cache hit)

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a slider move ran the model")

    lm.model.register_forward_pre_hook(refuse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=10)
    args = ap.parse_args()
    set_offline_defaults()

    t0 = time.perf_counter()
    at = app_test().run()
    at.button(key="prepare").click().run()
    if not at.success:
        sys.exit(f"Prepare failed: {[e.value for e in at.error] or [e.value for e in at.exception]}")
    print(f"Prepare (model load + cached activations/agents/scores): {time.perf_counter() - t0:.1f} s")
    forbid_model()

    at.switch_page(page_path("eligibility")).run()
    at.run()  # warm: projection cached for this layer/axis
    kappas = [round(0.30 + 0.05 * i, 2) for i in range(args.moves)]
    kappa_ms = timed_moves(at, "w_kappa", kappas)
    at.slider(key="w_kappa").set_value(0.5).run()

    at.switch_page(page_path("weights")).run()
    lo = at.slider(key="w_log_t").min
    temps = [round(lo + 0.35 * (i + 1), 2) for i in range(args.moves)]
    temp_ms = timed_moves(at, "w_log_t", temps)

    from saas.data import load_dataset

    print(f"Demo size: {len(load_dataset('demo'))} pairs (7:2:1 split), all layers cached; {args.moves} moves each, "
          "full-script AppTest runs")
    for name, ms in (("kappa (Eligibility page)", kappa_ms), ("temperature (Weights page)", temp_ms)):
        med = statistics.median(ms)
        verdict = "OK" if med < TARGET_MS else "OVER"
        print(f"{name:28s} median {med:7.1f} ms  (min {min(ms):6.1f}, max {max(ms):6.1f})  "
              f"target < {TARGET_MS:.0f} ms: {verdict} ({med / TARGET_MS:.2f} of the budget)")


if __name__ == "__main__":
    main()
