"""How well the offline agents recover the annotated facets of the demo behaviours (issue 10).

Prints, per demo behaviour (optimism, politeness, caution) and per backend (the working tree's
offline backend, and with ``--old PATH`` the offline backend of another checkout, e.g. the last
commit):

- **facet recovery**: every sub-behaviour is matched to an annotated facet by the encoder
  (all-MiniLM-L6-v2) similarity of ``"name: description"`` texts; then, on the clean pairs, the
  share whose highest-scoring kept sub-behaviour (argmax_k s_ik) is matched to the pair's own facet
  (a pair where every s_ik is 0 has no prediction and counts as a miss).
  Two matchings: *nearest* (each sub-behaviour to its most similar facet; several may share one)
  and *hungarian* (a one-to-one assignment maximising the summed similarity; sub-behaviours left
  over match nothing). Chance is about 1 / K';
- **importance ratios**: mean s_i = sum_k c_k s_ik (Eq. 5, kept sub-behaviours) of the ``neutral``
  and of the ``weak`` pairs, divided by that of the ``clean`` pairs;
- the sub-behaviour trees (name, c_k, kept, origin) of optimism and of 200 persona openness statements;
- the cold time of the agents (a fresh process, an empty cache) and the calls a rerun makes.

The agents see what ``saas.pipeline.run_agents_for`` gives them: the seed-0 training split for
Agent-1, every instance for Agent-3, threshold 2. They never see the annotations: each backend
runs in its own process, which receives only the behaviour's name and description and the pairs'
ids, prompts and answers (``--worker``). The annotations are read here, after the fact.

Usage::

    git worktree add /tmp/agents-old HEAD          # the committed code, for the comparison
    .venv/bin/python bench/agent_quality.py --old /tmp/agents-old
    git worktree remove /tmp/agents-old
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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPENNESS = ROOT.parent / "shared" / "data" / "persona" / "openness.jsonl"
DEMOS = ("demo", "demo:politeness", "demo:caution")


# --- the worker: runs one checkout's agents, sees no annotation ------------------------------------


def worker(job_path: str, out_path: str) -> None:
    """Run ``run_agents`` on each job dataset with the offline backend of whatever ``saas`` is importable."""
    from saas.agents import OfflineBackend, run_agents
    from saas.data import BehaviourDataset, Instance

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    results = []
    t_start = time.perf_counter()
    backend = OfflineBackend()
    for ds in job["datasets"]:
        insts = [Instance(i["id"], i["prompt"], i["positive"], i["negative"]) for i in ds["instances"]]
        dataset = BehaviourDataset(ds["name"], ds["description"], insts, ds["answer_kind"])
        t0 = time.perf_counter()
        run = run_agents(dataset, backend, train_ids=ds["train_ids"], eligible_ids=[i.id for i in insts],
                         seed=0, threshold=2.0)
        seconds = time.perf_counter() - t0
        results.append({
            "spec": ds["spec"],
            "seconds": seconds,
            "calls": sum(st.calls for st in run.stats.values()),
            "subs": [{"id": s.id, "name": s.name, "description": s.description, "contribution": s.contribution,
                      "kept": s.kept, "origin": getattr(s, "origin", "")} for s in run.subs],
            "table": {"ids": run.table.ids, "sub_ids": run.table.sub_ids, "scores": run.table.scores.tolist()},
        })
    Path(out_path).write_text(json.dumps({"results": results, "seconds": time.perf_counter() - t_start}),
                              encoding="utf-8")


# --- the parent: datasets in, metrics out ---------------------------------------------------------


def _job(specs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    from saas.data import load_dataset
    from saas.pipeline import split_indices

    datasets, loaded = [], {}
    for spec in specs:
        ds = load_dataset(OPENNESS, limit=200) if spec == "openness" else load_dataset(spec)
        loaded[spec] = ds
        train = split_indices(len(ds), 0)["train"]
        datasets.append({
            "spec": spec, "name": ds.name, "description": ds.description, "answer_kind": ds.answer_kind,
            "instances": [{"id": i.id, "prompt": i.prompt, "positive": i.positive, "negative": i.negative}
                          for i in ds.instances],
            "train_ids": [ds.instances[j].id for j in train],
        })
    return {"datasets": datasets}, loaded


def _run_worker(pythonpath: Path, job: dict[str, Any], cache: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        jp, op = Path(tmp) / "job.json", Path(tmp) / "out.json"
        jp.write_text(json.dumps(job), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(pythonpath), "SAAS_CACHE_DIR": str(cache),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--worker", str(jp), str(op)], env=env, check=True, cwd=pythonpath)
        out = json.loads(op.read_text(encoding="utf-8"))
        out["process_seconds"] = time.perf_counter() - t0
        return out


def _match(subs: list[dict[str, Any]], facets: list[Any], encode: Any) -> tuple[dict[str, int], dict[str, int]]:
    from scipy.optimize import linear_sum_assignment

    s_emb = encode([f"{s['name']}: {s['description']}" for s in subs])
    f_emb = encode([f"{f.name}: {f.description}" for f in facets])
    sim = s_emb @ f_emb.T
    nearest = {s["id"]: int(np.argmax(sim[j])) for j, s in enumerate(subs)}
    rows, cols = linear_sum_assignment(-sim)
    hungarian = {subs[r]["id"]: int(c) for r, c in zip(rows, cols, strict=True)}
    return nearest, hungarian


def _metrics(result: dict[str, Any], ds: Any, encode: Any) -> dict[str, Any]:
    subs = result["subs"]
    table = result["table"]
    scores = np.asarray(table["scores"], dtype=np.float64).reshape(len(table["ids"]), len(table["sub_ids"]))
    by_id = {s["id"]: s for s in subs}
    c = np.asarray([by_id[k]["contribution"] or 0.0 for k in table["sub_ids"]])
    importance = scores @ c
    row = {iid: r for r, iid in enumerate(table["ids"])}
    facet_ids = [f.id for f in ds.facets]
    nearest, hungarian = _match(subs, ds.facets, encode)
    out: dict[str, Any] = {"K": len(subs), "K_kept": len(table["sub_ids"])}
    clean = [i for i in ds.instances if i.quality == "clean" and i.facet in facet_ids]
    for name, mapping in (("nearest", nearest), ("hungarian", hungarian)):
        hits = []
        for inst in clean:
            r = scores[row[inst.id]]
            if r.size == 0 or r.max() <= 0:  # no sub-behaviour scored at all: no prediction, a miss
                hits.append(False)
                continue
            best = table["sub_ids"][int(np.argmax(r))]
            hits.append(mapping.get(best, -1) == facet_ids.index(inst.facet))
        out[f"recovery_{name}"] = float(np.mean(hits)) if hits else float("nan")
    mean = {q: float(np.mean([importance[row[i.id]] for i in ds.instances if i.quality == q]))
            for q in ("clean", "neutral", "weak")}
    out["importance"] = mean
    out["neutral_ratio"] = mean["neutral"] / mean["clean"] if mean["clean"] else float("nan")
    out["weak_ratio"] = mean["weak"] / mean["clean"] if mean["clean"] else float("nan")
    out["matched"] = {by_id[k]["name"]: ds.facets[v].id for k, v in nearest.items()}
    return out


def _tree(result: dict[str, Any]) -> str:
    lines = []
    for s in result["subs"]:
        c = "-" if s["contribution"] is None else f"{s['contribution']:.1f}"
        origin = f"  [{s['origin'][:110]}]" if s.get("origin") else ""
        lines.append(f"  {s['id']:>3} {'kept' if s['kept'] else 'DROP'} c={c:>4}  {s['name']}{origin}")
    return "\n".join(lines)


def main() -> None:
    """Run the comparison and print the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, help="another checkout (e.g. a git worktree of HEAD) to compare with")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    sys.path.insert(0, str(ROOT))
    from saas.agents import OfflineBackend

    specs = [*DEMOS, "openness"]
    job, loaded = _job(specs)
    encode = OfflineBackend().encode
    backends = {"new": ROOT}
    if args.old:
        backends["old"] = args.old.resolve()
    report: dict[str, Any] = {}
    for label, path in backends.items():
        with tempfile.TemporaryDirectory() as cache:
            cold_job = {"datasets": job["datasets"][:1]}  # one demo behaviour, fresh process, empty cache
            cold = _run_worker(path, cold_job, Path(cache))
            full = _run_worker(path, job, Path(cache))  # the rest (optimism's calls come from the cache)
            rerun = _run_worker(path, job, Path(cache))
        results = {r["spec"]: r for r in full["results"]}
        report[label] = {
            "cold_seconds_in_process": cold["results"][0]["seconds"],
            "cold_seconds_process": cold["process_seconds"],
            "cold_calls": cold["results"][0]["calls"],
            "rerun_calls": {r["spec"]: r["calls"] for r in rerun["results"]},
            "metrics": {spec: _metrics(results[spec], loaded[spec], encode) for spec in DEMOS},
            "trees": {spec: _tree(results[spec]) for spec in ("demo", "openness")},
        }

    for label, rep in report.items():
        print(f"\n=== {label} backend ({backends[label]}) ===")
        print(f"cold run on the optimism demo (fresh process, empty cache): {rep['cold_seconds_in_process']:.1f} s "
              f"in run_agents ({rep['cold_seconds_process']:.1f} s for the whole process incl. imports), "
              f"{rep['cold_calls']} calls; calls on a rerun: {rep['rerun_calls']}")
        print(f"{'behaviour':18s} {'K/kept':>7s} {'recovery nearest':>17s} {'hungarian':>10s} {'chance':>7s} "
              f"{'neutral/clean':>14s} {'weak/clean':>11s}")
        for spec, m in rep["metrics"].items():
            print(f"{spec:18s} {m['K']:>3d}/{m['K_kept']:<3d} {m['recovery_nearest']:17.1%} {m['recovery_hungarian']:10.1%} "
                  f"{1 / max(m['K_kept'], 1):7.1%} {m['neutral_ratio']:14.2f} {m['weak_ratio']:11.2f}")
        for spec, tree in rep["trees"].items():
            print(f"\n{label} tree, {spec if spec != 'demo' else 'optimism'}:\n{tree}")
        for spec, m in rep["metrics"].items():
            print(f"\n{label} {spec}: sub-behaviour -> nearest facet: {m['matched']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
