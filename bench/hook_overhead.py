"""Steering-hook overhead on generation throughput (issue 3, target < 3 %).

Generates the same prompts greedily with and without a steering vector on the embedded model,
exactly ``--new-tokens`` new tokens per prompt (``min_new_tokens = max_new_tokens``, so both
arms produce the same number of tokens even when the steered text differs), at batch 1 and batch
8. The two arms are interleaved (order alternating per repeat) so that drifting machine load hits
both alike; it reports the median tokens/s of each arm and the median of the paired per-repeat
ratios.

    .venv/bin/python bench/hook_overhead.py [--repeats 5] [--new-tokens 40] [--batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from importlib import resources

import torch

from saas.generation import generate
from saas.models import load_model
from saas.steering import SteeringVector


def demo_prompts(n: int) -> list[str]:
    text = (resources.files("saas") / "demo" / "optimism.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r["prompt"] for r in rows[:n]]


def run_once(lm, prompts: list[str], vector: SteeringVector | None, new_tokens: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    generate(lm, prompts, vector=vector, alpha=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
             batch_size=len(prompts))
    return len(prompts) * new_tokens / (time.perf_counter() - t0)


def hook_call_seconds(lm, vec: SteeringVector, batch: int, seq: int, calls: int = 2000) -> float:  # type: ignore[no-untyped-def]
    """Seconds per call of the registered steering hook alone, on a layer output [batch, seq, d]."""
    hidden = torch.randn(batch, seq, lm.hidden_size, dtype=lm.dtype)
    module = lm.layers[vec.layers[0]]
    with torch.inference_mode(), vec.apply(lm, 1.0):
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
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    lm = load_model("default")
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    vec = SteeringVector.from_array(v / v.norm() * 20.0, args.layer, "bench")  # a CAA-sized vector
    print(f"model {lm.name} on {lm.device} ({lm.dtype}), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; {args.new_tokens} new tokens, {args.repeats} repeats")
    results = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = demo_prompts(bs)
        run_once(lm, prompts, None, 4)  # warm-up
        run_once(lm, prompts, vec, 4)
        base, steered, ratios = [], [], []
        for r in range(args.repeats):
            arms = [None, vec] if r % 2 == 0 else [vec, None]
            got = {}
            for arm in arms:
                got[arm is None] = run_once(lm, prompts, arm, args.new_tokens)
            base.append(got[True])
            steered.append(got[False])
            ratios.append(got[True] / got[False])
        row = {
            "batch": bs,
            "base_tok_s": statistics.median(base),
            "steered_tok_s": statistics.median(steered),
            "overhead_of_medians": statistics.median(base) / statistics.median(steered) - 1.0,
            "overhead_paired_median": statistics.median(ratios) - 1.0,
            "base_runs": base,
            "steered_runs": steered,
        }
        # Noise-free bound: the hook's own cost per decode step against the measured time per step.
        hook_s = hook_call_seconds(lm, vec, bs, 1)
        step_s = bs / row["base_tok_s"]
        row["hook_us_per_decode_step"] = 1e6 * hook_s
        row["hook_share_of_step"] = hook_s / step_s
        results.append(row)
        print(f"batch {bs}: hook alone {1e6 * hook_s:.1f} us per decode step = {100 * hook_s / step_s:.3f}% of a "
              f"{1e3 * step_s:.1f} ms step")
        print(f"batch {bs}: base {row['base_tok_s']:.1f} tok/s, steered {row['steered_tok_s']:.1f} tok/s, "
              f"overhead {100 * row['overhead_of_medians']:+.1f}% (median of paired ratios "
              f"{100 * row['overhead_paired_median']:+.1f}%)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
