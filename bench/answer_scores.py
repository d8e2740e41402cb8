"""Benchmark: the extra cost of the answer scores (logit-diff / conf) on top of the activation pass.

Issue 11, target (b): <= 10 %. The extraction pass also returns the unsteered log-probabilities of
every candidate answer (the LM head applied only at the answer positions of the forwards it runs
anyway). Three arms on the same instances, interleaved over ``--rounds`` (this machine is shared and
noisy), one torch thread:

- ``acts``: ``extract_activations(use_cache=False, scores=False)``, the activation pass alone;
- ``acts+scores``: ``extract_activations(use_cache=False)`` (the default: scores from the same pass);
- ``separate``: the previous way, the activation pass plus a separate scoring pass
  (``saas.evaluation.model_scores``), for reference.

It prints the median seconds of each arm and the ratios ``acts+scores / acts`` and ``separate /
acts`` of the medians (and of the paired per-round ratios), plus the largest difference between the
same-pass scores and the separate pass, on the bundled demo and on ``--limit`` persona pairs.

    .venv/bin/python bench/answer_scores.py [--rounds 3] [--limit 200] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from saas.activations import extract_activations
from saas.data import load_dataset
from saas.evaluation import answer_logprobs, model_scores_from_logprobs
from saas.models import load_model
from saas.paths import set_offline_defaults

ROOT = Path(__file__).resolve().parents[1]
PERSONA = ROOT.parent / "shared" / "data" / "persona" / "openness.jsonl"
TARGET = 0.10


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(lm, dataset, rounds: int, batch_size: int) -> dict:  # type: ignore[no-untyped-def]
    insts = dataset.instances
    arms = {
        "acts": lambda: extract_activations(lm, insts, batch_size=batch_size, use_cache=False, scores=False),
        "acts+scores": lambda: extract_activations(lm, insts, batch_size=batch_size, use_cache=False),
        "separate": lambda: (extract_activations(lm, insts, batch_size=batch_size, use_cache=False, scores=False),
                             answer_logprobs(lm, insts, batch_size=batch_size)),
    }
    extract_activations(lm, insts[:4], batch_size=batch_size, use_cache=False)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in arms}
    same, separate = None, None
    names = list(arms)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order per round
            sec, out = timed(arms[name])
            times[name].append(sec)
            if name == "acts+scores":
                same = out.logprobs  # type: ignore[attr-defined]
            elif name == "separate":
                separate = out[1]  # type: ignore[index]
    diff = max(float(np.abs(a - b).max()) for x, y in zip(same, separate)  # type: ignore[arg-type]
               for a, b in zip(x.token_logprobs, y.token_logprobs))
    ld_same, conf_same = model_scores_from_logprobs(same, dataset.answer_kind)  # type: ignore[arg-type]
    ld_sep, conf_sep = model_scores_from_logprobs(separate, dataset.answer_kind)  # type: ignore[arg-type]
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [s / a for s, a in zip(times["acts+scores"], times["acts"])]
    return {
        "dataset": dataset.name, "n_pairs": len(insts), "answer_kind": dataset.answer_kind, "rounds": rounds,
        "seconds": times, "median_s": med,
        "pairs_per_s": {k: len(insts) / v for k, v in med.items()},
        "extra_cost_of_scores": med["acts+scores"] / med["acts"] - 1.0,
        "extra_cost_paired_median": statistics.median(paired) - 1.0,
        "separate_over_acts": med["separate"] / med["acts"],
        "max_abs_token_logprob_diff": diff,
        "max_abs_logit_diff_diff": float(np.abs(ld_same - ld_sep).max()),
        "max_abs_conf_diff": float(np.abs(conf_same - conf_sep).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=200, help="persona pairs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    set_offline_defaults()
    torch.set_num_threads(args.threads)
    lm = load_model("default")
    print(f"model {lm.name} on {lm.device} ({lm.dtype}), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds, batch {args.batch_size} texts")
    results = []
    for ds in (load_dataset("demo"), load_dataset(str(PERSONA), limit=args.limit)):
        row = bench(lm, ds, args.rounds, args.batch_size)
        results.append(row)
        med = row["median_s"]
        ok = "meets" if row["extra_cost_of_scores"] <= TARGET else "MISSES"
        print(f"{row['dataset']} ({row['n_pairs']} pairs, {row['answer_kind']}): activations alone {med['acts']:.1f} s, "
              f"with answer scores {med['acts+scores']:.1f} s, activations + separate scoring pass {med['separate']:.1f} s")
        print(f"  extra cost of the scores {100 * row['extra_cost_of_scores']:+.1f}% (median of paired ratios "
              f"{100 * row['extra_cost_paired_median']:+.1f}%; target <= {100 * TARGET:.0f}%: {ok}); "
              f"the separate pass cost {row['separate_over_acts']:.2f}x the activation pass")
        print(f"  same-pass vs separate scores: max |token log-prob diff| {row['max_abs_token_logprob_diff']:.2e}, "
              f"|logit-diff| {row['max_abs_logit_diff_diff']:.2e}, |conf| {row['max_abs_conf_diff']:.2e}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
