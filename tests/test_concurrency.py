"""Two sessions at the same time, in real threads: no crossed state, no crossed steering.

- Core: two threads generate on ONE shared model with different steering at the same time (no lock);
  each gets exactly what it gets alone. The hooks act only in the thread that installed them.
- App: two AppTest sessions with different settings prepare and generate concurrently in two
  threads; each keeps its own run, settings and texts, equal to what its settings give alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from saas.generation import Column, generate_columns
from saas.models import LoadedModel, convert_default, wrap_model
from saas.steering import SteeringVector


def run_together(*jobs: Callable[[], Any]) -> list[Any]:
    """Start every job in its own thread at the same moment; return their results (re-raise errors)."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def wrap(k: int, job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[k] = job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(k, j)) for k, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    tok = AutoTokenizer.from_pretrained(str(convert_default()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    return wrap_model(LlamaForCausalLM(cfg).eval(), tok, name="tiny-concurrency")


def test_two_threads_steering_one_model_do_not_cross(tiny: LoadedModel) -> None:
    rng = np.random.default_rng(0)
    va = SteeringVector.from_array(rng.normal(size=64).astype(np.float32) * 8, 1, "a")
    vb = SteeringVector.from_array(rng.normal(size=64).astype(np.float32) * 8, 2, "b")
    cols_a = [Column("base"), Column("a", va, 1.0)]
    cols_b = [Column("b", vb, -1.0), Column("base")]

    def job_a() -> dict[str, str]:
        return generate_columns(tiny, "Tell me about the sea.", cols_a, max_new_tokens=24, min_new_tokens=24)

    def job_b() -> dict[str, str]:
        return generate_columns(tiny, "Tell me about the sea.", cols_b, max_new_tokens=24, min_new_tokens=24)

    alone_a, alone_b = job_a(), job_b()
    assert alone_a["a"] != alone_a["base"] and alone_b["b"] != alone_b["base"]  # the vectors do steer
    for _ in range(3):
        together_a, together_b = run_together(job_a, job_b)
        assert together_a == alone_a and together_b == alone_b
    assert together_a["base"] == together_b["base"]  # the unsteered rows agree across the threads


@pytest.mark.model
def test_two_app_sessions_prepare_and_generate_at_the_same_time() -> None:
    """Two sessions' work through the app's own shared layer (saas_app.resources: the process-wide
    store, the model lock), in two threads at once, as two browser tabs run it on the server.
    (AppTest itself cannot run in two threads: its widget registry is process-global.)"""
    from saas.pipeline import compute
    from saas_app import resources
    from saas_app.resources import RunSpec
    from saas_app.ui import model_lock

    specs = {"demo": (RunSpec(dataset="demo", limit=40, agents="none"), 0.5, 2.0),
             "demo:politeness": (RunSpec(dataset="demo:politeness", limit=40, agents="none"), 1.0, -2.0)}

    def session(name: str) -> tuple[Any, dict[str, str]]:
        spec, kappa, alpha = specs[name]
        run = resources.open_run(spec)  # prepares (or reuses) this spec's run
        res = compute(run.prepared, kappa=kappa)
        prompt = run.prepared.instances("test")[0].prompt
        cols = [Column("base"), Column("caa", res.vectors["caa"], alpha)]
        with model_lock():
            texts = generate_columns(run.prepared.lm, prompt, cols, max_new_tokens=16)
        return run, texts

    (run_a, texts_a), (run_b, texts_b) = run_together(lambda: session("demo"), lambda: session("demo:politeness"))
    assert run_a.prepared.dataset.name == "optimism" and run_b.prepared.dataset.name == "politeness"
    assert run_a.prepared.lm is run_b.prepared.lm  # one shared model, loaded once
    assert run_a.key != run_b.key
    # Each session's texts equal what its own settings give alone, one after the other.
    for name, run, texts in (("demo", run_a, texts_a), ("demo:politeness", run_b, texts_b)):
        _, kappa, alpha = specs[name]
        res = compute(run.prepared, kappa=kappa)
        prompt = run.prepared.instances("test")[0].prompt
        alone = generate_columns(run.prepared.lm, prompt, [Column("base"), Column("caa", res.vectors["caa"], alpha)],
                                 max_new_tokens=16)
        assert texts == alone, name
    # The shared prepared runs were not mutated by the other session.
    assert resources.open_run(specs["demo"][0]).prepared is run_a.prepared


def test_two_threads_extracting_activations_at_once_each_get_their_own(tiny: LoadedModel, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The capture hooks are thread-owned too (before, the second thread's forwards landed in the
    first thread's capture: an IndexError, or mixed activations)."""
    from saas.activations import extract_activations
    from saas.data import Instance

    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    a = [Instance(f"a{k}", f"How will day {k} go?", f"It will go wonderfully, day {k}.", "Badly.") for k in range(12)]
    b = [Instance(f"b{k}", f"Is box {k} heavy?", "Yes", "No") for k in range(9)]
    alone_a = extract_activations(tiny, a, batch_size=4, use_cache=False)
    alone_b = extract_activations(tiny, b, batch_size=6, use_cache=False)
    for _ in range(3):
        got_a, got_b = run_together(lambda: extract_activations(tiny, a, batch_size=4, use_cache=False),
                                    lambda: extract_activations(tiny, b, batch_size=6, use_cache=False))
        np.testing.assert_allclose(got_a.positive, alone_a.positive, atol=1e-5)
        np.testing.assert_allclose(got_b.negative, alone_b.negative, atol=1e-5)
