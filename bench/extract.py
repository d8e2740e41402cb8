"""Benchmark: activation extraction throughput (pairs/s) against its limit and against `steering-vectors`.

On ``--limit`` persona pairs (default 200 from ``../shared/data/persona/openness.jsonl``), all decoder
layers, the same read token and the same forward batch size ``--batch-size`` (texts per forward) for
everything:

(a) our extractor, ``saas.activations.extract_activations(use_cache=False, scores=False)`` (activations
    only; bench/answer_scores.py times the answer scores on top), with the default
    strategy (``shared_prefix``) and with ``strategy="naive"``; timed end to end (tokenisation,
    forwards, hooks, numpy copies);
(b) a bare batched forward of exactly the naive path's token batches (sorted by length, left padding,
    explicit position ids, base model, no hooks, tokenisation not timed): the limit of the naive path;
(c) the ``steering-vectors`` PyPI package, ``extract_activations(model, tokenizer, samples,
    layers=None, batch_size=B)`` with explicit read indices on the same texts. It runs in its own
    virtual environment (``bench/.venv-sv``, see bench/README.md) as a worker process that loads the
    model once and answers "run" requests, so its runs interleave with ours. Its ``batch_size``
    counts pairs, but it runs the positives and the negatives as two forwards of ``batch_size`` texts
    each, i.e. the same forward batch size as ours.

The methods run ``--rounds`` times in rotating order (interleaved, because this machine is shared and
noisy); the report gives the median pairs/s of each and the ratios a/b and a/c of the medians
(targets: a/b >= 0.9, a/c >= 2), plus the max |difference| between the methods' activations.

Run: ``.venv/bin/python bench/extract.py [--limit 200 --batch-size 16 --rounds 3 --no-sv]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from saas.activations import extract_activations, naive_batches
from saas.data import load_dataset, load_demo
from saas.forward import base_model, left_positions, pad_id, pad_left
from saas.models import LoadedModel, load_model
from saas.paths import set_offline_defaults
from saas.prompts import encode, join_answer, prompt_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "persona" / "openness.jsonl"
SV_PYTHON = ROOT / "bench" / ".venv-sv" / "bin" / "python"
SV_WORKER = ROOT / "bench" / "_sv_worker.py"
TARGET_AB, TARGET_AC = 0.9, 2.0


@torch.inference_mode()
def bare_forward(lm: LoadedModel, batches: list[tuple[list[int], list[list[int]], list[int]]]) -> None:
    """(b): the naive path's batches through the base model, no hooks, nothing read."""
    base = base_model(lm)
    pad = pad_id(lm)
    for _chunk, seqs, _read in batches:
        ids, mask, _ = pad_left(seqs, pad)
        pos = left_positions(mask)
        base(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), position_ids=pos.to(lm.device),
             use_cache=False)


class SteeringVectorsWorker:
    """(c): the `steering-vectors` package in its own venv, driven over stdin/stdout."""

    def __init__(self, python: Path, job: dict) -> None:
        self.dir = tempfile.mkdtemp(prefix="sv-bench-")
        job_path = Path(self.dir) / "job.json"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.proc = subprocess.Popen([str(python), str(SV_WORKER), str(job_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None and self.proc.stdin is not None  # both are pipes
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"steering-vectors worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.ask("quit")
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a dataset path, or 'demo' (bundled sentence pairs)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16, help="texts per forward pass, for every method")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for every method (default: torch's own choice). On a loaded shared "
                         "machine 1 thread gives far steadier numbers than 2")
    ap.add_argument("--no-sv", action="store_true", help="skip (c), the steering-vectors package")
    ap.add_argument("--sv-python", default=str(SV_PYTHON))
    args = ap.parse_args(argv)

    set_offline_defaults()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    data = load_demo(limit=args.limit) if args.data == "demo" else load_dataset(args.data, limit=args.limit)
    insts = data.instances
    n, bs = len(insts), args.batch_size
    print(f"model {lm.name} ({lm.n_layers} layers, d={lm.hidden_size}, {lm.dtype}, {lm.device}, "
          f"{torch.get_num_threads()} threads); {n} pairs from {Path(args.data).name} ({data.answer_kind}); batch size {bs} texts")

    batches = naive_batches(lm, insts, bs)
    results: dict[str, np.ndarray] = {}

    def run_ours(strategy: str) -> float:
        t0 = time.perf_counter()
        acts = extract_activations(lm, insts, batch_size=bs, use_cache=False, strategy=strategy, scores=False)
        dt = time.perf_counter() - t0
        results[strategy] = np.stack([acts.positive, acts.negative], axis=1)
        return dt

    def run_bare() -> float:
        t0 = time.perf_counter()
        bare_forward(lm, batches)
        return time.perf_counter() - t0

    methods = {
        "a  ours, shared_prefix (default)": lambda: run_ours("shared_prefix"),
        "a' ours, naive": lambda: run_ours("naive"),
        "b  bare forward (naive batches)": run_bare,
    }

    worker = None
    sv_note = ""
    if not args.no_sv:
        sv_python = Path(args.sv_python)
        if not sv_python.exists():
            sv_note = f"(c) skipped: {sv_python} does not exist; see bench/README.md to create it"
        else:
            tok = lm.tokenizer
            texts, reads = [], []
            for inst in insts:
                for answer in (inst.positive, inst.negative):
                    enc = encode(tok, inst.prompt, answer)
                    texts.append(join_answer(tok, prompt_text(tok, inst.prompt), answer))
                    reads.append([enc.read_index, enc.ids])
            out_path = str(Path(tempfile.mkdtemp(prefix="sv-acts-")) / "acts.npy")
            job = {"model": lm.info.get("folder") or args.model, "texts": texts,
                   "read": [r for r, _ in reads], "ids": [i for _, i in reads], "batch_size": bs,
                   "out": out_path, "threads": torch.get_num_threads()}
            worker = SteeringVectorsWorker(sv_python, job)
            print(f"(c) steering-vectors {worker.ready.get('version')} with transformers "
                  f"{worker.ready.get('transformers')} in {sv_python.parent.parent}")

            def run_sv() -> float:
                reply = worker.ask("run")
                return float(reply["seconds"])

            methods["c  steering-vectors package"] = run_sv

    try:
        # warm-up (first-call allocations, lazy imports), not timed
        if worker is not None:
            worker.ask("warmup")
        extract_activations(lm, insts[:4], batch_size=bs, use_cache=False, scores=False)
        extract_activations(lm, insts[:4], batch_size=bs, use_cache=False, strategy="naive", scores=False)

        times: dict[str, list[float]] = {name: [] for name in methods}
        names = list(methods)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                dt = methods[name]()
                times[name].append(dt)
                print(f"  round {r + 1}: {name:34s} {dt:7.2f} s  {n / dt:6.1f} pairs/s", flush=True)

        if worker is not None:
            worker.ask("dump")
            results["sv"] = np.load(job["out"])
    finally:
        if worker is not None:
            worker.close()

    rate = {name: n / statistics.median(ts) for name, ts in times.items()}
    print("\nmedian pairs/s over", args.rounds, "rounds (interleaved):")
    for name, v in rate.items():
        print(f"  {name:34s} {v:7.1f} pairs/s")
    a, a_naive, b = (rate[k] for k in names[:3])
    print(f"\nratio a/b  (shared_prefix / bare forward) = {a / b:5.2f}   target >= {TARGET_AB}")
    print(f"ratio a'/b (naive / bare forward)         = {a_naive / b:5.2f}")
    if "c  steering-vectors package" in rate:
        c = rate["c  steering-vectors package"]
        print(f"ratio a/c  (shared_prefix / steering-vectors) = {a / c:5.2f}   target >= {TARGET_AC}")
        print(f"ratio a'/c (naive / steering-vectors)         = {a_naive / c:5.2f}")
    elif sv_note:
        print(sv_note)

    ref = results["naive"]
    scale = float(np.abs(ref).max())
    for key in ("shared_prefix", "sv"):
        if key in results:
            diff = float(np.abs(results[key] - ref).max())
            print(f"max |{key} - naive| over all layers = {diff:.2e} (max |activation| {scale:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
