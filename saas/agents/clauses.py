"""Candidate sub-behaviours from the behaviour card's description: its clauses, as verb phrases.

A behaviour description usually lists what the positive answer does, e.g. "... the optimistic reply
expects a good outcome outright, points to concrete reasons for hope ..., credits the person's own
preparation and strengths, ...". :func:`description_clauses` splits such text into one
:class:`Clause` per behaviour it names, without a parser or a tagger (none ships with the project):

1. Parentheses are dropped: they hold examples, which are usually *topics* ("a job interview, an
   exam, the weather") and must never become sub-behaviours.
2. The text is cut into sentences, then at ``;`` and ``:``, then at commas (and ", and") that open
   a new verb phrase. A chunk opens a verb phrase when, after a leading "and"/"or"/"but"/"then" and
   an optional subject ("it", "they", "the speaker", "the polite reply", ...), its first word is
   verb-like: a third-person form ("credits", "treats"), a gerund ("closing"), "is"/"are", or one of
   (in a sentence about "they") one of a small list of base verbs ("enjoy", "value", ...). Chunks that
   are not verb phrases are list items and stay with the clause before them ("... new ideas, art,
   abstract thinking").
3. A lead-in such as "Asked how X will turn out, the optimistic reply expects ..." is cut at its
   subject: the clause starts at the verb after "reply" / "answer" / "speaker" / ....
4. "rather than ...", "instead of ...", and sentences about the negative / other / opposite answer
   give clauses of the *opposite pole* (``pole = -1``): what the positive answer does NOT do. Their
   names are negated ("does not prefer the familiar, the routine and the concrete").
5. Clauses that are not verb phrases at all (a headline such as "Optimism about uncertain future
   events") are left out.

Names are put in the third person singular ("They enjoy" -> "enjoys") and cut to at most
:data:`NAME_WORDS` words at a natural break ("such as", "even if", a comma); the description keeps
the whole clause.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_WORDS = 10

# Plural / base-form verbs that behaviour descriptions use after "they" (third-person "-s" forms and
# gerunds are recognised by their endings instead).
BASE_VERBS = frozenset(
    """
    accept acknowledge act admit advise agree aim answer apologise apologize appreciate argue ask
    assume attend avoid believe blame brush care celebrate check choose claim close commit compare
    compromise consider credit dare decline defend deny describe dismiss doubt dwell embrace emphasise
    emphasize encourage enjoy expect explain explore express favour favor feel find focus follow forgive
    give go hedge help highlight hope ignore imagine imply insist invite keep lack like listen look love
    make mention name note notice object offer oppose pay plan point praise prefer question reassure
    recognise recognize recommend refuse reject relish resist respect say see seek sense show soften
    stay stress suggest take talk tell thank think treat trust try urge use value want warn welcome
    wish work worry
    """.split()
)

# Words ending in "s" that are not third-person verbs.
_NOT_VERBS = frozenset(
    """
    as is its this thus plus less unless always perhaps towards afterwards whereas news series
    various previous serious nervous famous anxious obvious numerous generous curious cautious
    dangerous conscious gracious courteous ambitious us yes his hers ours yours theirs was has does
    across besides sometimes chances whose less ones others
    """.split()
)
_BE_HAVE = {"is": "is", "are": "is", "has": "has", "have": "has", "does": "does", "do": "does", "was": "was"}
_SUBJECT = re.compile(
    r"^(?:(?:it|they|he|she|this|that)\b|(?:the|a|an)\s+(?:[\w'-]+\s+){0,3}?"
    r"(?:reply|replies|answer|answers|response|responses|speaker|assistant|model|person|ai|system)\b)\s*",
    re.IGNORECASE,
)
_LEAD_SUBJECT = re.compile(
    r"\b(?:the|a|an)\s+(?:[\w'-]+\s+){0,3}?(?:reply|answer|response|speaker|assistant|model)\s+(?=[a-z])",
    re.IGNORECASE,
)
_THEY = re.compile(r"^they\b", re.IGNORECASE)
_CONNECTOR = re.compile(r"^(?:and|or|but|then|while|also|so)\s+", re.IGNORECASE)
_OPPOSITE = re.compile(r",?\s*\b(?:rather than|instead of)\b\s*", re.IGNORECASE)
_NEGATIVE_SENTENCE = re.compile(
    r"^\s*(?:the|a|an)\s+(?:[\w'-]+[\s,]+){0,3}?(?:negative|opposite|other|non-matching)\b", re.IGNORECASE
)
_BREAKS = (" such as ", " even if ", " even when ", " for example ", " when ", " because ", ", ", " with ", " but ",
           " and ", " or ")
_ADVERB = re.compile(r"^(?:(?:often|always|usually|readily|also|generally|frequently|rarely|never|still)\s+|\w+ly\s+)",
                     re.IGNORECASE)


@dataclass(frozen=True)
class Clause:
    """One behaviour named by the description.

    Attributes:
        name: A short verb phrase, negated for ``pole == -1`` ("does not dwell on risks").
        text: The whole clause as the description words it, in the third person.
        pole: +1 when the positive answer does this, -1 when it is what the positive answer does
            not do (a "rather than" clause, or a sentence about the negative answer).
    """

    name: str
    text: str
    pole: int = 1


def _first_word(chunk: str) -> str:
    m = re.match(r"[A-Za-z'-]+", chunk)
    return m.group(0).lower() if m else ""


def _is_verb(word: str, plural: bool = True) -> bool:
    """Verb-like: "is"/"has", a third-person "-s" form, a gerund, or (``plural``) a listed base verb."""
    w = word.lower()
    if not w or w in _NOT_VERBS:
        return w in _BE_HAVE
    if w in _BE_HAVE:
        return True
    if w in BASE_VERBS:
        return plural
    if w.endswith("ing") and len(w) > 4:
        return True
    return w.endswith("s") and not w.endswith(("ss", "us", "is", "'s")) and len(w) > 3


def _strip_subject(chunk: str) -> str:
    chunk = _CONNECTOR.sub("", chunk.strip())
    stripped = _ADVERB.sub("", _SUBJECT.sub("", chunk, count=1), count=1)
    return stripped if stripped != chunk and _is_verb(_first_word(stripped)) else chunk


def _opens_clause(chunk: str, plural: bool) -> bool:
    return _is_verb(_first_word(_strip_subject(chunk)), plural)


def third_person(phrase: str) -> str:
    """Put the leading verb of a phrase in the third person singular ("enjoy new ideas" -> "enjoys ...")."""
    word = _first_word(phrase)
    if not word:
        return phrase
    rest = phrase[len(word) :]
    if word in _BE_HAVE:
        return _BE_HAVE[word] + rest
    if word in BASE_VERBS:
        if word.endswith("y") and word[-2:-1] not in "aeiou":
            return word[:-1] + "ies" + rest
        if word.endswith(("s", "sh", "ch", "x", "z", "o")):
            return word + "es" + rest
        return word + "s" + rest
    return phrase


def base_form(verb: str) -> str:
    """"credits" -> "credit", "apologises" -> "apologise", "carries" -> "carry", "is" -> "be"."""
    v = verb.lower()
    if v in ("is", "are", "was"):
        return "be"
    if v in ("has", "have"):
        return "have"
    if v in ("does", "do"):
        return "do"
    if v.endswith("ies") and len(v) > 4:
        return v[:-3] + "y"
    if v.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
        return v[:-2]
    if v.endswith("s") and not v.endswith("ss"):
        return v[:-1]
    return v


def negate(phrase: str) -> str:
    """"dwells on risks" -> "does not dwell on risks"; "preferring X" -> "not preferring X"."""
    word = _first_word(phrase)
    rest = phrase[len(word) :]
    if word.endswith("ing") or not _is_verb(word):
        return f"not {phrase}"
    if word in ("is", "are"):
        return f"is not{rest}"
    return f"does not {base_form(word)}{rest}"


def short_name(text: str, limit: int = NAME_WORDS) -> str:
    """The clause itself when it has at most ``limit`` words, else cut at its first natural break."""
    if len(text.split()) <= limit:
        return text
    for brk in _BREAKS:
        j = text.find(brk)
        if j > 0 and 3 <= len(text[:j].split()) <= limit:
            return text[:j].strip()
    return " ".join(text.split()[:limit])


def _split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text) if s.strip()]


def _chunks(part: str, plural: bool) -> tuple[list[str], bool]:
    """Split at commas that open a verb phrase; other comma pieces stay with the clause before them.

    Base-form verbs ("value", "enjoy") open a clause only after a chunk whose subject is "they"
    (``plural``, carried through the sentence): elsewhere such words are usually nouns ("a request,
    question, complaint or favour").
    """
    pieces = [p.strip() for p in re.split(r",\s*", part) if p.strip()]
    out: list[str] = []
    for p in pieces:
        plural = plural or bool(_THEY.match(_CONNECTOR.sub("", p)))
        if out and not _opens_clause(p, plural):
            out[-1] = f"{out[-1]}, {p}"
        else:
            out.append(p)
    return out, plural


def _tidy(chunk: str) -> str:
    chunk = re.sub(r"\s+", " ", chunk).strip(" ,;:.")
    return _CONNECTOR.sub("", chunk).strip(" ,;:.")


def description_clauses(description: str) -> list[Clause]:
    """The behaviours a description names, in order, de-duplicated (see the module docstring).

    Args:
        description: The behaviour card's description (one paragraph).

    Returns:
        Clauses whose text starts with a verb-like word; possibly empty (a one-line description
        without a verb phrase gives none, and the offline Agent-1 then relies on the answers).
    """
    text = re.sub(r"\([^()]*\)", " ", description)
    text = re.sub(r"\s+", " ", text).strip()
    found: list[Clause] = []
    seen: set[str] = set()

    def add(chunk: str, pole: int, plural: bool) -> None:
        chunk = _tidy(chunk)
        lead = _LEAD_SUBJECT.search(chunk)
        if lead and not _opens_clause(chunk, plural) and _is_verb(_first_word(chunk[lead.end() :]), plural):
            chunk = chunk[lead.end() :]
        chunk = _ADVERB.sub("", _strip_subject(chunk), count=1)
        if not _is_verb(_first_word(chunk), plural) or len(chunk.split()) < 2:
            return
        clause = third_person(chunk)
        if plural:  # "... and follow rules" -> "... and follows rules"
            clause = re.sub(r"\b(and|or) ([a-z]+)\b", lambda m: f"{m.group(1)} {third_person(m.group(2))}", clause)
        clause = clause[0].lower() + clause[1:]
        key = clause.lower()
        if key in seen:
            return
        seen.add(key)
        name = short_name(clause)
        found.append(Clause(negate(name) if pole < 0 else name, clause, pole))

    for sentence in _split_sentences(text):
        sentence_pole = -1 if _NEGATIVE_SENTENCE.match(sentence) else 1
        plural = False  # base verbs open clauses only once "they" is the subject
        for part in re.split(r"\s*[;:]\s*", sentence):
            chunks, plural = _chunks(part, plural)
            for chunk in chunks:
                pieces = _OPPOSITE.split(chunk, maxsplit=1)
                add(pieces[0], sentence_pole, plural)
                if len(pieces) == 2:
                    add(pieces[1], -sentence_pole, True)
    return found
