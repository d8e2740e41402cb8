"""Benchmark: is the kappa / t slider path interactive?

Synthetic activations of the size of a 7-8B model's layer (N = 1000 instances, d = 4096, float32).
Times

(a) ``project()`` (Fisher axis, Ledoit-Wolf): the expensive stage, run once per layer/axis;
(b) the slider path, which must stay under 50 ms:
    - new kappa -> ``apply_cutoff`` -> ``softmax_weights`` -> ``weighted_vector``;
    - new t -> ``softmax_weights`` -> ``weighted_vector``.

Medians over repeats, ``time.perf_counter``. Run: ``python bench/slider.py [--n 1000 --d 4096]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from saas.eligibility import apply_cutoff, project
from saas.weighting import softmax_weights, weighted_vector

TARGET_MS = 50.0


def synthetic(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """pos = base + (1 + 0.1 xi) * 5 u + noise, neg = base + noise, with 5% flipped pairs."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d).astype(np.float32)
    u /= np.linalg.norm(u)
    base = (3.0 * rng.standard_normal(d) + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    amp = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    pos = base + np.outer(amp, u) * 5.0 + 0.3 * rng.standard_normal((n, d), dtype=np.float32)
    neg = base + 0.3 * rng.standard_normal((n, d), dtype=np.float32)
    flip = rng.random(n) < 0.05
    pos[flip], neg[flip] = neg[flip].copy(), pos[flip].copy()
    return pos, neg


def median_ms(fn: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="BLAS threads (0: library default)")
    args = ap.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)

    pos, neg = synthetic(args.n, args.d)
    diffs = pos - neg  # cached next to the activations in the app
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 500, args.n)  # importance s_i = sum_k c_k s_ik
    load = os.getloadavg()[0]
    print(f"N = {args.n}, d = {args.d}, float32, cpus = {os.cpu_count()}, load average {load:.1f}, ", end="")
    print(f"BLAS threads {args.threads or 'default'}")

    project(pos[:50], neg[:50])  # warm up BLAS/LAPACK threads
    proj_ms = [median_ms(lambda _: project(pos, neg), 1) for _ in range(3)]
    proj = project(pos, neg)
    print(
        f"(a) project() fisher/ledoit-wolf: median {statistics.median(proj_ms):.0f} ms "
        f"(runs: {', '.join(f'{t:.0f}' for t in proj_ms)}); rho = {proj.shrinkage:.3f}"
    )

    kappas = np.linspace(0.0, 1.0, args.repeats)
    temps = np.geomspace(0.1, 1e4, args.repeats)

    def kappa_step(i: int) -> np.ndarray:
        res = apply_cutoff(proj, kappa=float(kappas[i]))
        return weighted_vector(diffs, softmax_weights(scores, 10.0, res.eligible))

    eligible = apply_cutoff(proj, kappa=0.5).eligible

    def t_step(i: int) -> np.ndarray:
        return weighted_vector(diffs, softmax_weights(scores, float(temps[i]), eligible))

    def cutoff_only(i: int) -> object:
        return apply_cutoff(proj, kappa=float(kappas[i]))

    kappa_ms = median_ms(kappa_step, args.repeats)
    t_ms = median_ms(t_step, args.repeats)
    cut_ms = median_ms(cutoff_only, args.repeats)
    print(f"    eligible at kappa 0.5: {int(eligible.sum())} / {args.n}")
    print(
        f"(b) kappa -> apply_cutoff -> weights -> vector: median {kappa_ms:.2f} ms "
        f"({kappa_ms / TARGET_MS:.3f} x the {TARGET_MS:.0f} ms target; apply_cutoff alone "
        f"{cut_ms:.2f} ms)"
    )
    print(
        f"    t -> weights -> vector:                    median {t_ms:.2f} ms "
        f"({t_ms / TARGET_MS:.3f} x the {TARGET_MS:.0f} ms target)"
    )


if __name__ == "__main__":
    main()
