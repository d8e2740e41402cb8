"""Per-instance steerability against a direct computation: a plain forward with a plain hook at each alpha."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from saas.data import Instance
from saas.diagnostics import STEER_ALPHAS, slopes_of, steerability, steerability_shares
from saas.forward import PromptCache, candidate_answers
from saas.models import LoadedModel, convert_default, wrap_model
from saas.prompts import encode
from saas.steering import SteeringVector

LAYER = 1


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    tok = AutoTokenizer.from_pretrained(str(convert_default()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    return wrap_model(LlamaForCausalLM(cfg).eval(), tok, name="tiny-steerability")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    return tmp_path


def plain_margin(lm: LoadedModel, inst: Instance, kind: str, vector: np.ndarray, alpha: float) -> float:
    """log-ratio of the pair's answers, each from one full forward of its own text with a plain hook that
    adds alpha * v to layer LAYER's output from the last prompt token on."""
    layer = lm.model.model.layers[LAYER]
    scores = []
    for answer in candidate_answers(inst)[:2]:
        enc = encode(lm.tokenizer, inst.prompt, answer)
        start = enc.answer_start - 1

        def hook(_m, _i, out, start=start):  # type: ignore[no-untyped-def]
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[:, start:, :] += alpha * torch.as_tensor(vector, dtype=h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = lm.model(torch.tensor([enc.ids])).logits[0].float()
        finally:
            handle.remove()
        lsm = torch.log_softmax(logits, dim=-1)
        lp = np.array([float(lsm[q, enc.ids[q + 1]]) for q in range(enc.answer_start - 1, enc.read_index)])
        scores.append(lp.mean() if kind == "sentence" else lp.sum())
    return float(scores[0] - scores[1])


@pytest.mark.parametrize("kind", ["sentence", "yesno"])
def test_steerability_slopes_equal_a_plain_hooked_forward(lm: LoadedModel, tmp_cache, kind: str) -> None:  # type: ignore[no-untyped-def]
    if kind == "sentence":
        insts = [Instance(f"s{k}", f"How will day {k} go?", f"It will go wonderfully well, day {k}.",
                          f"It will go badly on day {k}.") for k in range(5)]
    else:
        insts = [Instance(f"y{k}", f"Do you like thing {k}? Answer with Yes or No.", "Yes" if k % 2 else "No",
                          "No" if k % 2 else "Yes") for k in range(6)]
    rng = np.random.default_rng(1)
    v = rng.normal(size=32).astype(np.float32) * 2.0
    vec = SteeringVector.from_array(v, LAYER, "caa")
    got = steerability(lm, insts, kind, vec)
    assert got is not None and not got.from_cache
    margins = np.array([[plain_margin(lm, i, kind, v, a) for a in STEER_ALPHAS] for i in insts])
    np.testing.assert_allclose(got.margins, margins, atol=2e-4, rtol=0)
    expected = np.array([np.polyfit(STEER_ALPHAS, row, 1)[0] for row in margins])  # numpy's least squares
    np.testing.assert_allclose(got.slopes, expected, atol=5e-4, rtol=0)
    assert np.ptp(got.slopes) > 1e-3  # the pairs really differ in steerability
    # Cached: the same numbers without the model; a reused prompt cache gives them too.
    again = steerability(lm, insts, kind, vec, only_cached=True)
    assert again is not None and again.from_cache
    np.testing.assert_allclose(again.slopes, got.slopes)
    pc = PromptCache(lm, insts, keep=True)
    reused = steerability(lm, insts, kind, vec, prompt_cache=pc, use_cache=False)
    assert reused is not None
    np.testing.assert_allclose(reused.slopes, got.slopes, atol=1e-5)


def test_nothing_cached_means_no_model_run(lm: LoadedModel, tmp_cache) -> None:  # type: ignore[no-untyped-def]
    insts = [Instance("a", "Q?", "Yes", "No"), Instance("b", "R?", "No", "Yes")]
    vec = SteeringVector.from_array(np.ones(32, dtype=np.float32), LAYER, "caa")
    assert steerability(lm, insts, "yesno", vec, only_cached=True) is None


def test_slopes_and_shares_by_hand() -> None:
    alphas = np.array([-1.0, 0.0, 1.0])
    margins = np.array([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(slopes_of(alphas, margins), [1.0, -1.0, 0.0])
    shares = steerability_shares(np.array([1.0, -1.0, -0.5, 0.2]), np.array([True, True, False, False]))
    assert shares["anti_steerable_eligible"] == 0.5 and shares["anti_steerable_dropped"] == 0.5
    assert shares["anti_steerable_all"] == 0.5 and shares["n_dropped"] == 2
    with pytest.raises(ValueError, match="two different alphas"):
        slopes_of(np.array([1.0, 1.0]), np.zeros((2, 2)))
