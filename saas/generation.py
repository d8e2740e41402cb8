"""Text generation with and without a steering vector: batched, streamed, side by side.

Every prompt is wrapped in the model's chat template (:func:`saas.prompts.prompt_text`) and
batched with left padding. Fair comparisons: the global torch RNG is seeded with the same seed
before each batch of every call (``seed + batch number``), so two methods sampled with the same
seed draw from the same random stream; greedy decoding (the default) needs no seed at all.

Steering uses :meth:`saas.steering.SteeringVector.apply` around the whole ``generate`` call; the
default position mode steers the last prompt token and every generated token (DESIGN.md Eq. 2).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from saas.models import LoadedModel
from saas.prompts import prompt_text
from saas.steering import Positions, SteeringVector


def _steering(lm: LoadedModel, vector: SteeringVector | None, alpha: float, positions: Positions) -> Any:
    if vector is None:
        return nullcontext()
    return vector.apply(lm, alpha, positions)


def _gen_kwargs(
    lm: LoadedModel, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
    min_new_tokens: int | None = None,
) -> dict[str, Any]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tok = lm.tokenizer
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        "use_cache": True,  # the "generated" position mode relies on KV-cached decode steps
    }
    if min_new_tokens:
        kw["min_new_tokens"] = min_new_tokens
    if do_sample:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        kw.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        # Neutralise sampling settings a model's generation_config may carry.
        kw.update(temperature=None, top_p=None, top_k=None)
    return kw


def _encode_batch(lm: LoadedModel, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    tok = lm.tokenizer
    texts = [prompt_text(tok, p) for p in prompts]
    # Chat templates carry their own special tokens; plain models get the tokenizer's own.
    add_special = not getattr(tok, "chat_template", None)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
    finally:
        tok.padding_side = side
    return {"input_ids": enc["input_ids"].to(lm.device), "attention_mask": enc["attention_mask"].to(lm.device)}


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    prompts: str | Sequence[str],
    *,
    vector: SteeringVector | None = None,
    alpha: float = 0.0,
    max_new_tokens: int = 60,
    do_sample: bool = False,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    positions: Positions = "generated",
    batch_size: int = 8,
    min_new_tokens: int | None = None,
) -> list[str]:
    """Generate a reply to each prompt, optionally steered.

    Args:
        lm: the loaded model.
        prompts: user turns (one string or a list); each is wrapped in the chat template.
        vector: steering vector, or ``None`` for the base model.
        alpha: steering multiplier (Eq. 2).
        max_new_tokens: new tokens per prompt.
        do_sample: ``False`` = greedy; ``True`` = temperature + nucleus sampling.
        temperature, top_p: sampling settings (ignored when greedy).
        seed: ``torch.manual_seed(seed + k)`` before batch ``k``; the same for every method.
        positions: steering position mode (see :mod:`saas.steering`).
        batch_size: prompts per ``generate`` call.
        min_new_tokens: force at least this many new tokens (benchmarks).

    Returns:
        The new text of each prompt (special tokens removed, prompt not included), in order.
    """
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kw = _gen_kwargs(lm, max_new_tokens, do_sample, temperature, top_p, min_new_tokens)
    out: list[str] = []
    for k, start in enumerate(range(0, len(items), batch_size)):
        enc = _encode_batch(lm, items[start : start + batch_size])
        torch.manual_seed(seed + k)
        with _steering(lm, vector, alpha, positions):
            ids = lm.model.generate(**enc, **kw)
        new = ids[:, enc["input_ids"].shape[1] :]
        out.extend(lm.tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def stream_generate(
    lm: LoadedModel,
    prompt: str,
    *,
    vector: SteeringVector | None = None,
    alpha: float = 0.0,
    max_new_tokens: int = 60,
    do_sample: bool = False,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    positions: Positions = "generated",
    timeout: float | None = 120.0,
) -> Iterator[str]:
    """Generate one reply and yield its text piece by piece as it is produced.

    ``generate`` runs in a worker thread with a ``TextIteratorStreamer``; the steering hooks are
    entered INSIDE that thread around the whole ``generate`` call (the hooks only act in the
    thread that installed them, see :mod:`saas.steering`). Closing the iterator early stops the
    generation at its next token and waits for the thread, so no hook outlives the iterator.
    Joining all pieces gives the same text as :func:`generate` with the same arguments.

    Raises:
        Whatever ``generate`` raised in the worker thread, once the stream has ended.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class StopWhenClosed(StoppingCriteria):
        """Fires once the consumer has closed the iterator."""

        def __init__(self) -> None:
            self.event = threading.Event()

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)

    kw = _gen_kwargs(lm, max_new_tokens, do_sample, temperature, top_p)
    enc = _encode_batch(lm, [prompt])
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
    stop = StopWhenClosed()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            torch.manual_seed(seed)
            with torch.inference_mode(), _steering(lm, vector, alpha, positions):
                lm.model.generate(**enc, **kw, streamer=streamer, stopping_criteria=StoppingCriteriaList([stop]))
        except BaseException as exc:  # surfaced to the consumer below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, name="saas-stream-generate", daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        stop.event.set()
        thread.join()
    if errors:
        raise errors[0]


def generate_side_by_side(
    lm: LoadedModel,
    prompt: str,
    vectors: dict[str, SteeringVector | None],
    alpha: float,
    **kw: Any,
) -> dict[str, str]:
    """The reply to one prompt under each named vector (``None`` = unsteered), same seed for all.

    Args:
        vectors: ``{name: vector or None}``, e.g. ``{"base": None, "CAA": caa, "SAAS": saas}``.
        alpha: the multiplier used for every vector.
        **kw: passed to :func:`generate` (``max_new_tokens``, ``do_sample``, ``seed``, ...).
    """
    return {name: generate(lm, [prompt], vector=vec, alpha=alpha, **kw)[0] for name, vec in vectors.items()}
