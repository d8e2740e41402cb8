"""SteeringVector and its hooks, on tiny random-weight models (no download, well under a second)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from saas.models import find_layers
from saas.steering import SteeringVector, cosine_matrix

D = 32


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=D, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=D, n_layer=3, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return _llama() if request.param == "llama" else _gpt2()


@pytest.fixture()
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


def _vec(layer: int | list[int] = 1, seed: int = 2, scale: float = 3.0) -> SteeringVector:
    v = torch.randn(D, generator=torch.Generator().manual_seed(seed)) * scale
    return SteeringVector.from_array(v, layer, "test")


def _layer_outputs(model: torch.nn.Module, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every decoder layer's output (recorded by hooks registered now, i.e. after any steering
    hook, so they see the steered output) and the logits."""
    layers, _ = find_layers(model)
    seen: list[torch.Tensor] = []

    def rec(_m: torch.nn.Module, _i: object, out: object) -> None:
        seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handles = [layer.register_forward_hook(rec) for layer in layers]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(layer._forward_hooks) for layer in find_layers(model)[0])


def test_alpha_zero_is_bit_identical(model: torch.nn.Module, ids: torch.Tensor) -> None:
    base_layers, base = _layer_outputs(model, ids)
    for positions in ("generated", "all", torch.tensor([2, 4])):
        with _vec([0, 1, 2]).apply(model, 0.0, positions=positions):
            layers, logits = _layer_outputs(model, ids)
        assert torch.equal(logits, base)
        assert all(torch.equal(a, b) for a, b in zip(layers, base_layers))
    assert _n_hooks(model) == 0


def test_only_the_target_layer_changes(model: torch.nn.Module, ids: torch.Tensor) -> None:
    target, alpha = 1, 1.5
    vec = _vec(target)
    base_layers, base = _layer_outputs(model, ids)
    with vec.apply(model, alpha, positions="all"):
        layers, logits = _layer_outputs(model, ids)
    for lyr in range(target):
        assert torch.equal(layers[lyr], base_layers[lyr]), f"layer {lyr} below the target changed"
    # The target's output moved by exactly alpha * v (as extracted, no re-normalisation).
    delta = layers[target] - base_layers[target]
    expected = (alpha * vec.vectors[target]).expand_as(delta)
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=0)
    assert not torch.equal(layers[target + 1], base_layers[target + 1])  # propagates downstream
    assert not torch.equal(logits, base)
    assert _n_hooks(model) == 0


def test_hooks_are_removed_after_an_exception(model: torch.nn.Module, ids: torch.Tensor) -> None:
    _, base = _layer_outputs(model, ids)
    with pytest.raises(RuntimeError, match="boom"), _vec([0, 2]).apply(model, 5.0, positions="all"):
        assert _n_hooks(model) == 2
        raise RuntimeError("boom")
    assert _n_hooks(model) == 0
    _, after = _layer_outputs(model, ids)
    assert torch.equal(after, base)


def test_multi_layer_vector(model: torch.nn.Module, ids: torch.Tensor) -> None:
    v0 = torch.randn(D, generator=torch.Generator().manual_seed(5))
    v2 = torch.randn(D, generator=torch.Generator().manual_seed(6))
    vec = SteeringVector({2: v2, 0: v0}, "multi")
    assert vec.layers == [0, 2]
    base_layers, _ = _layer_outputs(model, ids)
    with vec.apply(model, 2.0, positions="all"):
        layers, _ = _layer_outputs(model, ids)
    torch.testing.assert_close(layers[0] - base_layers[0], (2.0 * v0).expand_as(layers[0]), atol=1e-5, rtol=0)
    assert not torch.equal(layers[1], base_layers[1])
    # Layer 2 gets its own vector on top of what layer 0's steering did upstream.
    with SteeringVector({0: v0}, "only0").apply(model, 2.0, positions="all"):
        only0, _ = _layer_outputs(model, ids)
    torch.testing.assert_close(layers[2] - only0[2], (2.0 * v2).expand_as(layers[2]), atol=1e-5, rtol=0)


def test_generated_mode_steers_only_the_last_prompt_token_in_prefill(model: torch.nn.Module, ids: torch.Tensor) -> None:
    vec = _vec(1)
    base_layers, base = _layer_outputs(model, ids)
    with vec.apply(model, 1.0, positions="generated"):
        gen_layers, gen = _layer_outputs(model, ids)
    with vec.apply(model, 1.0, positions="all"):
        _, all_ = _layer_outputs(model, ids)
    diff = gen_layers[1] - base_layers[1]
    assert torch.equal(gen_layers[1][:, :-1], base_layers[1][:, :-1])
    torch.testing.assert_close(diff[:, -1], (1.0 * vec.vectors[1]).expand_as(diff[:, -1]), atol=1e-5, rtol=0)
    # Causal attention: logits before the last position are untouched in "generated" mode.
    assert torch.equal(gen[:, :-1], base[:, :-1])
    assert not torch.equal(gen, all_)
    assert not torch.equal(all_[:, :-1], base[:, :-1])


def test_generated_mode_steers_every_decode_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """With the KV cache each decode step has sequence length 1: that token is steered."""
    vec = _vec(1)
    with torch.no_grad():
        past = model(input_ids=ids[:, :-1], use_cache=True).cache
    layers, _ = find_layers(model)
    seen: dict[str, torch.Tensor] = {}

    def rec(_m: torch.nn.Module, _i: object, out: object) -> None:
        seen["out"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    import copy

    with torch.no_grad():
        h = layers[1].register_forward_hook(rec)
        try:
            model(input_ids=ids[:, -1:], cache=copy.deepcopy(past), use_cache=True)
            base = seen["out"]
            with vec.apply(model, 1.0, positions="generated"):
                h.remove()
                h = layers[1].register_forward_hook(rec)
                model(input_ids=ids[:, -1:], cache=copy.deepcopy(past), use_cache=True)
        finally:
            h.remove()
    torch.testing.assert_close(seen["out"] - base, vec.vectors[1].expand_as(base), atol=1e-5, rtol=0)


def test_start_index_tensor_changes_only_positions_from_start(model: torch.nn.Module, ids: torch.Tensor) -> None:
    vec = _vec(1)
    start = torch.tensor([2, 5])
    base_layers, base = _layer_outputs(model, ids)
    with vec.apply(model, 1.0, positions=start):
        layers, logits = _layer_outputs(model, ids)
    for row, s in enumerate(start.tolist()):
        assert torch.equal(layers[1][row, :s], base_layers[1][row, :s])
        assert torch.equal(logits[row, :s], base[row, :s])
        d = layers[1][row, s:] - base_layers[1][row, s:]
        torch.testing.assert_close(d, vec.vectors[1].expand_as(d), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rows"), vec.apply(model, 1.0, positions=torch.tensor([1, 2, 3])):
        model(input_ids=ids)
    assert _n_hooks(model) == 0


def test_hooks_do_not_act_in_other_threads(model: torch.nn.Module, ids: torch.Tensor) -> None:
    _, base = _layer_outputs(model, ids)
    got: list[torch.Tensor] = []
    with _vec(1).apply(model, 10.0, positions="all"):
        t = threading.Thread(target=lambda: got.append(_layer_outputs(model, ids)[1]))
        t.start()
        t.join()
        _, here = _layer_outputs(model, ids)
    assert torch.equal(got[0], base)
    assert not torch.equal(here, base)


def test_invalid_inputs_fail_clearly(model: torch.nn.Module) -> None:
    n = len(find_layers(model)[0])
    with pytest.raises(IndexError, match="layers 0.."), _vec(n).apply(model, 1.0):
        pass
    with pytest.raises(ValueError, match="positions"), _vec(0).apply(model, 1.0, positions="prompt"):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="NaN"):
        SteeringVector.from_array(np.array([1.0, np.nan]), 0, "bad")
    with pytest.raises(ValueError, match="same hidden size"):
        SteeringVector({0: torch.ones(3), 1: torch.ones(4)}, "bad")
    with pytest.raises(ValueError, match="non-negative"):
        SteeringVector({-1: torch.ones(3)}, "bad")
    with pytest.raises(ValueError, match="size"), SteeringVector.from_array(torch.ones(D + 1), 0, "x").apply(model, 1.0):
        model(input_ids=torch.zeros(1, 3, dtype=torch.long))
    assert _n_hooks(model) == 0


def test_vector_metadata_and_norm() -> None:
    vec = SteeringVector.from_array(np.array([3.0, 4.0]), [2, 5], "CAA", model_fingerprint="fp", dataset_hash="dh", n_train=20)
    assert vec.layers == [2, 5] and vec.d == 2
    assert vec.norm(2) == pytest.approx(5.0)
    assert vec.norm() == pytest.approx(np.sqrt(50.0))
    meta = json.loads(json.dumps(vec.to_dict()))
    assert meta["method"] == "CAA" and meta["layers"] == [2, 5] and meta["meta"] == {"n_train": 20}
    assert meta["model_fingerprint"] == "fp" and meta["dataset_hash"] == "dh"
    assert vec.vectors[2].dtype == torch.float32
    with pytest.raises(ValueError, match="name one"):
        vec.numpy()
    np.testing.assert_array_equal(vec.numpy(5), np.array([3.0, 4.0], dtype=np.float32))


def test_cosine_matrix() -> None:
    names, m = cosine_matrix({"x": np.array([1.0, 0.0]), "y": np.array([0.0, 2.0]), "xy": np.array([1.0, 1.0]),
                              "-x": np.array([-3.0, 0.0]), "zero": np.zeros(2),
                              "sv": SteeringVector.from_array(np.array([0.0, 5.0]), 3, "m")})
    assert names == ["x", "y", "xy", "-x", "zero", "sv"]
    assert m.shape == (6, 6)
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[0, 1] == pytest.approx(0.0) and m[0, 2] == pytest.approx(np.sqrt(0.5))
    assert m[0, 3] == pytest.approx(-1.0) and m[1, 5] == pytest.approx(1.0)
    assert m[4, 0] == 0.0 and np.isfinite(m).all()


# --------------------------------------------------------------------------------------------
# per-row steering (all side-by-side columns in one batch)


def _plain_add(model: torch.nn.Module, layer: int, delta: torch.Tensor) -> object:
    """An independent hook: add ``delta`` [B, d] to every position of ``layer``'s output."""
    def hook(_m: torch.nn.Module, _i: object, out: object) -> object:
        h = out[0] if isinstance(out, tuple) else out
        new = h + delta[:, None, :]
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return find_layers(model)[0][layer].register_forward_hook(hook)


def test_rows_with_different_vectors_never_leak(model: torch.nn.Module) -> None:
    """Row b's output at the steered layer changes by exactly alpha_b * v_b; the base row not at all,
    at any layer; a row whose vector sits at another layer is unchanged by this layer's hook."""
    from saas.steering import apply_rows

    ids = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(3))
    v1, v2, v0 = _vec(1, seed=11), _vec(1, seed=12), _vec(0, seed=13)
    rows = [(None, 0.0), (v1, 1.5), (v2, -2.0), (v0, 0.7)]
    base_layers, base = _layer_outputs(model, ids)
    with apply_rows(model, rows, positions="all"):
        assert _n_hooks(model) == 2  # layers 0 and 1
        layers, logits = _layer_outputs(model, ids)
    assert _n_hooks(model) == 0
    # the base row: bit-identical everywhere
    assert all(torch.equal(a[0], b[0]) for a, b in zip(layers, base_layers)) and torch.equal(logits[0], base[0])
    # rows 1, 2: nothing below layer 1 moves; at layer 1 exactly alpha_b * v_b is added
    for r, (vec, alpha) in ((1, rows[1]), (2, rows[2])):
        assert torch.equal(layers[0][r], base_layers[0][r])
        assert torch.equal(layers[1][r], base_layers[1][r] + alpha * vec.vectors[1])
        torch.testing.assert_close(layers[1][r] - base_layers[1][r], (alpha * vec.vectors[1]).expand(6, D), atol=1e-5, rtol=0)
    # row 3 is steered at layer 0 only; compare with a plain hook that adds its delta alone
    delta0 = torch.zeros(4, D)
    delta0[3] = 0.7 * v0.vectors[0]
    h = _plain_add(model, 0, delta0)
    try:
        ref_layers, ref_logits = _layer_outputs(model, ids)
    finally:
        h.remove()
    assert torch.equal(layers[0][3], ref_layers[0][3])
    torch.testing.assert_close(layers[1][3], ref_layers[1][3], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits[3], ref_logits[3], atol=1e-5, rtol=0)


def test_per_row_equals_single_vector_per_row(model: torch.nn.Module) -> None:
    """Each row of a per-row batch equals that row steered alone with the single-vector API."""
    from saas.steering import apply_rows

    ids = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(4))
    rows = [(_vec(1, seed=21), 1.0), (None, 0.0), (_vec([0, 2], seed=22), -0.5)]
    for positions in ("generated", "all", torch.tensor([1, 3, 4])):
        with apply_rows(model, rows, positions=positions):
            _, batched = _layer_outputs(model, ids)
        for r, (vec, alpha) in enumerate(rows):
            ctx = vec.apply(model, alpha, positions=positions[r : r + 1] if isinstance(positions, torch.Tensor) else positions) \
                if vec is not None else torch.no_grad()
            with ctx:
                _, alone = _layer_outputs(model, ids[r : r + 1])
            torch.testing.assert_close(batched[r], alone[0], atol=1e-5, rtol=0)


def test_per_row_checks_and_threads(model: torch.nn.Module, ids: torch.Tensor) -> None:
    from saas.steering import apply_rows, row_deltas

    deltas = row_deltas([(None, 0.0), (_vec(1), 2.0), (_vec(1), 0.0)])
    assert list(deltas) == [1] and deltas[1].shape == (3, D)
    assert torch.equal(deltas[1][0], torch.zeros(D)) and torch.equal(deltas[1][2], torch.zeros(D))
    assert row_deltas([(None, 0.0)]) == {}
    with pytest.raises(ValueError, match="rows"), apply_rows(model, [(_vec(1), 1.0)] * 3, positions="all"):
        model(input_ids=ids)  # the batch has 2 rows
    with pytest.raises(ValueError, match="hidden sizes"):
        row_deltas([(_vec(1), 1.0), (SteeringVector.from_array(torch.ones(D + 1), 1, "x"), 1.0)])
    _, base = _layer_outputs(model, ids)
    got: list[torch.Tensor] = []
    with apply_rows(model, [(_vec(1), 10.0), (_vec(1), 10.0)], positions="all"):
        t = threading.Thread(target=lambda: got.append(_layer_outputs(model, ids)[1]))
        t.start()
        t.join()
    assert torch.equal(got[0], base)
    assert _n_hooks(model) == 0


def test_match_norms_keeps_directions_and_takes_the_reference_norm_per_layer() -> None:
    from saas.steering import match_norms

    rng = np.random.default_rng(0)
    caa = SteeringVector({3: rng.normal(size=8), 5: rng.normal(size=8)}, "caa")
    long = SteeringVector({3: 10 * rng.normal(size=8), 5: 0.1 * rng.normal(size=8)}, "saas")
    matched = match_norms({"caa": caa, "saas": long})
    assert matched["caa"] is caa
    for layer in (3, 5):
        a, b = matched["saas"].numpy(layer), long.numpy(layer)
        assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(caa.numpy(layer)), rel=1e-6)
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) == pytest.approx(1.0, abs=1e-6)
    assert matched["saas"].meta["norm_matched_to"] == "caa"
    with pytest.raises(KeyError, match="no 'caa' vector"):
        match_norms({"saas": long})
    with pytest.raises(ValueError, match="across layers"):
        match_norms({"caa": caa, "x": SteeringVector({3: np.ones(8)}, "x")})
    zero = SteeringVector({3: np.zeros(8), 5: np.ones(8)}, "z")
    with pytest.raises(ValueError, match="is zero at layer"):
        zero.scaled_to(caa)
    # In a comparison a zero vector is passed through (nothing to rescale), not an abort of the rest.
    both = match_norms({"caa": caa, "z": zero, "saas": long})
    assert both["z"] is zero and both["saas"].meta["norm_matched_to"] == "caa"
