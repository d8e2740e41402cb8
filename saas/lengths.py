"""Token-length checks of every pair, before any forward pass.

A pair whose prompt + answer does not fit the model's context (or a configured limit) would either
crash deep inside a forward pass or run for minutes on a text nobody meant to send (a 5 MB line
once ran ``saas extract`` for more than five minutes). :func:`check_lengths` measures every pair in
the model's own layout (:func:`saas.prompts.encode`: the chat template with the answer) and

- raises :class:`saas.data.DatasetError` naming the file, line and field of the first pair that is
  too long, with its token count and the limit; or
- when the user asks (``max_prompt_tokens``, the CLI's ``--max-prompt-tokens``), truncates each
  longer prompt to its LAST ``max_prompt_tokens`` tokens (the end of a prompt is where the question
  and the A/B options sit) and reports how many pairs it truncated.

Speed: the tokenizer's longest token spans at most ``L`` characters, so a text of ``c`` characters
has at least ``c / L`` tokens. A text whose lower bound is already over the limit fails without
being tokenized at all; only texts that might fit are tokenized, and those are short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from saas.data import BehaviourDataset, DatasetError, Instance
from saas.prompts import encode

#: Upper bound used when a tokenizer's vocabulary cannot be read.
_FALLBACK_TOKEN_CHARS = 128
#: Model configs sometimes carry absurd context lengths (1e30 "no limit" sentinels): cap the default.
_MAX_SANE_CONTEXT = 1_000_000

_PROMPT_FIELD = {"persona": "question", "caa": "question", "generic": "prompt"}
_ANSWER_FIELD = {"persona": ("answer_matching_behavior", "answer_not_matching_behavior"),
                 "caa": ("answer_matching_behavior", "answer_not_matching_behavior"),
                 "generic": ("positive", "negative")}


@dataclass(frozen=True)
class LengthReport:
    """What :func:`check_lengths` found.

    Attributes:
        limit: The largest prompt + answer allowed, in tokens.
        longest: The longest prompt + answer after any truncation, in tokens.
        truncated: How many pairs had their prompt truncated (0 unless asked).
        max_prompt_tokens: The truncation length asked for (None: no truncation).
    """

    limit: int
    longest: int
    truncated: int
    max_prompt_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "longest": self.longest, "truncated": self.truncated,
                "max_prompt_tokens": self.max_prompt_tokens}


def context_length(model: Any, tokenizer: Any = None, default: int | None = 4096) -> int | None:
    """The model's context length in tokens (``max_position_embeddings`` or the like), else the
    tokenizer's ``model_max_length`` when it is a real number, else ``default``."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and 0 < value <= _MAX_SANE_CONTEXT:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value <= _MAX_SANE_CONTEXT:
        return value
    return default


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of this tokenizer can stand for (an upper bound)."""
    try:
        vocab = tokenizer.get_vocab()
        longest = max((len(t) for t in vocab), default=0)
    except Exception:  # a tokenizer without a readable vocabulary: stay safe
        return _FALLBACK_TOKEN_CHARS
    return max(4, longest)


def _where(inst: Instance, fallback_path: str) -> tuple[str, int | None, str, tuple[str, str]]:
    fmt = str(inst.meta.get("format", "generic"))
    return (str(inst.meta.get("source") or fallback_path), inst.meta.get("line"), _PROMPT_FIELD.get(fmt, "prompt"),
            _ANSWER_FIELD.get(fmt, ("positive", "negative")))


def _truncate_prompt(tokenizer: Any, prompt: str, keep: int, per_token: int) -> tuple[str, bool]:
    """The prompt's last ``keep`` tokens (as text) and whether anything was cut.

    Only the last ``(keep + 1) * per_token`` characters are tokenized: ``keep`` tokens never span
    more, so a megabyte prompt costs no more than a short one."""
    tail = prompt[-(keep + 1) * per_token:]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if len(ids) <= keep and len(tail) == len(prompt):
        return prompt, False
    return tokenizer.decode(ids[-keep:], skip_special_tokens=False).lstrip(), True


def check_lengths(
    lm_or_tokenizer: Any,
    dataset: BehaviourDataset,
    *,
    max_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
) -> tuple[BehaviourDataset, LengthReport]:
    """Check (and, if asked, truncate) every pair against the context length; see the module doc.

    Args:
        lm_or_tokenizer: A :class:`saas.models.LoadedModel` (its context length is the default
            limit) or a bare tokenizer (then ``max_tokens`` or the tokenizer's own maximum).
        dataset: The pairs.
        max_tokens: The largest prompt + answer allowed, in tokens (default and upper bound: the
            model's context length).
        max_prompt_tokens: Truncate longer prompts to their last this-many tokens (None: never).

    Returns:
        ``(dataset, report)``: the dataset itself when nothing was truncated, else a copy with
        the truncated prompts (each such instance's meta records ``truncated_prompt_tokens``).

    Raises:
        DatasetError: a pair is too long (file, line, field, its token count and the limit).
        ValueError: a non-positive ``max_tokens`` or ``max_prompt_tokens``.
    """
    tokenizer = getattr(lm_or_tokenizer, "tokenizer", lm_or_tokenizer)
    model = getattr(lm_or_tokenizer, "model", None)
    context = context_length(model, tokenizer, default=None if max_tokens is not None else 4096)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive number of tokens, got {max_tokens}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be a positive number of tokens, got {max_prompt_tokens}")
    limit = min(c for c in (context, max_tokens) if c is not None)
    per_token = longest_token_chars(tokenizer)
    source = dataset.source.removeprefix("upload:")
    out: list[Instance] = []
    truncated = longest = 0
    for inst in dataset.instances:
        path, line, prompt_field, answer_fields = _where(inst, source)
        prompt = inst.prompt
        cut = False
        if max_prompt_tokens is not None and len(prompt.encode("utf-8")) > max_prompt_tokens:
            prompt, cut = _truncate_prompt(tokenizer, prompt, max_prompt_tokens, per_token)
        answers = (inst.positive, inst.negative, *inst.options)
        for k, answer in enumerate(answers):
            fld = answer_fields[k] if k < 2 else prompt_field
            bound = (len(prompt) + len(answer)) // per_token
            if bound > limit:  # too long for sure: no need to tokenize megabytes
                long_field = prompt_field if len(prompt) >= len(answer) else fld
                raise DatasetError(
                    f"prompt + answer is at least {bound:,} tokens ({len(prompt) + len(answer):,} characters), over "
                    f"the limit of {limit:,} tokens ({'the model context' if limit == context else 'max_tokens'}); "
                    "shorten it, or pass --max-prompt-tokens N to truncate long prompts",
                    path=path, line=line, field=long_field)
            n = len(encode(tokenizer, prompt, answer).ids)
            if n > limit:
                long_field = prompt_field if len(prompt) >= len(answer) else fld
                raise DatasetError(
                    f"prompt + answer is {n:,} tokens, over the limit of {limit:,} tokens "
                    f"({'the model context' if limit == context else 'max_tokens'}); shorten it, or pass "
                    "--max-prompt-tokens N to truncate long prompts", path=path, line=line, field=long_field)
            longest = max(longest, n)
        if cut:
            truncated += 1
            meta = dict(inst.meta, truncated_prompt_tokens=max_prompt_tokens)
            out.append(replace(inst, prompt=prompt, meta=meta))
        else:
            out.append(inst)
    report = LengthReport(limit, longest, truncated, max_prompt_tokens)
    return (replace(dataset, instances=out) if truncated else dataset), report


def lengths_of(tokenizer: Any, instances: Sequence[Instance]) -> list[int]:
    """prompt + longest answer in tokens, per instance (for summaries)."""
    return [max(len(encode(tokenizer, i.prompt, a).ids) for a in (i.positive, i.negative)) for i in instances]
