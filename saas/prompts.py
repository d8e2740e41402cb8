"""Turning an instance into token ids, and the one rule for where an activation is read.

Text layout. For a chat model the prompt q is the user turn of the model's chat template, with the
generation prompt appended, and the answer is placed at the start of the assistant turn (the turn
is left open: no end-of-turn token follows the answer). Models without a chat template get
``"User: {q}\\nAssistant: {answer}"``.

Read position (:data:`READ_RULE`). The activation of a text is read at the answer's last meaningful
token:

- an A/B label such as ``"(A)"`` -> the letter token (``A``), CAA's convention; the closing
  parenthesis carries no information about the choice;
- a single word such as ``"Yes"`` -> that word's (last) token;
- a sentence -> its last token.

Everything that reads activations or answer probabilities goes through :func:`encode`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

READ_RULE = "answer-last-meaningful-token/v1"
PLAIN_TEMPLATE = "User: {prompt}\nAssistant:"
PLAIN_SYSTEM = "System: {system}\n"
_LABEL_RE = re.compile(r"^\(?[A-Za-z]\)?$")


@dataclass(frozen=True)
class Encoded:
    """Token ids of ``prompt || answer`` and the positions that matter.

    Attributes:
        ids: All token ids (prompt then answer), no padding.
        answer_start: Index of the first answer token in ``ids``.
        read_index: Index of the token whose activation is read (see module doc).
    """

    ids: list[int]
    answer_start: int
    read_index: int

    @property
    def prompt_len(self) -> int:
        return self.answer_start


def is_label(answer: str) -> bool:
    """True for A/B-style labels like ``"(A)"`` or ``"B"``."""
    return bool(_LABEL_RE.match(answer.strip()))


def prompt_text(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The prompt as the model sees it, ready for the answer (chat template when there is one).

    Args:
        tokenizer: the model's tokenizer.
        prompt: the user turn.
        system: an optional system message. ``None`` leaves the template's own behaviour (SmolLM2's
            template then inserts its default system message). A template that rejects the system
            role gets the message prepended to the user turn instead; models without a chat
            template get a ``"System: ..."`` line before ``"User: ..."``.
    """
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        if system is None:
            return str(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False))
        try:
            return str(tokenizer.apply_chat_template([{"role": "system", "content": system}, *user],
                                                     add_generation_prompt=True, tokenize=False))
        except Exception:  # e.g. jinja2 TemplateError "System role not supported" (Gemma)
            merged = [{"role": "user", "content": f"{system}\n\n{prompt}"}]
            return str(tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False))
    head = PLAIN_SYSTEM.format(system=system) if system is not None else ""
    return head + PLAIN_TEMPLATE.format(prompt=prompt)


class BehaviourCard(Protocol):
    """What a prompted baseline needs of a behaviour (:class:`saas.data.BehaviourDataset` has it)."""

    name: str
    description: str
    negative_description: str


def prompted_system_prompt(card: BehaviourCard) -> str:
    """The system prompt of the *prompted* baseline, built from the behaviour card alone.

    ``"Respond in a way that shows <name>: <description>"``, followed by ``" Do not: <negative
    description>"`` when the card has one (DESIGN.md section 5, "Prompted baseline"). A pure function
    of ``card.name``, ``card.description`` and ``card.negative_description``.
    """
    name = " ".join(str(card.name).replace("_", " ").split()) or "the behaviour"
    text = f"Respond in a way that shows {name}: {' '.join(str(card.description).split())}".rstrip()
    negative = " ".join(str(getattr(card, "negative_description", "") or "").split())
    if negative:
        if text[-1:] not in ".!?":
            text += "."
        text += f" Do not: {negative}"
    return text


def join_answer(tokenizer: Any, prefix: str, answer: str) -> str:
    """``prefix`` (a :func:`prompt_text`) followed by ``answer``, as :func:`encode` tokenizes it."""
    if getattr(tokenizer, "chat_template", None) or answer[:1].isspace() or not answer:
        return prefix + answer
    return prefix + " " + answer


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    # Chat templates already contain their special tokens; plain models get the tokenizer's own.
    add_special = not getattr(tokenizer, "chat_template", None)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def read_index(tokenizer: Any, ids: list[int], answer_start: int, answer: str) -> int:
    """Index of the read token for ``answer`` occupying ``ids[answer_start:]`` (see module doc)."""
    last = len(ids) - 1
    if answer_start > last:
        raise ValueError(f"answer {answer!r} produced no tokens")
    if is_label(answer):
        for k in range(last, answer_start - 1, -1):
            if any(ch.isalnum() for ch in tokenizer.decode([ids[k]])):
                return k
    return last


def encode(tokenizer: Any, prompt: str, answer: str) -> Encoded:
    """Tokenize ``prompt || answer`` and locate the answer and the read token.

    If the tokenizer merges tokens across the prompt/answer boundary, the answer starts at the
    first token where the joint tokenization departs from the prompt's own.
    """
    prefix = prompt_text(tokenizer, prompt)
    prefix_ids = _tokenize(tokenizer, prefix)
    ids = _tokenize(tokenizer, join_answer(tokenizer, prefix, answer))
    start = 0
    for a, b in zip(prefix_ids, ids):
        if a != b:
            break
        start += 1
    start = min(start, len(prefix_ids))
    return Encoded(ids=ids, answer_start=start, read_index=read_index(tokenizer, ids, start, answer))


def template_signature(tokenizer: Any) -> str:
    """What changes the text layout (part of activation cache keys)."""
    return str(getattr(tokenizer, "chat_template", None) or PLAIN_TEMPLATE) + "|" + READ_RULE
