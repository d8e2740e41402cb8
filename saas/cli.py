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
    from saas.data import load_dataset
    from saas.models import load_model

    dataset = load_dataset(args.dataset, format=getattr(args, "format", "auto"), limit=getattr(args, "limit", None))
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

    lm, dataset = _load(args)
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
        "cache_key": acts.key,
    }
    write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help='"default" (embedded SmolLM2-135M-Instruct), a local folder or a hub id')
    p.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on cuda, fp32 on cpu)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="demo", help='"demo" or a path to a persona JSONL, CAA JSON or CSV/JSONL file')
    p.add_argument("--format", default="auto", choices=["auto", "persona", "caa", "generic"])
    p.add_argument("--limit", type=int, default=None, help="use only the first N instances")


def _add_method_commands(sub: Any) -> None:
    """``run``, ``eval``, ``generate``, ``agents`` and ``reproduce`` (defined below)."""


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

    _add_method_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_offline_defaults()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from saas.errors import user_facing_errors

    try:
        return int(args.func(args) or 0)
    except user_facing_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
