"""Steering-hook overhead on generation throughput (issues 3 and 11, target < 3 %).

Generates the same prompts greedily without steering, with one steering vector for every row
(``SteeringVector.apply``) and with the per-row hook (``saas.steering.apply_rows``: a different
vector in every row, what side-by-side columns use), on the embedded model, exactly
``--new-tokens`` new tokens per prompt (``min_new_tokens = max_new_tokens``, so every arm produces
the same number of tokens even when the steered text differs), at batch 1 and batch 8. The arms
are interleaved (order rotating per repeat) so that drifting machine load hits them alike; it
reports the median tokens/s of each arm, the overhead of the medians and the median of the paired
per-repeat ratios, and the hooks' own cost per decode step (a noise-free bound). One torch thread
by default (``--threads``).

    .venv/bin/python bench/hook_overhead.py [--repeats 5] [--new-tokens 40] [--batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from importlib import resources

import torch

from saas.generation import generate
from saas.models import LoadedModel, load_model
from saas.steering import SteeringVector, apply_rows


def demo_prompts(n: int) -> list[str]:
    text = (resources.files("saas") / "demo" / "optimism.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r["prompt"] for r in rows[:n]]


def run_once(lm: LoadedModel, prompts: list[str], vector: SteeringVector | None, new_tokens: int,
             rows: list[tuple[SteeringVector | None, float]] | None = None) -> float:
    """tokens/s of one greedy batch; ``rows``: per-row steering around the call instead of ``vector``."""
    ctx = apply_rows(lm, rows) if rows is not None else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        generate(lm, prompts, vector=vector, alpha=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                 batch_size=len(prompts))
    return len(prompts) * new_tokens / (time.perf_counter() - t0)


def hook_call_seconds(lm: LoadedModel, vec: SteeringVector, batch: int, seq: int, calls: int = 2000,
                      rows: list[tuple[SteeringVector | None, float]] | None = None) -> float:
    """Seconds per call of the registered steering hook alone (single-vector, or per-row with
    ``rows``), on a layer output [batch, seq, d]."""
    hidden = torch.randn(batch, seq, lm.hidden_size, dtype=lm.dtype)
    module = lm.layers[vec.layers[0]]
    with torch.inference_mode(), (apply_rows(lm, rows) if rows is not None else vec.apply(lm, 1.0)):
        (hook,) = list(module._forward_hooks.values())
        for _ in range(50):
            hook(module, (), hidden)
        t0 = time.perf_counter()
        for _ in range(calls):
            hook(module, (), hidden)
        return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    lm = load_model("default")

    def caa_sized(seed: int) -> SteeringVector:
        v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed))
        return SteeringVector.from_array(v / v.norm() * 20.0, args.layer, "bench")  # a CAA-sized vector

    vec = caa_sized(0)
    print(f"model {lm.name} on {lm.device} ({lm.dtype}), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; {args.new_tokens} new tokens, {args.repeats} repeats")
    results = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = demo_prompts(bs)
        # per-row: a different vector in every row, the base model in the first when there are several
        rows: list[tuple[SteeringVector | None, float]] = [(caa_sized(b), 1.0) for b in range(bs)]
        if bs > 1:
            rows[0] = (None, 0.0)
        arms: dict[str, Callable[[int], float]] = {"base": partial(run_once, lm, prompts, None),
                                                   "single": partial(run_once, lm, prompts, vec),
                                                   "rows": partial(run_once, lm, prompts, None, rows=rows)}
        for fn in arms.values():
            fn(4)  # warm-up
        got: dict[str, list[float]] = {k: [] for k in arms}
        names = list(arms)
        for r in range(args.repeats):
            for name in names[r % 3:] + names[: r % 3]:
                got[name].append(arms[name](args.new_tokens))
        med = {k: statistics.median(v) for k, v in got.items()}
        row: dict = {"batch": bs, **{f"{k}_tok_s": v for k, v in med.items()}, "runs": got}
        step_s = bs / med["base"]
        for arm in ("single", "rows"):
            row[f"{arm}_overhead_of_medians"] = med["base"] / med[arm] - 1.0
            row[f"{arm}_overhead_paired_median"] = statistics.median([b / s for b, s in zip(got["base"], got[arm])]) - 1.0
            # Noise-free bound: the hook's own cost per decode step against the measured time per step.
            hook_s = hook_call_seconds(lm, vec, bs, 1, rows=rows if arm == "rows" else None)
            row[f"{arm}_hook_us_per_decode_step"] = 1e6 * hook_s
            row[f"{arm}_hook_share_of_step"] = hook_s / step_s
            print(f"batch {bs}, {arm:6s} hook: {med[arm]:.1f} tok/s vs base {med['base']:.1f} tok/s, overhead "
                  f"{100 * row[f'{arm}_overhead_of_medians']:+.1f}% (median of paired ratios "
                  f"{100 * row[f'{arm}_overhead_paired_median']:+.1f}%); hook alone {1e6 * hook_s:.1f} us per decode step = "
                  f"{100 * hook_s / step_s:.3f}% of a {1e3 * step_s:.1f} ms step")
        results.append(row)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
