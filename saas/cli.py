"""Command line: every stage of the pipeline headless (``saas ...`` or ``python -m saas ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saas.paths import set_offline_defaults

log = logging.getLogger("saas")


@contextmanager
def tqdm_progress(desc: str) -> Iterator[Callable[[int, int, str], None]]:
    """A ``progress(done, total, message)`` callable that drives one tqdm bar."""
    from tqdm import tqdm

    bar: Any = None

    def update(done: int, total: int, message: str) -> None:
        nonlocal bar
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, unit="it", leave=False, file=sys.stderr)
        bar.set_postfix_str(message[-60:], refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from saas.data import dataset_format, load_dataset
    from saas.models import load_model

    dataset = load_dataset(args.dataset, format=dataset_format(getattr(args, "format", "auto")),
                           limit=getattr(args, "limit", None))
    with tqdm_progress("model") as progress:
        lm = load_model(args.model, device=args.device, dtype=args.dtype, progress=progress)
    return lm, dataset


def cmd_prepare(args: argparse.Namespace) -> int:
    """Convert the embedded GGUF once (no-op when already converted)."""
    from saas.models import convert_default

    t0 = time.perf_counter()
    path = convert_default()
    print(f"embedded model ready at {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """``saas extract``: all-layer activations + summary.json."""
    import numpy as np

    from saas.activations import extract_activations
    from saas.lengths import check_lengths

    lm, dataset = _load(args)
    dataset, lengths = check_lengths(lm, dataset, max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens)
    if lengths.truncated:
        print(f"truncated the prompts of {lengths.truncated} pairs to their last {lengths.max_prompt_tokens} tokens",
              file=sys.stderr)
    with tqdm_progress("extract") as progress:
        acts = extract_activations(lm, dataset, batch_size=args.batch_size, progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "positive.npy", acts.positive)
    np.save(out / "negative.npy", acts.negative)
    (out / "ids.json").write_text(json.dumps(acts.ids))
    summary = {
        "N": acts.n, "layers": acts.n_layers, "d": acts.d, "model": lm.name,
        "model_fingerprint": lm.fingerprint, "dataset": dataset.name, "dataset_hash": dataset.content_hash(),
        "answer_kind": dataset.answer_kind, "seconds": round(acts.seconds, 3), "from_cache": acts.from_cache,
        "cache_key": acts.key, "lengths": lengths.to_dict(),
    }
    write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """``saas datasets``: the bundled demo behaviours and the dataset files found under --root."""
    from saas.data import discover_datasets, list_demos
    from saas.reproduce import SHARED_DATA

    print("Bundled demo behaviours (use with --dataset):")
    for d in list_demos():
        print(f"  {d.spec:18s} {d.title} ({d.n} pairs, annotated)")
    root = Path(args.root) if args.root else SHARED_DATA
    found = discover_datasets(root) if root.is_dir() else []
    print(f"\nDataset files under {root} ({len(found)}):" if found else f"\nNo dataset files under {root}.")
    for path in found:
        print(f"  {path}")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help='"default" (embedded SmolLM2-135M-Instruct), a local folder or a hub id')
    p.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on cuda, fp32 on cpu)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="demo",
                   help='"demo" (optimism), "demo:politeness", "demo:caution" (see `saas datasets`), or a path to '
                        "a persona JSONL, CAA JSON or CSV/JSONL file")
    p.add_argument("--format", default="auto", choices=["auto", "persona", "caa", "generic"])
    p.add_argument("--limit", type=int, default=None, help="use only the first N instances")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="refuse pairs whose prompt + answer is longer (default: the model's context length)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="truncate longer prompts to their last N tokens (default: never truncate; too long fails)")


def _config(args: argparse.Namespace) -> Any:
    from saas.pipeline import RunConfig

    return RunConfig(
        model=args.model, dataset=args.dataset, format=args.format, limit=args.limit, layer=args.layer,
        kappa=args.kappa, axis=args.axis, consistency=args.consistency, temperature=args.temperature, agents=args.agents,
        agent_model=args.agent_model, scores=args.scores, threshold=args.threshold, seed=args.seed,
        batch_size=args.batch_size, model_scores=not args.no_model_scores, device=args.device, dtype=args.dtype,
        max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``saas run``: eligibility, agents, weights and every method's vector, written to --out."""
    from saas.pipeline import METHOD_LABELS, compute, prepare, write_run

    config = _config(args)
    t0 = time.perf_counter()
    with tqdm_progress("run") as progress:
        prepared = prepare(config, progress=progress, refresh_agents=args.refresh)
    result = compute(prepared)
    steer = None
    if not args.no_steerability:
        from saas.pipeline import run_steerability

        with tqdm_progress("steerability") as progress:
            steer = run_steerability(prepared, result, progress=progress)
    out = write_run(prepared, result, args.out, steer=steer)
    elig = result.eligibility
    print(f"{prepared.dataset.name}: {len(prepared.dataset)} instances, train {len(prepared.train)}; layer {result.layer}")
    if prepared.lengths is not None and prepared.lengths.truncated:
        print(f"truncated the prompts of {prepared.lengths.truncated} pairs to their last "
              f"{prepared.lengths.max_prompt_tokens} tokens (--max-prompt-tokens)")
    print(f"eligible {int(elig.eligible.sum())}/{len(elig.ids)} (kappa={elig.kappa}, axis={elig.axis}, D={elig.D:.3f}); "
          f"dropped: {elig.counts}")
    if elig.empty:
        print(f"warning: {elig.message}", file=sys.stderr)
    from saas.annotated import summary_lines

    written = json.loads((out / "summary.json").read_text())
    for line in summary_lines(written.get("annotations", {})):
        print(line)
    st_ = written.get("steerability")
    if st_:
        print(f"steerability (CAA vector, layer {st_['layer']}, alpha {st_['alphas'][0]:g}..{st_['alphas'][-1]:g}): "
              f"anti-steerable {100 * st_['anti_steerable_eligible']:.0f}% of the eligible pairs, "
              f"{100 * st_['anti_steerable_dropped']:.0f}% of the dropped ones" if st_["n_dropped"] else
              f"steerability (CAA vector, layer {st_['layer']}): anti-steerable {100 * st_['anti_steerable_eligible']:.0f}% "
              "of the eligible pairs (none dropped)")
    tokens = written.get("answer_tokens")
    if tokens:
        print("positive answer tokens: " + ", ".join(
            f"{r['token']!r} {r['pairs %']:.0f}% of pairs / {r['eligible %']:.0f}% of eligible / "
            f"{r['saas weight %']:.0f}% of the SAAS weight" for r in tokens["split"]))
        if tokens["flagged"]:
            print(f"warning: {tokens['message']}", file=sys.stderr)
    if prepared.agent_run is not None:
        print(prepared.agent_run.summary())
    s = result.summary
    print(f"temperature {result.temperature:.4g}: weight entropy {s.entropy:.3f} nats, effective N {s.ess:.1f}")
    for m, v in result.vectors.items():
        print(f"  {METHOD_LABELS.get(m, m):18s} norm {v.norm():8.3f}")
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``saas eval``: alignment probability per method and alpha on the held-out split(s)."""
    import pandas as pd

    from saas.data import dataset_format, load_dataset
    from saas.models import load_model
    from saas.pipeline import evaluate_run, load_run

    bundle = load_run(args.run)
    cfg = bundle.config
    dataset = load_dataset(cfg.dataset, format=dataset_format(cfg.format), limit=cfg.limit)
    with tqdm_progress("model") as progress:
        lm = load_model(args.model or cfg.model, device=cfg.device, dtype=cfg.dtype, progress=progress)
    from saas.lengths import check_lengths

    dataset, _ = check_lengths(lm, dataset, max_tokens=cfg.max_tokens, max_prompt_tokens=cfg.max_prompt_tokens)
    alphas = [float(a) for a in args.alphas.split(",")]
    methods = args.methods.split(",") if args.methods else None
    frames = [evaluate_run(bundle, lm, dataset, alphas, split=s, methods=methods, norm_matched=args.norm_matched)
              for s in args.splits.split(",")]
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(Path(args.run) / "eval.csv", index=False)
    table = df.pivot_table(index=["split", "method"], columns="alpha", values="alignment")
    print(table.round(3).to_string())
    print(f"wrote {Path(args.run) / 'eval.csv'}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``saas generate``: base and steered text for a prompt, every column in one batch."""
    from saas.generation import PROMPTED, comparison_columns, generate_columns
    from saas.models import load_model
    from saas.pipeline import load_run

    bundle = load_run(args.run)
    methods = [m for m in args.method.split(",") if m]
    missing = [m for m in methods if m not in bundle.vectors]
    if missing:
        raise FileNotFoundError(f"run {args.run} has no vector for {missing}; it has {sorted(bundle.vectors)}")
    system = None
    if args.prompted:
        from saas.data import dataset_format, load_dataset
        from saas.prompts import prompted_system_prompt

        cfg = bundle.config
        system = prompted_system_prompt(load_dataset(cfg.dataset, format=dataset_format(cfg.format), limit=cfg.limit))
    lm = load_model(args.model or bundle.config.model)
    vectors = {"base": None} | {m: bundle.vectors[m] for m in methods}
    columns = comparison_columns(vectors, args.alpha, system=system, prompted_with=methods if args.prompted else ())
    texts = generate_columns(lm, args.prompt, columns, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                             seed=args.seed, positions=args.positions)
    if system is not None:
        print(f"[{PROMPTED} columns: system prompt \"{system}\"]\n")
    for col in columns:
        label = col.name if col.vector is None else f"{col.name} (alpha={args.alpha:g})"
        print(f"=== {label}\n{texts[col.name].strip()}\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``saas export``: a run's vectors as llama.cpp GGUF control vectors or safetensors + JSON."""
    from saas.export import ExportError, export_run_vectors
    from saas.pipeline import load_run

    bundle = load_run(args.run)
    methods = [m for m in args.method.split(",") if m]
    try:
        written = export_run_vectors(bundle.vectors, methods, args.format, args.out, model_hint=args.model_hint,
                                     run=str(args.run))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for method, path in written.items():
        vec = bundle.vectors[method]
        print(f"{method}: layer(s) {vec.layers}, norm {vec.norm():.4g} -> {path}")
    if args.format == "gguf":
        print("llama.cpp: llama-cli -m MODEL.gguf --control-vector-scaled FILE:ALPHA (steers every position, "
              "i.e. positions='all'); our layer l is direction.l")
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    """``saas agents``: sub-behaviours, contributions and relevance, written to --out."""
    from saas.agents import make_backend, run_agents
    from saas.data import dataset_format, load_dataset

    dataset = load_dataset(args.dataset, format=dataset_format(args.format), limit=args.limit)
    kw: dict[str, Any] = {}
    if args.agent_model:
        kw["model_path" if args.agents == "local" else "model"] = args.agent_model
    backend = make_backend(args.agents, **kw)
    with tqdm_progress("agents") as progress:
        run = run_agents(dataset, backend, seed=args.seed, threshold=args.threshold, refresh=args.refresh, progress=progress)
    run.save(args.out)
    print(run.summary())
    for s in run.subs:
        flag = "kept" if s.kept else "dropped"
        print(f"  [{flag:7s}] c={s.contribution if s.contribution is not None else float('nan'):4.1f}  {s.name}: {s.description}")
    print(f"wrote {args.out}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``saas reproduce``: the method's Tables 1-3 (methods, ablations, side effects) over seeds."""
    from saas.reproduce import ReproduceConfig, parse_layers, render_outputs, run_reproduction

    if args.render_only:
        if not args.out:
            raise FileNotFoundError("--render-only needs --out <a finished run folder>")
        files = render_outputs(args.out)
        print(f"rebuilt {len(files)} files in {args.out}")
        return 0
    kw = dict(
        behaviours=args.behaviours or [], seeds=args.seeds, model=args.model, agents=args.agents, limit=args.limit,
        layers=parse_layers(args.layers), alphas=[float(a) for a in args.alphas.split(",")] if args.alphas else None,
        bipo=not args.no_bipo, bipo_epochs=args.bipo_epochs, bipo_lr=args.bipo_lr, mmlu=args.mmlu,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, threads=args.threads,
        consistency=args.consistency, norm_matched=False if args.no_norm_matched else None,
        out=args.out or ("results/quick" if args.quick else f"results/reproduce-{time.strftime('%Y%m%d-%H%M%S')}"),
    )
    if args.quick:
        config = ReproduceConfig.quick_defaults(**kw)
    else:
        config = ReproduceConfig(**{k: v for k, v in kw.items() if v is not None})
    result = run_reproduction(config, command="saas " + " ".join(sys.argv[1:]))
    print((result.out / "table1.md").read_text())
    print(f"wrote {result.out} in {result.wall_seconds / 60:.1f} min")
    return 0


def _add_method_commands(sub: Any) -> None:
    """``run``, ``eval``, ``generate``, ``export``, ``agents`` and ``reproduce``."""
    p = sub.add_parser("run", help="the SAAS method and every baseline on one layer; writes vectors and tables")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--layer", type=int, default=None, help="decoder layer (default: the middle one)")
    p.add_argument("--kappa", type=float, default=0.5, help="separability cutoff: gap >= kappa * D")
    p.add_argument("--axis", default="fisher", choices=["fisher", "mean_diff"])
    p.add_argument("--consistency", default="mean", choices=["mean", "polarity-balanced"],
                   help="consistency reference: the mean local vector (the method), or for Yes/No and A/B answers "
                        "the mean over positive-answer tokens of their mean local vector")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature t (default: spread of the scores)")
    p.add_argument("--scores", default=None, help="a scores CSV (id,score or id + one column per sub-behaviour) instead of agents")
    p.add_argument("--agents", default="offline", choices=["auto", "offline", "anthropic", "local", "none"])
    p.add_argument("--agent-model", default=None, help="Anthropic model id, or a local chat model folder for --agents local")
    p.add_argument("--threshold", type=float, default=2.0, help="Agent-2 keeps sub-behaviours with c_k >= threshold")
    p.add_argument("--seed", type=int, default=0, help="seed of the 7:2:1 split and of Agent-1's examples")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-model-scores", action="store_true", help="skip the logit-diff / conf baselines")
    p.add_argument("--no-steerability", action="store_true",
                   help="skip the per-pair steerability diagnostic (slope of each pair's log-ratio under the CAA vector)")
    p.add_argument("--refresh", action="store_true", help="make new agent calls even when cached")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="alignment probability per method and alpha on held-out instances")
    p.add_argument("--run", required=True, help="a folder written by `saas run`")
    p.add_argument("--alphas", default="-1,0,1")
    p.add_argument("--splits", default="test", help="comma-separated: test, val, train")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all in the run)")
    p.add_argument("--model", default=None, help="override the run's model")
    p.add_argument("--norm-matched", action="store_true",
                   help="rescale every vector to the CAA vector's norm at the same layer before steering")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="base and steered generations for a prompt")
    p.add_argument("--run", required=True)
    p.add_argument("--method", default="saas", help="one or more methods, comma-separated")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None)
    p.add_argument("--prompted", action="store_true",
                   help="add a 'prompted' column (the behaviour asked for in a system prompt built from the behaviour "
                        "card, no vector) and 'prompted+<method>' columns")
    p.add_argument("--positions", default="generated", choices=["generated", "all"],
                   help="steer the last prompt token and the new tokens (generated), or every position like llama.cpp (all)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="export a run's vectors as llama.cpp GGUF control vectors or safetensors")
    p.add_argument("--run", required=True, help="a folder written by `saas run`")
    p.add_argument("--method", default="saas", help="one or more methods, comma-separated")
    p.add_argument("--format", default="gguf", choices=["gguf", "safetensors"])
    p.add_argument("--out", required=True,
                   help="one method: the file (suffix added when missing; an existing folder gets <method>.<ext>); "
                        "several methods: a folder, one <method>.<ext> per method")
    p.add_argument("--model-hint", default="llama", help="GGUF controlvector.model_hint (the model architecture)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("agents", help="run the three agents on a dataset; writes subbehaviours.json + relevance.csv")
    _add_data_args(p)
    p.add_argument("--agents", default="offline", choices=["auto", "offline", "anthropic", "local"])
    p.add_argument("--agent-model", default=None)
    p.add_argument("--threshold", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refresh", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser("reproduce", help="the method's Tables 1-3 over seeds: methods, ablations, side effects")
    _add_model_args(p)
    p.add_argument("--behaviours", nargs="*", default=None, help='dataset paths or "demo" (default: the five OCEAN persona files)')
    p.add_argument("--seeds", type=int, default=None, help="number of 7:2:1 splits (default 5; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="one trait, one seed, 200 instances, 3 layers, 1 BiPO epoch, 40 MMLU items")
    p.add_argument("--agents", default="offline", choices=["auto", "offline", "anthropic", "local", "none"])
    p.add_argument("--limit", type=int, default=None, help="first N instances of each behaviour")
    p.add_argument("--layers", default=None, help='layers to sweep on validation: "10,15,20" or "all" (default: 7 from 20%% to 80%% depth)')
    p.add_argument("--alphas", default=None, help="test alphas (default -1,0,1; -1 and +1 are always included)")
    p.add_argument("--bipo-epochs", type=int, default=None)
    p.add_argument("--bipo-lr", type=float, default=None)
    p.add_argument("--no-bipo", action="store_true")
    p.add_argument("--mmlu", type=int, default=None, help="MMLU items for the side-effect table (default 100; 0 skips)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="output folder (default results/reproduce-<time>, results/quick with --quick)")
    p.add_argument("--render-only", action="store_true", help="rebuild the tables and plots of a finished --out run (no model)")
    p.add_argument("--consistency", default=None, choices=["mean", "polarity-balanced"],
                   help="consistency reference of the eligibility test (default: mean, the method)")
    p.add_argument("--no-norm-matched", action="store_true",
                   help="skip the norm-matched table (every vector rescaled to CAA's norm)")
    p.set_defaults(func=cmd_reproduce)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saas", description="Semantic-Aware Activation Steering, headless.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert the embedded model once (done by the set-up script)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("extract", help="all-layer answer-token activations of a dataset")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("datasets", help="list the bundled demo behaviours and the dataset files beside the checkout")
    p.add_argument("--root", default=None, help="folder to search (default: ../shared/data)")
    p.set_defaults(func=cmd_datasets)

    _add_method_commands(sub)
    return parser


def _glue_negative_lists(argv: list[str]) -> list[str]:
    """Let ``--alphas -1,0,1`` through: argparse would read "-1,0,1" as an option."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("--alphas", "--alpha", "--layers"):
            nxt = next(it, None)
            out.append(a if nxt is None else f"{a}={nxt}")
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    set_offline_defaults()
    args = build_parser().parse_args(_glue_negative_lists(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from saas.errors import user_facing_errors

    try:
        return int(args.func(args) or 0)
    except user_facing_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
