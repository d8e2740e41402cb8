from __future__ import annotations

import numpy as np
import pytest

import saas.activations as activations
from saas.activations import extract_activations, forward_read
from saas.data import Instance
from saas.prompts import encode

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


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAAS_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.model
def test_batched_equals_single(embedded, tmp_cache) -> None:
    insts = _instances()
    acts = extract_activations(embedded, insts, batch_size=4, use_cache=False)
    assert acts.positive.shape == (5, embedded.n_layers, embedded.hidden_size)
    for k, inst in enumerate(insts):
        for answer, arr in ((inst.positive, acts.positive), (inst.negative, acts.negative)):
            enc = encode(embedded.tokenizer, inst.prompt, answer)
            single = forward_read(embedded, [enc.ids], [enc.read_index])[0]
            tol = 1e-4 + RTOL_OF_MAX * np.abs(single).max()
            np.testing.assert_allclose(arr[k], single, atol=tol, rtol=0)
    # positive and negative really differ at the read token (not a shared-prefix position)
    assert np.abs(acts.positive - acts.negative).max() > 1.0


@pytest.mark.model
def test_layer_l_is_hidden_states_l_plus_1(embedded, tmp_cache) -> None:
    import torch

    inst = _instances()[0]
    enc = encode(embedded.tokenizer, inst.prompt, inst.positive)
    ours = forward_read(embedded, [enc.ids], [enc.read_index])[0]
    with torch.no_grad():
        hs = embedded.model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
    for layer in (0, 10, 28):  # the last entry of hidden_states has the final norm applied: not a layer output
        np.testing.assert_allclose(ours[layer], hs[layer + 1][0, enc.read_index].numpy(), atol=1e-3, rtol=0)


@pytest.mark.model
def test_cache_hit_does_no_forward(embedded, tmp_cache, monkeypatch) -> None:
    calls = []
    real = activations.forward_read
    monkeypatch.setattr(activations, "forward_read", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = extract_activations(embedded, _instances(), batch_size=4)
    n_first = len(calls)
    assert n_first == 3 and not first.from_cache
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
