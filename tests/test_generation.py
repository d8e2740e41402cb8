"""Generation on the embedded model: seeding, steering, streaming, side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saas.generation import (
    Column,
    comparison_columns,
    generate,
    generate_columns,
    generate_side_by_side,
    stream_columns,
    stream_generate,
)
from saas.models import LoadedModel, load_model
from saas.steering import SteeringVector

pytestmark = pytest.mark.model

PROMPT = "My job interview is tomorrow. How do you think it will go?"
N = 12  # new tokens: enough to compare texts, cheap on a CPU


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model("default")


@pytest.fixture(scope="module")
def strong(lm: LoadedModel) -> SteeringVector:
    """A random direction with ~3x the norm of a CAA vector: it certainly changes the text."""
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    return SteeringVector.from_array(v / v.norm() * 60.0, 10, "random")


@pytest.fixture(scope="module")
def base_text(lm: LoadedModel) -> str:
    return generate(lm, [PROMPT], max_new_tokens=N)[0]


def _n_hooks(lm: LoadedModel) -> int:
    return sum(len(layer._forward_hooks) for layer in lm.layers)


def test_greedy_base_and_alpha_zero_agree(lm: LoadedModel, strong: SteeringVector, base_text: str) -> None:
    assert base_text.strip()
    assert generate(lm, PROMPT, vector=strong, alpha=0.0, max_new_tokens=N) == [base_text]


def test_steered_text_differs_at_large_alpha(lm: LoadedModel, strong: SteeringVector, base_text: str) -> None:
    steered = generate(lm, [PROMPT], vector=strong, alpha=1.0, max_new_tokens=N)[0]
    assert steered != base_text
    assert _n_hooks(lm) == 0


def test_same_seed_same_sampled_text(lm: LoadedModel) -> None:
    kw = {"max_new_tokens": N, "do_sample": True, "temperature": 1.0, "seed": 7}
    a = generate(lm, [PROMPT], **kw)
    b = generate(lm, [PROMPT], **kw)
    assert a == b and len(a) == 1


def test_streaming_matches_non_streaming_greedy(lm: LoadedModel, strong: SteeringVector, base_text: str) -> None:
    pieces = list(stream_generate(lm, PROMPT, max_new_tokens=N))
    assert len(pieces) >= 2 and "".join(pieces) == base_text
    # Steered streaming: the hooks must be active inside the generation thread.
    steered = generate(lm, [PROMPT], vector=strong, alpha=1.0, max_new_tokens=N)[0]
    assert "".join(stream_generate(lm, PROMPT, vector=strong, alpha=1.0, max_new_tokens=N)) == steered
    assert _n_hooks(lm) == 0


def test_closing_a_stream_early_removes_the_hooks(lm: LoadedModel, strong: SteeringVector) -> None:
    stream = stream_generate(lm, PROMPT, vector=strong, alpha=1.0, max_new_tokens=200)
    first = next(stream)
    assert first
    stream.close()  # stops the worker at its next token and joins it
    assert _n_hooks(lm) == 0


def test_side_by_side_uses_the_same_settings(lm: LoadedModel, strong: SteeringVector, base_text: str) -> None:
    out = generate_side_by_side(lm, PROMPT, {"base": None, "random": strong}, alpha=1.0, max_new_tokens=N)
    assert list(out) == ["base", "random"]
    assert out["base"] == base_text
    assert out["random"] != base_text


def test_batched_generation_returns_one_text_per_prompt(lm: LoadedModel) -> None:
    prompts = ["Hi!", PROMPT, "Name a colour."]
    out = generate(lm, prompts, max_new_tokens=4, batch_size=2)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    with pytest.raises(ValueError):
        generate(lm, prompts, max_new_tokens=0)
    assert np.all([_n_hooks(lm) == 0])


SYSTEM = "Respond in a way that shows optimism: expect a good outcome and point to reasons for hope."


@pytest.mark.parametrize("with_all", [False, True])
def test_batched_columns_equal_the_same_columns_generated_alone(lm: LoadedModel, strong: SteeringVector, with_all: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy: every column of one batch (different vectors, system prompts of other lengths, and a
    column steering every position, or not) equals that column generated alone with the single-vector
    API. Without an "all" column the rows that share a prompt share its forward (the prompt cache)."""
    import saas.generation as generation

    shared: list[bool] = []
    real = generation.shared_prompt_cache
    monkeypatch.setattr(generation, "shared_prompt_cache", lambda *a: shared.append((c := real(*a)) is not None) or c)
    cols = [Column("base"), Column("prompted", system=SYSTEM), Column("random", strong, 0.5),
            Column("prompted+random", strong, 0.5, SYSTEM), Column("random-neg", strong, -0.5)]
    if with_all:
        cols[-1] = Column("random-all", strong, 0.25, positions="all")
    batched = generate_columns(lm, PROMPT, cols, max_new_tokens=16)
    assert shared == ([] if with_all else [True])
    assert list(batched) == [c.name for c in cols]
    for c in cols:
        alone = generate(lm, [PROMPT], vector=c.vector, alpha=c.alpha, system=c.system,
                         positions=c.positions or "generated", max_new_tokens=16)[0]
        assert batched[c.name] == alone, c.name
    assert len(set(batched.values())) >= 4  # the columns really differ
    assert _n_hooks(lm) == 0


def test_stream_columns_streams_every_column_together(lm: LoadedModel, strong: SteeringVector) -> None:
    cols = [Column("base"), Column("random", strong, 0.5), Column("prompted", system=SYSTEM)]
    pieces = list(stream_columns(lm, PROMPT, cols, max_new_tokens=N))
    texts = generate_columns(lm, PROMPT, cols, max_new_tokens=N)
    assert {c.name: "".join(p for i, p in pieces if i == k) for k, c in enumerate(cols)} == texts
    first = {i: min(k for k, (j, _) in enumerate(pieces) if j == i) for i in range(3)}
    last = {i: max(k for k, (j, _) in enumerate(pieces) if j == i) for i in range(3)}
    assert all(first[i] < last[j] for i in range(3) for j in range(3))  # interleaved, not one after another
    stream = stream_columns(lm, PROMPT, cols, max_new_tokens=200)
    assert next(stream)
    stream.close()  # stops the worker at its next token and joins it
    assert _n_hooks(lm) == 0


def test_comparison_columns_order_and_prompted_columns(strong: SteeringVector) -> None:
    cols = comparison_columns({"base": None, "caa": strong, "saas": strong}, 1.5, system=SYSTEM, prompted_with=["saas"])
    assert [c.name for c in cols] == ["base", "prompted", "caa", "saas", "prompted+saas"]
    assert cols[1].system == SYSTEM and cols[1].vector is None
    assert cols[-1].system == SYSTEM and cols[-1].vector is strong and cols[-1].alpha == 1.5
    assert [c.name for c in comparison_columns({"base": None, "caa": strong}, 1.0)] == ["base", "caa"]
    with pytest.raises(KeyError):
        comparison_columns({"base": None}, 1.0, system=SYSTEM, prompted_with=["saas"])
    with pytest.raises(ValueError, match="unique"):
        generate_columns(None, PROMPT, [Column("a"), Column("a")])  # type: ignore[arg-type]


def test_columns_named_parses_the_page_names_in_order() -> None:
    from saas.generation import columns_named

    v = SteeringVector({3: np.ones(4)}, "saas")
    cols = columns_named(["prompted+saas", "base", "saas", "prompted"], {"saas": v}, 2.0, SYSTEM)
    assert [c.name for c in cols] == ["prompted+saas", "base", "saas", "prompted"]
    assert [(c.vector is v, c.alpha, c.system) for c in cols] == [
        (True, 2.0, SYSTEM), (False, 0.0, None), (True, 2.0, None), (False, 0.0, SYSTEM)]
    with pytest.raises(KeyError, match="no column 'caa'"):
        columns_named(["caa"], {"saas": v}, 1.0, SYSTEM)
    with pytest.raises(ValueError, match="needs a system prompt"):
        columns_named(["prompted"], {"saas": v}, 1.0)
