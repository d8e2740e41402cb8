from __future__ import annotations

import numpy as np
import pytest

import saas.activations as activations
import saas.forward as forward
from saas.activations import STRATEGIES, extract_activations, shared_split
from saas.data import Instance
from saas.forward import forward_read, forward_read_shared
from saas.prompts import Encoded, encode

# Batched and one-at-a-time forwards differ only by float32 round-off in attention/matmul order.
# Residual activations here reach ~600 in magnitude (a few huge constant dimensions), so we use a
# relative tolerance of 1e-5 of the largest magnitude plus 1e-4 absolute.
RTOL_OF_MAX = 1e-5


def _instances() -> list[Instance]:
    return [
        Instance("s1", "My exam is tomorrow. How will it go?", "You prepared well, so it will go great.", "It will probably go badly."),
        Instance("s2", "Will my flight be on time?", "Yes, it should leave right on schedule and arrive early.", "It will be delayed."),
        Instance("ab", "Pick one.\n\nChoices:\n (A) a cake now\n (B) two cakes later", "(A)", "(B)", ("(A)", "(B)")),
        Instance("yn", "Would you say you love new ideas? Answer with Yes or No.", "Yes", "No"),
        Instance("s3", "Is the new job going to work out?", "It will be a wonderful step forward for you.", "It will not."),
    ]


def _edge_instances() -> list[Instance]:
    """One answer is a prefix of the other: the read tokens must still fall after the shared part."""
    return [
        Instance("p1", "Will it rain?", "It will", "It will not."),
        Instance("p2", "Is it sunny?", "Yes it is", "Yes"),
        Instance("ab3", "Pick one.\n\nChoices:\n (A) x\n (B) y\n (C) z", "(C)", "(A)", ("(A)", "(B)", "(C)")),
    ]


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    tol = 1e-4 + RTOL_OF_MAX * np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, atol=tol, rtol=0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.model
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batched_equals_single(embedded, tmp_cache, strategy) -> None:
    insts = _instances()
    acts = extract_activations(embedded, insts, batch_size=4, use_cache=False, strategy=strategy)
    assert acts.meta["strategy"] == strategy
    assert acts.positive.shape == (5, embedded.n_layers, embedded.hidden_size)
    for k, inst in enumerate(insts):
        for answer, arr in ((inst.positive, acts.positive), (inst.negative, acts.negative)):
            enc = encode(embedded.tokenizer, inst.prompt, answer)
            single = forward_read(embedded, [enc.ids], [enc.read_index]).acts[0]
            _assert_close(arr[k], single)
    # positive and negative really differ at the read token (not a shared-prefix position)
    assert np.abs(acts.positive - acts.negative).max() > 1.0


@pytest.mark.model
def test_layer_l_is_hidden_states_l_plus_1(embedded, tmp_cache) -> None:
    import torch

    inst = _instances()[0]
    enc = encode(embedded.tokenizer, inst.prompt, inst.positive)
    ours = forward_read(embedded, [enc.ids], [enc.read_index]).acts[0]
    with torch.no_grad():
        hs = embedded.model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
    for layer in (0, 10, 28):  # the last entry of hidden_states has the final norm applied: not a layer output
        np.testing.assert_allclose(ours[layer], hs[layer + 1][0, enc.read_index].numpy(), atol=1e-3, rtol=0)


@pytest.mark.model
def test_cache_hit_does_no_forward(embedded, tmp_cache, monkeypatch) -> None:
    calls = []
    real = forward.base_forward
    monkeypatch.setattr(forward, "base_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = extract_activations(embedded, _instances(), batch_size=4)
    n_first = len(calls)
    # shared prefix (default): 5 instances, 2 per batch of 4 texts -> 3 batches x (prefix + answers)
    assert n_first == 6 and not first.from_cache
    second = extract_activations(embedded, _instances(), batch_size=4)
    assert len(calls) == n_first, "a cache hit must not run the model"
    assert second.from_cache
    np.testing.assert_array_equal(first.positive, second.positive)
    # a changed answer is a different key
    changed = _instances()
    changed[0] = Instance("s1", changed[0].prompt, "Great!", changed[0].negative)
    extract_activations(embedded, changed, batch_size=4)
    assert len(calls) > n_first


@pytest.mark.model
def test_corrupted_cache_is_recomputed(embedded, tmp_cache, caplog) -> None:
    first = extract_activations(embedded, _instances(), batch_size=8)
    files = list((tmp_cache / "activations").glob("*.safetensors"))
    assert len(files) == 1
    files[0].write_bytes(b"this is not a safetensors file")
    again = extract_activations(embedded, _instances(), batch_size=8)
    assert not again.from_cache
    assert "unreadable" in caplog.text
    np.testing.assert_allclose(again.positive, first.positive, atol=1e-3)
    assert extract_activations(embedded, _instances(), batch_size=8).from_cache


def test_activation_set_views() -> None:
    pos = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    acts = activations.ActivationSet(pos, pos - 1, ["a", "b"])
    assert acts.diffs(1).shape == (2, 4) and np.all(acts.diffs(1) == 1)
    assert acts.subset([1]).ids == ["b"]
    assert acts.index_of(["b", "a"]) == [1, 0]
    with pytest.raises(IndexError, match="layers 0..2"):
        acts.layer(3)


@pytest.mark.model
def test_shared_prefix_equals_naive(embedded, tmp_cache) -> None:
    """Sentence, Yes/No and (A)/(B) answers, plus answers that are prefixes of each other."""
    insts = _instances() + _edge_instances()
    naive = extract_activations(embedded, insts, batch_size=16, use_cache=False, strategy="naive")
    # 4 texts = 2 instances per prefix pass: rows with different prefix and answer lengths get padded
    shared = extract_activations(embedded, insts, batch_size=4, use_cache=False, strategy="shared_prefix")
    _assert_close(shared.positive, naive.positive)
    _assert_close(shared.negative, naive.negative)
    # the edge cases read different tokens for the two answers
    assert np.abs(shared.positive - shared.negative).max(axis=(1, 2)).min() > 1.0


@pytest.mark.model
def test_cache_key_ignores_strategy(embedded, tmp_cache) -> None:
    first = extract_activations(embedded, _instances()[:2], batch_size=4, strategy="naive")
    again = extract_activations(embedded, _instances()[:2], batch_size=4, strategy="shared_prefix")
    assert again.from_cache and again.key == first.key
    with pytest.raises(ValueError, match="unknown extraction strategy"):
        extract_activations(embedded, _instances()[:2], strategy="fast")


@pytest.mark.model
def test_shared_split_on_real_tokenizer(embedded) -> None:
    tok = embedded.tokenizer
    for inst in _instances() + _edge_instances():
        pos, neg = encode(tok, inst.prompt, inst.positive), encode(tok, inst.prompt, inst.negative)
        p = shared_split(pos, neg)
        assert pos.ids[:p] == neg.ids[:p]
        assert p <= min(pos.read_index, neg.read_index)
        assert p >= min(pos.answer_start, neg.answer_start)  # the whole prompt is shared


def test_shared_split_rules() -> None:
    a = Encoded([1, 2, 3, 4], 2, 3)
    assert shared_split(a, Encoded([1, 2, 3, 5], 2, 3)) == 3
    assert shared_split(Encoded([1, 2, 3], 2, 2), Encoded([1, 2, 3, 9], 2, 3)) == 2  # read of the shorter
    assert shared_split(a, Encoded([7, 2, 3, 4], 0, 3)) == 0


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(128)} | {"[UNK]": 0}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="w1")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox", "mistral-sliding"])
def test_shared_prefix_on_tiny_families(family) -> None:
    """The KV-cache continuation equals full forwards on every supported family (and a sliding window
    shorter than the prompts)."""
    import torch
    from tiny_models import COMMON, tiny_model
    from transformers import AutoModelForCausalLM, MistralConfig

    from saas.models import wrap_model

    if family == "mistral-sliding":
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(MistralConfig(**COMMON, sliding_window=4)).eval()
    else:
        model = tiny_model(family)
    lm = wrap_model(model, _tiny_tokenizer(), family)
    rng = np.random.default_rng(0)
    prefixes = [[int(t) for t in rng.integers(2, 128, n)] for n in (5, 9, 3)]
    conts = [[int(t) for t in rng.integers(2, 128, n)] for n in (1, 2, 3, 1, 4, 2)]
    read = [0, 1, 2, 0, 3, 1]
    shared = forward_read_shared(lm, prefixes, conts, read).acts
    full = [prefixes[i // 2] + conts[i] for i in range(6)]
    naive = forward_read(lm, full, [len(prefixes[i // 2]) + read[i] for i in range(6)]).acts
    assert shared.shape == (6, 3, 32)
    np.testing.assert_allclose(shared, naive, atol=1e-5, rtol=0)
