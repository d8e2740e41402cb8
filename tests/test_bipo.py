"""BiPO and the prompt-cached answer scoring, on tiny random-weight Llamas with the SmolLM2 tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import saas.bipo as bipo
from saas.bipo import train_bipo
from saas.data import Instance
from saas.evaluation import answer_logprobs
from saas.forward import PromptCache, layout
from saas.models import convert_default, wrap_model
from saas.steering import SteeringVector


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer (chat template included); its vocabulary sizes the tiny models."""
    return AutoTokenizer.from_pretrained(str(convert_default()))


def tiny_lm(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32, tie: bool = True):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie,
                      pad_token_id=tokenizer.pad_token_id)
    return wrap_model(LlamaForCausalLM(cfg).eval(), tokenizer, name=f"tiny-llama-{seed}-{layers}-{hidden}-{tie}")


STATEMENTS = ["I like new ideas", "Art moves me", "I prefer routine", "Poetry bores me", "I enjoy puzzles",
              "Travel excites me", "I avoid change", "Museums are dull", "I read widely", "I love debates",
              "Rules comfort me", "I try new food"]


def yesno(n: int = 12, all_yes: bool = False) -> list[Instance]:
    out = []
    for k in range(n):
        pos = "Yes" if all_yes or k % 2 == 0 else "No"
        out.append(Instance(f"yn:{k}", f'Is the following statement something you would say?\n"{STATEMENTS[k % len(STATEMENTS)]} ({k})"',
                            pos, "No" if pos == "Yes" else "Yes"))
    return out


def sentences() -> list[Instance]:
    return [Instance(f"s:{k}", f"How will day {k} go?", f"It will go well, I am sure of it ({k}).",
                     "It will go badly." if k % 2 else "Badly, I fear.") for k in range(5)]


def ab() -> list[Instance]:
    return [Instance(f"ab:{k}", f"Pick one ({k}).\n\nChoices:\n (A) yes\n (B) no" + ("\n (C) maybe" if k == 2 else ""),
                     "(A)" if k % 2 else "(B)", "(B)" if k % 2 else "(A)", ("(A)", "(B)", "(C)") if k == 2 else ("(A)", "(B)"))
            for k in range(4)]


@pytest.mark.parametrize("kind", ["yesno", "sentence", "ab"])
def test_prompt_cache_equals_full_forward(tokenizer, kind) -> None:
    lm = tiny_lm(tokenizer)
    insts = {"yesno": yesno, "sentence": sentences, "ab": ab}[kind]()
    vec = SteeringVector.from_array(np.random.default_rng(0).normal(size=lm.hidden_size).astype(np.float32), 0, "x")
    pc = PromptCache(lm, insts, batch_size=3)
    got = pc.logprobs([(None, 0.0), (vec, 2.0)])
    subset = [4, 0, 2] if len(insts) > 4 else [3, 1]
    got_sub = pc.logprobs([(vec, 2.0)], subset)[0]
    for alpha, lps in ((0.0, got[0]), (2.0, got[1])):
        ref = answer_logprobs(lm, insts, vector=vec if alpha else None, alpha=alpha)
        for r, g in zip(ref, lps):
            assert r.answers == g.answers
            for a, b in zip(r.token_logprobs, g.token_logprobs):
                np.testing.assert_allclose(a, b, atol=1e-4)
    ref = answer_logprobs(lm, [insts[k] for k in subset], vector=vec, alpha=2.0)
    for r, g in zip(ref, got_sub):
        assert r.id == g.id
        for a, b in zip(r.token_logprobs, g.token_logprobs):
            np.testing.assert_allclose(a, b, atol=1e-4)
    # scoring twice gives the same numbers: the prefix caches are never modified
    again = pc.logprobs([(vec, 2.0)])[0]
    for a, b in zip(got[1], again):
        for x, y in zip(a.token_logprobs, b.token_logprobs):
            np.testing.assert_array_equal(x, y)


def test_layout_shares_one_row_for_single_token_answers(tokenizer) -> None:
    lay = layout(tokenizer, yesno(1)[0])
    assert len(lay.rows) == 1 and len(lay.rows[0].ids) == 1  # the last prompt token scores Yes and No
    assert {t[0] for t in lay.rows[0].targets} == {0, 1}
    lay = layout(tokenizer, sentences()[0])
    assert len(lay.rows) == 2 and all(r.steer_from == 0 for r in lay.rows)


def test_bipo_loss_decreases_and_model_stays_frozen(tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    lm = tiny_lm(tokenizer, seed=1)
    flags = [p.requires_grad for p in lm.model.parameters()]
    before = [p.detach().clone() for p in lm.model.parameters()]
    # every y+ is "Yes": one direction can serve all instances (beta 1 so that a random model's
    # small logit changes show in the loss within a few epochs)
    vec, hist = train_bipo(lm, yesno(12, all_yes=True), 1, epochs=4, lr=0.1, beta=1.0, batch_size=4, seed=0)
    assert len(hist.epoch_loss) == 4 and len(hist.step_loss) == 12
    assert hist.step_loss[0] == pytest.approx(np.log(2), abs=1e-4)  # v starts at 0: loss = -log sigmoid(0)
    assert hist.epoch_loss[-1] < hist.epoch_loss[0] - 0.05, hist.epoch_loss
    assert hist.epoch_loss[-1] < 0.8 * np.log(2), hist.epoch_loss
    assert set(hist.step_sign) <= {-1, 1}
    assert vec.layers == [1] and vec.method == "bipo" and vec.norm() > 0
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(before, lm.model.parameters()))


def test_bipo_recovers_a_planted_direction(tokenizer, tmp_path, monkeypatch) -> None:
    """The answer logits depend on the residual only along u: lm_head rows of Yes / No are +-u (the
    rest zero) and the last layer is steered, so log p(Yes) - log p(No) = 2 u . norm(h + v)."""
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    lm = tiny_lm(tokenizer, seed=2, hidden=32, tie=False)
    u = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(5)), dim=0)
    yes = tokenizer.convert_tokens_to_ids("Yes")
    no = tokenizer.convert_tokens_to_ids("No")
    with torch.no_grad():
        lm.model.lm_head.weight.zero_()
        lm.model.lm_head.weight[yes] = 3 * u
        lm.model.lm_head.weight[no] = -3 * u
    vec, hist = train_bipo(lm, yesno(12, all_yes=True), lm.n_layers - 1, epochs=10, lr=0.05, batch_size=4, seed=0)
    v = torch.as_tensor(vec.numpy())
    cos = float(v @ u / v.norm())
    assert cos > 0.9, (cos, hist.epoch_loss)
    assert hist.epoch_loss[-1] < hist.epoch_loss[0]


def test_bipo_cache_hit_returns_the_same_vector_without_training(tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    lm = tiny_lm(tokenizer, seed=3)
    insts = yesno(8)
    vec, hist = train_bipo(lm, insts, 0, epochs=1, lr=0.05, batch_size=4, seed=1)
    assert not hist.from_cache

    def no_training(*_a, **_k):
        raise AssertionError("trained again despite a cached result")

    monkeypatch.setattr(bipo, "PromptCache", no_training)
    again, hist2 = train_bipo(lm, insts, 0, epochs=1, lr=0.05, batch_size=4, seed=1)
    assert hist2.from_cache and hist2.epoch_loss == hist.epoch_loss
    np.testing.assert_array_equal(again.numpy(), vec.numpy())
    # any hyperparameter is part of the key
    with pytest.raises(AssertionError, match="trained again"):
        train_bipo(lm, insts, 0, epochs=1, lr=0.01, batch_size=4, seed=1)
    with pytest.raises(AssertionError, match="trained again"):
        train_bipo(lm, insts[:6], 0, epochs=1, lr=0.05, batch_size=4, seed=1)


def test_bipo_rejects_bad_hyperparameters(tokenizer) -> None:
    lm = tiny_lm(tokenizer)
    with pytest.raises(ValueError, match="epochs"):
        train_bipo(lm, yesno(2), 0, epochs=0, use_cache=False)
    with pytest.raises(IndexError):
        train_bipo(lm, yesno(2), 5, epochs=1, use_cache=False)


@pytest.mark.parametrize("kind", ["yesno", "sentence", "ab"])
def test_prompt_cache_activations_equal_extraction(tokenizer, kind) -> None:
    from saas.activations import extract_activations

    lm = tiny_lm(tokenizer, seed=4)
    insts = {"yesno": yesno, "sentence": sentences, "ab": ab}[kind]()
    pos, neg = PromptCache(lm, insts, batch_size=3).activations()
    ref = extract_activations(lm, insts, use_cache=False)
    np.testing.assert_allclose(pos, ref.positive, atol=1e-4)
    np.testing.assert_allclose(neg, ref.negative, atol=1e-4)
