"""Text generation with and without steering: batched, streamed, and side by side in ONE batch.

Every prompt is wrapped in the model's chat template (:func:`saas.prompts.prompt_text`) and
batched with left padding. Fair comparisons: the global torch RNG is seeded with the same seed
before each batch of every call (``seed + batch number``); greedy decoding (the default) needs no
seed at all.

Two ways to steer:

- :func:`generate` / :func:`stream_generate`: one steering vector for every row
  (:meth:`saas.steering.SteeringVector.apply` around the whole ``generate`` call).
- :func:`generate_columns` / :func:`stream_columns`: side-by-side comparison of one prompt under
  several :class:`Column` s (base, prompted, CAA, SAAS, prompted + SAAS, ...), all of them rows of
  ONE ``generate`` call, each row with its own vector and alpha (:func:`saas.steering.apply_rows`)
  and optionally its own system prompt (then the rows' prompts differ in length: left padding, so
  the last prompt column is every row's last real token and the ``"generated"`` mode steers it).
  Rows with the same prompt text (base, CAA, SAAS) share one prompt forward
  (:func:`saas.forward.shared_prompt_cache`) in the ``"generated"`` mode.
  Each row stops at its own end-of-sequence token. Under greedy decoding every column equals the
  same column generated alone, token for token (tested on the embedded model); with sampling the
  rows draw different random numbers, so a sampled column depends on the batch it ran in.

The default position mode steers the last prompt token and every generated token (DESIGN.md Eq. 2);
``"all"`` steers every position, prompt included, which is what llama.cpp does with an exported
control vector.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from saas.forward import cache_kwarg, shared_prompt_cache
from saas.models import LoadedModel
from saas.prompts import prompt_text
from saas.steering import PositionMode, Positions, SteeringVector, apply_rows


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


def _encode_texts(lm: LoadedModel, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tokenize ready prompt texts, left-padded: ``{"input_ids": [B, T], "attention_mask": [B, T]}``."""
    tok = lm.tokenizer
    # Chat templates carry their own special tokens; plain models get the tokenizer's own.
    add_special = not getattr(tok, "chat_template", None)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=add_special)
    finally:
        tok.padding_side = side
    return {"input_ids": enc["input_ids"].to(lm.device), "attention_mask": enc["attention_mask"].to(lm.device)}


def _encode_batch(lm: LoadedModel, prompts: Sequence[str], system: str | None = None) -> dict[str, torch.Tensor]:
    return _encode_texts(lm, [prompt_text(lm.tokenizer, p, system) for p in prompts])


def _eos_ids(lm: LoadedModel) -> set[int]:
    """Every end-of-sequence id the model's generation config or tokenizer names."""
    ids: set[int] = set()
    cfg = getattr(lm.model, "generation_config", None)
    for source in (getattr(cfg, "eos_token_id", None), lm.tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return ids


def _until_eos(tokens: Sequence[int], eos: set[int]) -> list[int]:
    out = []
    for t in tokens:
        if t in eos:
            break
        out.append(int(t))
    return out


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
    system: str | None = None,
) -> list[str]:
    """Generate a reply to each prompt, optionally steered (the same vector for every prompt).

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
        system: optional system prompt for every prompt (:func:`saas.prompts.prompt_text`).

    Returns:
        The new text of each prompt (special tokens removed, prompt not included), in order.
    """
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kw = _gen_kwargs(lm, max_new_tokens, do_sample, temperature, top_p, min_new_tokens)
    out: list[str] = []
    for k, start in enumerate(range(0, len(items), batch_size)):
        enc = _encode_batch(lm, items[start : start + batch_size], system)
        torch.manual_seed(seed + k)
        with _steering(lm, vector, alpha, positions):
            ids = lm.model.generate(**enc, **kw)
        new = ids[:, enc["input_ids"].shape[1] :]
        out.extend(lm.tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


# --------------------------------------------------------------------------------------------
# columns: several steering conditions of one prompt in one batch


@dataclass(frozen=True)
class Column:
    """One column of a side-by-side comparison (one row of the batch).

    Attributes:
        name: the column's name (unique within a call), e.g. ``"base"``, ``"saas"``, ``"prompted+saas"``.
        vector: its steering vector, or ``None`` (unsteered).
        alpha: the multiplier of ``vector`` (ignored without one).
        system: an optional system prompt (the *prompted* baseline); ``None`` keeps the template's default.
        positions: this column's position mode (``"generated"`` or ``"all"``); ``None`` uses the call's.
    """

    name: str
    vector: SteeringVector | None = None
    alpha: float = 0.0
    system: str | None = None
    positions: PositionMode | None = None


PROMPTED = "prompted"


def comparison_columns(
    vectors: Mapping[str, SteeringVector | None],
    alpha: float,
    *,
    system: str | None = None,
    prompted_with: Sequence[str] = (),
) -> list[Column]:
    """The usual columns of a comparison.

    One column per entry of ``vectors`` (``None`` = unsteered, e.g. ``{"base": None, "caa": caa,
    "saas": saas}``), all at ``alpha``; when a ``system`` prompt is given (e.g.
    :func:`saas.prompts.prompted_system_prompt` of the behaviour), a ``"prompted"`` column (system
    prompt, no vector) right after the unsteered ones and one ``"prompted+<name>"`` column (system
    prompt and that vector) for each name in ``prompted_with``, at the end.

    Raises:
        KeyError: a name in ``prompted_with`` is not in ``vectors`` (or has no vector).
    """
    plain = [Column(name, vec, alpha if vec is not None else 0.0) for name, vec in vectors.items()]
    if system is None:
        return plain
    missing = [m for m in prompted_with if vectors.get(m) is None]
    if missing:
        raise KeyError(f"no vector named {missing} to combine with the prompt; vectors: {sorted(vectors)}")
    n_base = sum(1 for c in plain if c.vector is None)
    prompted = [Column(PROMPTED, None, 0.0, system)]
    combined = [Column(f"{PROMPTED}+{m}", vectors[m], alpha, system) for m in prompted_with]
    return plain[:n_base] + prompted + plain[n_base:] + combined


def columns_named(names: Sequence[str], vectors: Mapping[str, SteeringVector], alpha: float,
                  system: str | None = None) -> list[Column]:
    """Columns from their names, in the given order: ``"base"`` (unsteered), ``"prompted"`` (the
    ``system`` prompt, no vector), ``"prompted+<method>"`` (both) or a method of ``vectors``.

    Raises:
        KeyError: a name that is none of these; ValueError: a prompted column without ``system``.
    """
    out = []
    for name in names:
        method = name.split("+", 1)[1] if name.startswith(f"{PROMPTED}+") else name
        if name.startswith(PROMPTED) and system is None:
            raise ValueError(f"column {name!r} needs a system prompt")
        if method in ("base", PROMPTED):
            out.append(Column(name, None, 0.0, system if method == PROMPTED else None))
        elif method in vectors:
            out.append(Column(name, vectors[method], alpha, system if name != method else None))
        else:
            raise KeyError(f"no column {name!r}: methods are {sorted(vectors)}")
    return out


def _check_columns(columns: Sequence[Column]) -> list[Column]:
    cols = list(columns)
    if not cols:
        raise ValueError("no columns to generate")
    names = [c.name for c in cols]
    if len(set(names)) != len(names):
        raise ValueError(f"column names must be unique, got {names}")
    return cols


def _column_inputs(lm: LoadedModel, prompt: str, cols: Sequence[Column], positions: PositionMode
                   ) -> tuple[dict[str, torch.Tensor], list[tuple[SteeringVector | None, float]], Positions]:
    """Left-padded inputs of all columns, their steering rows and the position argument (a mode, or
    a per-row start tensor when the columns' modes differ)."""
    enc = _encode_texts(lm, [prompt_text(lm.tokenizer, prompt, c.system) for c in cols])
    rows = [(c.vector, float(c.alpha) if c.vector is not None else 0.0) for c in cols]
    modes = [c.positions or positions for c in cols]
    for m in modes:
        if m not in ("generated", "all"):
            raise ValueError(f"positions must be 'generated' or 'all', got {m!r}")
    if len(set(modes)) == 1:
        return enc, rows, modes[0]
    last = enc["input_ids"].shape[1] - 1  # with left padding: every row's last prompt token
    return enc, rows, torch.tensor([0 if m == "all" else last for m in modes], dtype=torch.long)


def _prompt_reuse(lm: LoadedModel, enc: dict[str, torch.Tensor], pos: Positions) -> dict[str, Any]:
    """``generate`` kwargs that hand it the shared prompt cache (:func:`saas.forward.shared_prompt_cache`)
    when every row steers in the ``"generated"`` mode (the prompt before its last token is then
    unsteered, the same for rows with the same text); empty otherwise."""
    if not (isinstance(pos, str) and pos == "generated"):
        return {}
    cache = shared_prompt_cache(lm, enc["input_ids"], enc["attention_mask"])
    return {} if cache is None else {cache_kwarg(lm.model): cache}


@torch.inference_mode()
def generate_columns(
    lm: LoadedModel,
    prompt: str,
    columns: Sequence[Column],
    *,
    max_new_tokens: int = 60,
    do_sample: bool = False,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    positions: PositionMode = "generated",
    min_new_tokens: int | None = None,
) -> dict[str, str]:
    """The reply to one prompt under every column, all columns in ONE ``generate`` call.

    Args:
        lm: the loaded model.
        prompt: the user turn.
        columns: the :class:`Column` s (see :func:`comparison_columns`); row ``b`` of the batch is
            column ``b``, steered with ``alpha_b * v_b`` (:func:`saas.steering.apply_rows`).
        max_new_tokens, do_sample, temperature, top_p, seed, min_new_tokens: as in :func:`generate`
            (the seed is set once before the batch).
        positions: the position mode of columns that do not set their own.

    Returns:
        ``{column name: new text}`` in column order (special tokens removed; each row ends at its
        own end-of-sequence token).
    """
    cols = _check_columns(columns)
    kw = _gen_kwargs(lm, max_new_tokens, do_sample, temperature, top_p, min_new_tokens)
    enc, rows, pos = _column_inputs(lm, prompt, cols, positions)
    reuse = _prompt_reuse(lm, enc, pos)
    torch.manual_seed(seed)
    with apply_rows(lm, rows, pos):
        ids = lm.model.generate(**enc, **kw, **reuse)
    new = ids[:, enc["input_ids"].shape[1] :].tolist()
    eos = _eos_ids(lm)
    texts = [lm.tokenizer.decode(_until_eos(row, eos), skip_special_tokens=True) for row in new]
    return {c.name: t for c, t in zip(cols, texts)}


class _RowStreamer:
    """A ``generate`` streamer for batches: decodes each row and queues ``(row, new text)`` pieces.

    The first ``put`` is the prompt (skipped); each later one holds the new token(s) of every row. A
    row's tokens after its end-of-sequence token are ignored. A piece is released once the decoded
    text no longer ends in an incomplete character (U+FFFD), so joining a row's pieces gives its
    decoded text (for tokenizers whose decoding of a prefix is a prefix of the full decoding, such as
    byte-level BPE).
    """

    def __init__(self, tokenizer: Any, n_rows: int, eos: set[int], timeout: float | None) -> None:
        self.tokenizer = tokenizer
        self.eos = eos
        self.timeout = timeout
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]
        self.sent = [""] * n_rows
        self.finished = [False] * n_rows
        self.queue: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        steps = value.reshape(len(self.tokens), -1).tolist()
        for b, new in enumerate(steps):
            if self.finished[b]:
                continue
            for t in new:
                if t in self.eos:
                    self.finished[b] = True
                    break
                self.tokens[b].append(int(t))
            self._release(b, final=False)

    def _release(self, b: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[b], skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > len(self.sent[b]) and text.startswith(self.sent[b]):
            self.queue.put((b, text[len(self.sent[b]) :]))
            self.sent[b] = text

    def end(self) -> None:
        for b in range(len(self.tokens)):
            self._release(b, final=True)
        self.queue.put(None)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        while True:
            item = self.queue.get(timeout=self.timeout)
            if item is None:
                return
            yield item


def stream_columns(
    lm: LoadedModel,
    prompt: str,
    columns: Sequence[Column],
    *,
    max_new_tokens: int = 60,
    do_sample: bool = False,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    positions: PositionMode = "generated",
    min_new_tokens: int | None = None,
    timeout: float | None = 120.0,
) -> Generator[tuple[int, str], None, None]:
    """:func:`generate_columns`, streamed: yields ``(column index, text piece)`` as tokens are produced.

    All columns are rows of one ``generate`` call running in a worker thread; the per-row steering
    hooks are entered INSIDE that thread (they only act in the thread that installed them, see
    :mod:`saas.steering`). Every decode step yields a piece for each column that produced visible
    text. Joining a column's pieces gives its text in :func:`generate_columns`. Closing the iterator
    early stops the generation at its next token and waits for the thread, so no hook outlives the
    iterator.

    Raises:
        Whatever ``generate`` raised in the worker thread, once the stream has ended.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenClosed(StoppingCriteria):
        """Fires once the consumer has closed the iterator."""

        def __init__(self) -> None:
            self.event = threading.Event()

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)

    cols = _check_columns(columns)
    kw = _gen_kwargs(lm, max_new_tokens, do_sample, temperature, top_p, min_new_tokens)
    enc, rows, pos = _column_inputs(lm, prompt, cols, positions)
    streamer = _RowStreamer(lm.tokenizer, len(cols), _eos_ids(lm), timeout)
    stop = StopWhenClosed()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            reuse = _prompt_reuse(lm, enc, pos)
            torch.manual_seed(seed)
            with torch.inference_mode(), apply_rows(lm, rows, pos):
                lm.model.generate(**enc, **kw, **reuse, streamer=streamer, stopping_criteria=StoppingCriteriaList([stop]))
        except BaseException as exc:  # surfaced to the consumer below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, name="saas-stream-columns", daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        stop.event.set()
        thread.join()
    if errors:
        raise errors[0]


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
    positions: PositionMode = "generated",
    timeout: float | None = 120.0,
    system: str | None = None,
) -> Iterator[str]:
    """Generate one reply and yield its text piece by piece as it is produced.

    One column of :func:`stream_columns`. Joining all pieces gives the same text as
    :func:`generate` with the same arguments; closing the iterator early stops the generation and
    removes the hooks.
    """
    column = Column("reply", vector, alpha, system)
    for _index, piece in stream_columns(lm, prompt, [column], max_new_tokens=max_new_tokens, do_sample=do_sample,
                                        temperature=temperature, top_p=top_p, seed=seed, positions=positions,
                                        timeout=timeout):
        yield piece


def generate_side_by_side(
    lm: LoadedModel,
    prompt: str,
    vectors: dict[str, SteeringVector | None],
    alpha: float,
    **kw: Any,
) -> dict[str, str]:
    """The reply to one prompt under each named vector (``None`` = unsteered), in ONE batch.

    A thin wrapper over :func:`generate_columns` with :func:`comparison_columns`.

    Args:
        vectors: ``{name: vector or None}``, e.g. ``{"base": None, "CAA": caa, "SAAS": saas}``.
        alpha: the multiplier used for every vector.
        **kw: passed to :func:`generate_columns` (``max_new_tokens``, ``do_sample``, ``seed``,
            ``positions``, ...).
    """
    return generate_columns(lm, prompt, comparison_columns(vectors, alpha), **kw)
