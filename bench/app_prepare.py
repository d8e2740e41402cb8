"""Benchmark: the app's cold Prepare vs ``saas run`` cold on the same data; the first page with a warm cache.

Issue 11, targets (a) app cold Prepare <= 1.1x ``saas run`` cold and <= 45 s on the demo, and (e) the
first rendered page with a warm cache <= 10 s. Every arm runs in a FRESH process with its own empty
cache folder (``SAAS_CACHE_DIR``), except for the converted embedded model, which is linked in (the
set-up script converts it once; it is not part of a run):

- ``saas run``: ``saas run --dataset D --agents offline --no-steerability`` (the same work as the
  app's Prepare: activations with the answer scores, the agents, the vectors; steerability is an
  extra diagnostic the app computes on request), wall time of the whole process;
- app cold: ``app.py`` through ``streamlit.testing.v1.AppTest`` in a new process that opens the app
  and lets it prepare by itself; time from the process start to the prepared first page (imports,
  model load, activations, agents: everything a first visitor waits for);
- app warm: the same in another new process once the cache is warm (the next server start).

    .venv/bin/python bench/app_prepare.py [--data demo] [--data ../shared/data/persona/openness.jsonl --limit 200]

The machine is shared: the ratios come from arms measured one after the other in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TARGET_RATIO, TARGET_COLD, TARGET_WARM = 1.1, 45.0, 10.0


def fresh_cache() -> Path:
    """An empty cache folder with the converted embedded model linked in."""
    from saas.paths import cache_dir

    root = Path(tempfile.mkdtemp(prefix="saas-bench-cache-"))
    (root / "models").mkdir()
    for model in (cache_dir("models")).iterdir():
        (root / "models" / model.name).symlink_to(model.resolve())
    return root


def run_cli(data: str, limit: int | None, cache: Path, threads: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="saas-bench-run-"))
    cmd = [PY, "-m", "saas", "run", "--dataset", data, "--agents", "offline", "--no-steerability", "--out", str(out)]
    if limit:
        cmd += ["--limit", str(limit)]
    env = dict(os.environ, SAAS_CACHE_DIR=str(cache), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_app(data: str, limit: int | None, cache: Path, threads: int) -> dict[str, float]:
    env = dict(os.environ, SAAS_CACHE_DIR=str(cache), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    cmd = [PY, str(Path(__file__).resolve()), "--worker", "--data", data, "--threads", str(threads)]
    if limit:
        cmd += ["--limit", str(limit)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    total = time.perf_counter() - t0
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"process": total, **report}


def worker(data: str, limit: int | None, threads: int) -> None:
    """In a fresh process: open the app, let it prepare by itself, report the times."""
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    from saas_app.apptest import app_test

    at = app_test(auto_prepare=True)
    if data != "demo":
        at.session_state["sb_data_kind"] = "path" if not data.startswith("demo:") else "demo"
        if data.startswith("demo:"):
            at.session_state["sb_demo"] = data
        else:
            at.session_state["sb_data_path"] = data
    if limit:
        at.session_state["sb_limit"] = limit
    t0 = time.perf_counter()
    at.run()
    ready = [s.value for s in at.success if "Ready" in s.value]
    if not ready or at.exception:
        raise SystemExit(f"the app did not prepare: {[e.value for e in at.exception] or [e.value for e in at.error]}")
    charts = len(at.get("plotly_chart"))
    print(json.dumps({"imports": t0 - t_start, "first_page": time.perf_counter() - t0,
                      "first_page_from_start": time.perf_counter() - t_start, "charts": charts, "ready": ready[0]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", help="dataset spec (repeatable; default: demo)")
    ap.add_argument("--limit", type=int, default=None, help="instances for file datasets (the demo uses all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    datasets = args.data or ["demo"]
    if args.worker:
        worker(datasets[0], args.limit, args.threads)
        return
    print(f"torch threads {args.threads}; load average {os.getloadavg()[0]:.2f}; fresh process and empty cache per arm")
    results = []
    for data in datasets:
        limit = None if data.startswith("demo") else args.limit
        cli = run_cli(data, limit, fresh_cache(), args.threads)
        cache = fresh_cache()
        cold = run_app(data, limit, cache, args.threads)
        warm = run_app(data, limit, cache, args.threads)
        row = {"data": data, "limit": limit, "saas_run_cold_s": cli, "app_cold_s": cold["process"],
               "app_cold_ratio": cold["process"] / cli, "app_warm_first_page_s": warm["process"],
               "app_warm_detail": warm, "app_cold_detail": cold}
        results.append(row)
        name = data if limit is None else f"{data} (first {limit})"
        ok_ratio = "OK" if row["app_cold_ratio"] <= TARGET_RATIO else "MISSES"
        ok_cold = "OK" if cold["process"] <= TARGET_COLD else "MISSES"
        ok_warm = "OK" if warm["process"] <= TARGET_WARM else "MISSES"
        print(f"{name}: saas run cold {cli:.1f} s; app cold Prepare {cold['process']:.1f} s "
              f"= {row['app_cold_ratio']:.2f}x (target <= {TARGET_RATIO}: {ok_ratio}; <= {TARGET_COLD:.0f} s: {ok_cold}); "
              f"app first page, warm cache {warm['process']:.1f} s (imports {warm['imports']:.1f} s + page "
              f"{warm['first_page']:.1f} s; target <= {TARGET_WARM:.0f} s: {ok_warm})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
