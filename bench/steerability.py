"""Benchmark: per-instance steerability vs the activation extraction of the same pairs.

Issue 12, target: steerability for 200 persona pairs <= 2x the time of their activation extraction.
Both arms start from nothing cached (``use_cache=False``) and run on the same model and pairs:

- activations: :func:`saas.activations.extract_activations` (all layers, answer scores included,
  the default), i.e. what the pipeline runs for these pairs;
- steerability: :func:`saas.diagnostics.steerability` under the CAA vector of these activations at
  the middle layer, alpha in {-1, -0.5, 0, 0.5, 1}, on a fresh prompt KV cache (the prompt runs once,
  each alpha re-runs the last prompt token and the answer tokens).

Arms interleave over ``--rounds``; medians and the ratio are printed.

    .venv/bin/python bench/steerability.py [--data ../shared/data/persona/openness.jsonl --limit 200 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from saas.activations import extract_activations
from saas.data import load_dataset
from saas.diagnostics import STEER_ALPHAS, steerability
from saas.models import load_model
from saas.paths import set_offline_defaults
from saas.steering import SteeringVector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "persona" / "openness.jsonl"
TARGET = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    set_offline_defaults()
    torch.set_num_threads(args.threads)
    lm = load_model("default")
    ds = load_dataset(args.data, limit=args.limit)
    layer = lm.n_layers // 2
    acts = extract_activations(lm, ds, batch_size=args.batch_size, use_cache=False)
    vec = SteeringVector.from_array(acts.diffs(layer).mean(axis=0), layer, "caa")
    print(f"{ds.name}: {len(ds)} pairs ({ds.answer_kind}), model {lm.name}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; CAA vector at layer {layer}, alphas {list(STEER_ALPHAS)}")
    times: dict[str, list[float]] = {"activations": [], "steerability": []}
    for r in range(args.rounds):
        order = ("activations", "steerability") if r % 2 == 0 else ("steerability", "activations")
        for arm in order:
            t0 = time.perf_counter()
            if arm == "activations":
                extract_activations(lm, ds, batch_size=args.batch_size, use_cache=False)
            else:
                steerability(lm, ds.instances, ds.answer_kind, vec, batch_size=args.batch_size, use_cache=False)
            times[arm].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["steerability"] / med["activations"]
    paired = statistics.median(s / a for s, a in zip(times["steerability"], times["activations"]))
    print(f"activations {med['activations']:.1f} s, steerability {med['steerability']:.1f} s (medians of {args.rounds}): "
          f"{ratio:.2f}x (median of paired ratios {paired:.2f}x); target <= {TARGET:.0f}x: "
          f"{'OK' if ratio <= TARGET else 'MISSES'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"times": times, "ratio": ratio, "paired": paired, "n": len(ds)}, indent=2))


if __name__ == "__main__":
    main()
