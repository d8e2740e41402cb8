"""Generation on the embedded model: seeding, steering, streaming, side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saas.generation import generate, generate_side_by_side, stream_generate
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
