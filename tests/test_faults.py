"""Every corrupted cache kind warns and recomputes, and nothing else is lost (tiny random models).

Agent-call, agent-index and overlay files are covered in tests/test_agents.py; here: activations,
the answer scores stored with them, BiPO vectors and steerability.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from saas.activations import extract_activations
from saas.bipo import train_bipo
from saas.data import Instance
from saas.diagnostics import steerability
from saas.models import LoadedModel, convert_default, wrap_model
from saas.steering import SteeringVector


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    tok = AutoTokenizer.from_pretrained(str(convert_default()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    return wrap_model(LlamaForCausalLM(cfg).eval(), tok, name="tiny-faults")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    return tmp_path


def pairs(tag: str, n: int = 4) -> list[Instance]:
    return [Instance(f"{tag}{k}", f"Will day {k} of {tag} go well?", f"Yes, day {k} will go wonderfully.",
                     f"No, day {k} will go badly.") for k in range(n)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()}


def test_corrupted_activation_file_recomputes_and_spares_the_others(lm, cache, caplog) -> None:  # type: ignore[no-untyped-def]
    a = extract_activations(lm, pairs("a"))
    extract_activations(lm, pairs("b"))
    folder = cache / "activations"
    victim = folder / f"{a.key}.safetensors"
    others = {k: v for k, v in snapshot(folder).items() if k != victim.name}
    victim.write_bytes(b"\x00 not a safetensors file")
    with caplog.at_level(logging.WARNING):
        again = extract_activations(lm, pairs("a"))
    assert not again.from_cache and "unreadable" in caplog.text
    np.testing.assert_allclose(again.positive, a.positive, atol=1e-5)
    assert {k: v for k, v in snapshot(folder).items() if k != victim.name} == others  # nothing else touched
    assert extract_activations(lm, pairs("b")).from_cache


def test_corrupted_answer_scores_are_recomputed_and_the_activations_kept(lm, cache, caplog) -> None:  # type: ignore[no-untyped-def]
    first = extract_activations(lm, pairs("s"))
    path = cache / "activations" / f"{first.key}.safetensors"
    arrays = load_file(str(path))
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata() or {})
    arrays["answer_logprobs"] = np.full_like(arrays["answer_logprobs"], np.nan)
    save_file(arrays, str(path), metadata=meta)
    with caplog.at_level(logging.WARNING):
        again = extract_activations(lm, pairs("s"))
    assert "answer scores in an activation cache file are unreadable" in caplog.text
    assert again.from_cache  # the activations themselves were fine: read, not recomputed
    assert again.logprobs is not None
    for x, y in zip(again.logprobs, first.logprobs or []):
        for u, v in zip(x.token_logprobs, y.token_logprobs):
            np.testing.assert_allclose(u, v, atol=1e-5)
    assert np.isfinite(load_file(str(path))["answer_logprobs"]).all()  # the file was repaired


def test_corrupted_bipo_cache_retrains(lm, cache, caplog) -> None:  # type: ignore[no-untyped-def]
    insts = pairs("p", 3)
    vec, hist = train_bipo(lm, insts, 1, epochs=1, batch_size=3)
    files = sorted((cache / "vectors").glob("bipo-*.safetensors"))
    assert len(files) == 1 and not hist.from_cache
    files[0].write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        again, hist2 = train_bipo(lm, insts, 1, epochs=1, batch_size=3)
    assert "BiPO cache" in caplog.text and not hist2.from_cache
    np.testing.assert_allclose(again.numpy(1), vec.numpy(1), atol=1e-5)
    assert train_bipo(lm, insts, 1, epochs=1, batch_size=3)[1].from_cache


def test_corrupted_steerability_cache_recomputes(lm, cache, caplog) -> None:  # type: ignore[no-untyped-def]
    insts = pairs("t")
    vec = SteeringVector.from_array(np.ones(32, dtype=np.float32), 1, "caa")
    first = steerability(lm, insts, "sentence", vec)
    files = list((cache / "scores").glob("steer-*.npz"))
    assert first is not None and len(files) == 1
    files[0].write_bytes(b"PK\x03\x04 broken zip")
    with caplog.at_level(logging.WARNING):
        again = steerability(lm, insts, "sentence", vec)
    assert again is not None and not again.from_cache and "steerability cache" in caplog.text
    np.testing.assert_allclose(again.slopes, first.slopes, atol=1e-6)
    assert steerability(lm, insts, "sentence", vec, only_cached=True) is not None
