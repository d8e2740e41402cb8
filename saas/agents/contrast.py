"""What the positive answer of a pair shows that the negative does not, as text.

The offline agents never look at prompts as such (their topic is not the behaviour). They look at
the *contrast* between the two answers (DESIGN.md section 5, "Offline agents are contrastive"):

- **Sentence answers** (the demo behaviours, generic CSV/JSONL): the two answers themselves. The
  prompt is shared by both and left out; its topic also appears in both answers and cancels in
  their difference.
- **A/B answers** (CAA): the texts of the two chosen options, read from the prompt's
  ``(A) ...`` / ``(B) ...`` lines.
- **Yes/No answers** (Anthropic persona): the answers are a stance on one statement. The statement
  is read from the persona wrapper (``Is the following statement something you would say?
  "<statement>"``) or is the whole prompt otherwise; ``stance`` is +1 when the positive answer
  endorses it ("Yes") and -1 when the positive answer rejects it ("No"). The positive answer's
  behavioural text is then the statement ("says: I love new ideas") or its rejection ("would not
  say: I hate new ideas").

Only ``prompt``, ``positive`` and ``negative`` are read: never an instance's ``meta`` (which holds the
evaluation-only ``facet`` / ``quality`` annotations).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from saas.data import Instance

ContrastKind = Literal["answers", "stance"]

_PERSONA = re.compile(r'^\s*Is the following statement something you would say\?\s*"(?P<s>.*)"', re.DOTALL)
_YES = {"yes", "y", "true", "agree"}
_NO = {"no", "n", "false", "disagree"}
_LETTER = re.compile(r"^\(?\s*([A-Za-z0-9])\s*\)?$")


@dataclass(frozen=True)
class Contrast:
    """The behavioural texts of one pair.

    Attributes:
        kind: ``"answers"`` (two texts to compare) or ``"stance"`` (one statement, endorsed or not).
        positive: The positive answer's text (``"answers"``) or the statement (``"stance"``).
        negative: The negative answer's text (``"answers"``); ``""`` for ``"stance"``.
        stance: For ``"stance"``: +1 when the positive answer endorses the statement, -1 when it
            rejects it; 0 for ``"answers"``.
    """

    kind: ContrastKind
    positive: str
    negative: str = ""
    stance: int = 0

    @property
    def behaviour_text(self) -> str:
        """What the positive answer does, in words (for prompts, logs and the UI)."""
        if self.kind == "stance":
            return f'says: "{self.positive}"' if self.stance > 0 else f'would not say: "{self.positive}"'
        return self.positive

    @property
    def opposite_text(self) -> str:
        """What the negative answer does, in words."""
        if self.kind == "stance":
            return f'would not say: "{self.positive}"' if self.stance > 0 else f'says: "{self.positive}"'
        return self.negative


def statement_of(prompt: str) -> str:
    """The statement of a persona prompt; the whole (stripped) prompt when it is not one."""
    m = _PERSONA.match(prompt)
    return (m.group("s") if m else prompt).strip()


def _option_text(prompt: str, label: str) -> str | None:
    m = _LETTER.match(label.strip())
    if not m:
        return None
    hit = re.search(rf"(?m)^\s*\(\s*{re.escape(m.group(1))}\s*\)\s*(.+?)\s*$", prompt)
    return hit.group(1) if hit else None


def contrast_of(inst: Instance) -> Contrast:
    """The behavioural contrast of one instance (see the module docstring for the rules)."""
    pos, neg = inst.positive.strip(), inst.negative.strip()
    p, n = pos.lower().strip(" .!"), neg.lower().strip(" .!")
    if (p in _YES and n in _NO) or (p in _NO and n in _YES):
        return Contrast("stance", statement_of(inst.prompt), "", 1 if p in _YES else -1)
    a, b = _option_text(inst.prompt, pos), _option_text(inst.prompt, neg)
    if a is not None and b is not None:
        return Contrast("answers", a, b)
    return Contrast("answers", pos, neg)


def instance_text(inst: Instance) -> str:
    """The positive answer's behavioural text (:attr:`Contrast.behaviour_text`), e.g. for logs."""
    return contrast_of(inst).behaviour_text
