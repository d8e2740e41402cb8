"""Worker for bench/extract.py: times the `steering-vectors` package in its own virtual environment.

Run by bench/extract.py as ``bench/.venv-sv/bin/python bench/_sv_worker.py JOB.json``; it imports
nothing from ``saas``. The job gives the model folder, the texts (positive, negative, positive, ...),
each text's read index and expected token ids, the batch size and an output path. It prints one JSON
line when ready, then answers one JSON line per command read from stdin: ``warmup``, ``run`` (time one
full extraction), ``dump`` (save the last activations as [N, 2, n_layers, d] .npy), ``quit``.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version

import numpy as np
import torch
import transformers
from steering_vectors import SteeringVectorTrainingSample, extract_activations
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    job = json.loads(open(sys.argv[1]).read())
    torch.set_num_threads(int(job["threads"]))
    tok = AutoTokenizer.from_pretrained(job["model"])
    # steering-vectors passes no position ids: right padding keeps every real token's position right.
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
    texts, read, ids = job["texts"], job["read"], job["ids"]
    for t, expect in zip(texts, ids):
        got = tok(t)["input_ids"]
        if list(got) != expect:
            raise SystemExit(f"tokenisation differs from saas.prompts.encode for {t[-60:]!r}")
    samples = [
        SteeringVectorTrainingSample(texts[k], texts[k + 1], read[k], read[k + 1])
        for k in range(0, len(texts), 2)
    ]
    bs = int(job["batch_size"])
    last = None

    def run(sub):
        return extract_activations(model, tok, sub, layers=None, batch_size=bs, move_to_cpu=True)

    print(json.dumps({"ready": True, "version": version("steering-vectors"),
                      "transformers": transformers.__version__}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "warmup":
            run(samples[:4])
            print(json.dumps({"ok": True}), flush=True)
        elif cmd == "run":
            t0 = time.perf_counter()
            last = run(samples)
            print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
        elif cmd == "dump":
            pos, neg = last
            layers = sorted(pos)
            p = np.stack([torch.cat(pos[k]).float().numpy() for k in layers], axis=1)
            n = np.stack([torch.cat(neg[k]).float().numpy() for k in layers], axis=1)
            np.save(job["out"], np.stack([p, n], axis=1))
            print(json.dumps({"layers": len(layers)}), flush=True)
        elif cmd == "quit":
            print(json.dumps({"bye": True}), flush=True)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
