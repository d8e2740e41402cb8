"""Benchmark: side-by-side generation of k columns in ONE batch, time vs one column.

Issue 11, target (c): 5 columns <= 1.5x one column. The columns are the ones a researcher compares:
base, prompted (a system prompt built from the demo behaviour card), CAA, SAAS, prompted + SAAS,
the first k of them for k = 1, 2, 4, 5, all in one ``generate_columns`` call (per-row steering
vectors, per-row system prompts, left padding). The CAA and SAAS vectors are the demo's own (a
``saas run``-style computation on cached activations, layer 15, offline agents when their calls are
cached, else uniform weights). Greedy, ``--new-tokens`` new tokens with ``min_new_tokens`` equal to
it so that every arm produces the same number of tokens. For reference it also times the previous
way, the 5 columns generated one after another, and 5 columns that share one prompt (base, CAA,
SAAS, CAA and SAAS at -alpha: no system prompt), which separates the cost of batching rows from the
cost of the prompted columns' longer prompts. Arms interleave over ``--rounds`` (shared machine);
medians and ratios are printed.

    .venv/bin/python bench/columns.py [--rounds 3] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from saas.generation import Column, generate, generate_columns
from saas.paths import set_offline_defaults
from saas.pipeline import RunConfig, compute, prepare
from saas.prompts import prompted_system_prompt

TARGET = 1.5
KS = (1, 2, 4, 5)


def demo_columns(layer: int, alpha: float) -> tuple[list[Column], object, str]:
    """base, prompted, CAA, SAAS, prompted + SAAS for the demo behaviour; and the loaded model."""
    prepared = prepare(RunConfig(dataset="demo", layer=layer, agents="offline", model_scores=False))
    result = compute(prepared)
    system = prompted_system_prompt(prepared.dataset)
    caa, saas = result.vector("caa"), result.vector("saas")
    cols = [Column("base"), Column("prompted", system=system), Column("caa", caa, alpha), Column("saas", saas, alpha),
            Column("prompted+saas", saas, alpha, system)]
    return cols, prepared.lm, prepared.instances("test")[0].prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    set_offline_defaults()
    torch.set_num_threads(args.threads)
    cols, lm, prompt = demo_columns(args.layer, args.alpha)
    assert lm is not None
    n = args.new_tokens
    kw = {"max_new_tokens": n, "min_new_tokens": n}
    print(f"model {lm.name} on {lm.device} ({lm.dtype}), torch threads {torch.get_num_threads()}, "  # type: ignore[attr-defined]
          f"load average {os.getloadavg()[0]:.2f}; {n} new tokens, greedy, {args.rounds} interleaved rounds")
    print(f"prompt: {prompt!r}")

    def batched(k: int) -> float:
        t0 = time.perf_counter()
        generate_columns(lm, prompt, cols[:k], **kw)  # type: ignore[arg-type]
        return time.perf_counter() - t0

    def one_by_one(k: int) -> float:
        t0 = time.perf_counter()
        for c in cols[:k]:
            generate(lm, [prompt], vector=c.vector, alpha=c.alpha, system=c.system, **kw)  # type: ignore[arg-type]
        return time.perf_counter() - t0

    generate_columns(lm, prompt, cols, max_new_tokens=4, min_new_tokens=4)  # type: ignore[arg-type]  # warm-up
    # 5 columns without system prompts (one shared prompt): the batching cost alone
    same = [cols[0], cols[2], cols[3], Column("caa-neg", cols[2].vector, -args.alpha), Column("saas-neg", cols[3].vector, -args.alpha)]

    def same_prompt(k: int) -> float:
        t0 = time.perf_counter()
        generate_columns(lm, prompt, same[:k], **kw)  # type: ignore[arg-type]
        return time.perf_counter() - t0

    arms = [(f"batch k={k}", batched, k) for k in KS] + [(f"one by one k={KS[-1]}", one_by_one, KS[-1]),
                                                          ("same prompt k=5", same_prompt, 5)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in arms}
    for r in range(args.rounds):
        order = arms[r % len(arms):] + arms[: r % len(arms)]
        for name, fn, k in order:
            times[name].append(fn(k))
    med = {name: statistics.median(v) for name, v in times.items()}
    one = med["batch k=1"]
    rows = []
    for name, _fn, k in arms:
        ratio = med[name] / one
        paired = statistics.median([t / b for t, b in zip(times[name], times["batch k=1"])])
        rows.append({"arm": name, "k": k, "median_s": med[name], "ratio_vs_one_column": ratio, "paired_ratio": paired,
                     "tokens_per_s": k * n / med[name], "runs_s": times[name]})
        print(f"{name:18s} {med[name]:6.2f} s  {ratio:5.2f}x one column (paired {paired:4.2f}x)  "
              f"{k * n / med[name]:6.1f} tokens/s in total")
    five = med[f"batch k={KS[-1]}"] / one
    print(f"5 columns in one batch: {five:.2f}x one column (target <= {TARGET}x: {'meets' if five <= TARGET else 'MISSES'}); "
          f"one by one: {med[f'one by one k={KS[-1]}'] / one:.2f}x; 5 columns of one prompt (no system prompts): "
          f"{med['same prompt k=5'] / one:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
