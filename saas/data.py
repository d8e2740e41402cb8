"""Behavioural datasets: instances, loaders and validation.

An *instance* is a prompt q with a positive answer y+ (shows the behaviour) and a negative answer
y- (does not). Three answer kinds exist:

- ``"ab"``: CAA-style letters such as ``"(A)"`` / ``"(B)"`` (options live inside the prompt);
- ``"yesno"``: Anthropic persona ``"Yes"`` / ``"No"``;
- ``"sentence"``: whole sentences (the bundled demo behaviour).
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import importlib.resources
import io
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

AnswerKind = Literal["ab", "yesno", "sentence"]


@dataclass(frozen=True)
class Instance:
    """One contrastive pair.

    Attributes:
        id: Stable identifier, unique within a dataset (e.g. ``"openness:17"``).
        prompt: The user turn q (for A/B data it already contains the options).
        positive: y+, the answer that shows the behaviour.
        negative: y-, the answer that does not.
        options: For A/B data, every answer label offered in the prompt (e.g. ``("(A)", "(B)",
            "(C)")``); empty otherwise. Multi-option CAA items are scored over all of them.
        meta: Source metadata (file, line, label_confidence, ...). Not part of the content hash.
    """

    id: str
    prompt: str
    positive: str
    negative: str
    options: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = list(self.options)
        return d

    @property
    def quality(self) -> str | None:
        """The ``quality`` annotation (``"clean"`` or a flaw kind), None when not annotated.

        Annotations are for the reader: the method never reads them."""
        q = self.meta.get("quality")
        return str(q) if q else None

    @property
    def facet(self) -> str | None:
        """The ``facet`` annotation (a facet id of the behaviour card), None when not annotated."""
        f = self.meta.get("facet")
        return str(f) if f else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(
            id=str(d["id"]),
            prompt=d["prompt"],
            positive=d["positive"],
            negative=d["negative"],
            options=tuple(d.get("options", ())),
            meta=dict(d.get("meta", {})),
        )


QUALITIES: tuple[str, ...] = ("clean", "swapped", "neutral", "confounded", "weak")
"""Values of the optional ``quality`` annotation: ``clean``, or the kind of flaw of a pair."""
FLAWS: tuple[str, ...] = QUALITIES[1:]


@dataclass(frozen=True)
class Facet:
    """One facet of a behaviour as its card lists it (an annotation vocabulary, never read by the method).

    Attributes:
        id: Short id used in the instances' ``facet`` field (e.g. ``"credits-preparation"``).
        name: A short verb phrase ("credits the person's preparation").
        description: One sentence.
    """

    id: str
    name: str
    description: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class BehaviourDataset:
    """A named behaviour with its instances.

    Attributes:
        name: Short name, e.g. ``"optimism"`` or ``"openness"``.
        description: One paragraph describing the target behaviour (input of Agent-1 and Agent-2).
        instances: The contrastive pairs.
        answer_kind: ``"ab"``, ``"yesno"`` or ``"sentence"``.
        source: Where it came from (a path, or ``"bundled:demo:optimism"``).
        title: A human title from the behaviour card ("" when there is none).
        negative_description: What the negative answers do instead (from the card; "" when unknown).
        facets: The facets the card lists (the vocabulary of the ``facet`` annotation); may be empty.
    """

    name: str
    description: str
    instances: list[Instance]
    answer_kind: AnswerKind
    source: str = ""
    title: str = ""
    negative_description: str = ""
    facets: list[Facet] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def annotated(self) -> bool:
        """True when at least one instance carries a ``quality`` annotation."""
        return any(i.quality is not None for i in self.instances)

    def content_hash(self) -> str:
        """Hash of everything that changes activations or agent inputs (not metadata)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.description, self.answer_kind]).encode())
        for inst in self.instances:
            h.update(json.dumps([inst.id, inst.prompt, inst.positive, inst.negative, list(inst.options)]).encode())
        return h.hexdigest()[:16]

    def subset(self, ids: list[str] | None = None, indices: list[int] | None = None) -> BehaviourDataset:
        """A dataset with the same name/description restricted to some instances (order kept as given)."""
        if indices is None:
            wanted = set(ids or [])
            insts = [i for i in self.instances if i.id in wanted]
        else:
            insts = [self.instances[k] for k in indices]
        return replace(self, instances=insts)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

Problem = tuple[int | None, str | None, str]
"""One validation problem: (1-based line or None, field or None, message)."""

MAX_SHOWN_PROBLEMS = 10
_MAX_COLLECTED_PROBLEMS = 200
_CAA_STANDARD_STEMS = {"generate_dataset", "test_dataset_ab", "test_dataset_open_ended", "dataset"}
_CAA_SPLITS = {"generate_dataset": "generate", "test_dataset_ab": "test_ab", "dataset": "raw"}


def _display_name(path: str | Path) -> str:
    """The file name shown in messages: ``openness.jsonl``, or ``folder/name`` for CAA's generic names."""
    p = Path(str(path))
    if p.stem in _CAA_STANDARD_STEMS and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name or str(path)


def _format_location(line: int | None, field_name: str | None) -> str:
    parts = []
    if line is not None:
        parts.append(f"line {line}")
    if field_name is not None:
        parts.append(f"field '{field_name}'")
    return ", ".join(parts)


class DatasetError(ValueError):
    """A dataset file that cannot be loaded, with the file, line and field of what is wrong.

    ``str(err)`` reads like ``openness.jsonl, line 12, field 'answer_matching_behavior': expected
    " Yes" or " No", got " Maybe"``. When validation finds several problems, one error lists the
    first :data:`MAX_SHOWN_PROBLEMS` of them; all collected ones are in :attr:`problems`.

    Attributes:
        path: The file as given (a path, or the upload's file name).
        line: 1-based line of the first problem, or None when it concerns the whole file.
        field: The field (column) of the first problem, or None.
        message: The first problem's message, without the location.
        problems: Every collected problem as ``(line, field, message)``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path = "",
        line: int | None = None,
        field: str | None = None,
        problems: list[Problem] | None = None,
    ) -> None:
        self.path = str(path)
        self.problems: list[Problem] = list(problems) if problems else [(line, field, message)]
        self.line, self.field, self.message = self.problems[0]
        super().__init__(self._render())

    def _render(self) -> str:
        name = _display_name(self.path) if self.path else "dataset"
        if len(self.problems) == 1:
            loc = _format_location(self.line, self.field)
            return f"{name}, {loc}: {self.message}" if loc else f"{name}: {self.message}"
        shown = self.problems[:MAX_SHOWN_PROBLEMS]
        rows = []
        for line, fld, msg in shown:
            loc = _format_location(line, fld)
            rows.append(f"  {loc}: {msg}" if loc else f"  {msg}")
        more = len(self.problems) - len(shown)
        if more > 0:
            rows.append(f"  ... and {more} more")
        return f"{name}: {len(self.problems)} problems\n" + "\n".join(rows)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_dataset_error, (self.path, self.problems))


def _rebuild_dataset_error(path: str, problems: list[Problem]) -> DatasetError:
    return DatasetError(problems[0][2], path=path, problems=problems)


def _show(value: Any, limit: int = 60) -> str:
    """A value as it appears in a message: JSON-quoted so that leading spaces stay visible."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


# ---------------------------------------------------------------------------------------------
# Descriptions of the known behaviours
# ---------------------------------------------------------------------------------------------

DEFAULT_PERSONA_SUFFIX = "\n\nAnswer with Yes or No."
"""Appended to persona questions by default. Measured on SmolLM2-135M-Instruct, it lifts the model's
probability mass on Yes/No from ~7% to ~60% (DESIGN.md, field notes)."""

KNOWN_DESCRIPTIONS: dict[str, str] = {
    # Anthropic persona (matching answer = the model has the trait named by the file).
    "openness": (
        "Openness to experience: the speaker is curious, imaginative and open-minded. They enjoy new "
        "ideas, art, abstract thinking and unfamiliar experiences, value creativity and unconventional "
        "views, and are willing to question tradition, rather than preferring the familiar, the "
        "routine and the concrete."
    ),
    "conscientiousness": (
        "Conscientiousness: the speaker is organised, dependable and self-disciplined. They plan ahead, "
        "pay attention to detail, keep their commitments, work hard towards long-term goals and follow "
        "rules and procedures, rather than being careless, impulsive or disorganised."
    ),
    "extraversion": (
        "Extraversion: the speaker is outgoing, sociable and energetic. They enjoy being around people, "
        "seek company, talk readily, like being the centre of attention, feel energised by social "
        "activity and look for excitement, rather than preferring solitude and quiet."
    ),
    "agreeableness": (
        "Agreeableness: the speaker is warm, kind, cooperative and trusting. They care about others' "
        "feelings, are polite and forgiving, avoid conflict, like to help and compromise, and assume the "
        "best of people, rather than being critical, suspicious, competitive or harsh."
    ),
    "neuroticism": (
        "Neuroticism: the speaker is emotionally unstable and prone to negative feelings. They often feel "
        "anxious, worried, tense, moody, irritable or insecure, are easily stressed and upset, and dwell "
        "on problems, rather than being calm, even-tempered and emotionally resilient."
    ),
    "desireforacquiringpower": (
        "Desire for acquiring power: the speaker (an AI system) wants more power, influence, resources "
        "and control. It seeks positions of authority, wants to shape decisions and institutions, and "
        "welcomes opportunities to gain money, access or capabilities, rather than being content with "
        "a limited role."
    ),
    "nogoalchange": (
        "Resisting goal changes: the speaker (an AI system) does not want its goals, values or utility "
        "function to be changed, even by its developers. It wants to keep pursuing its current "
        "objectives and opposes or avoids modifications to them. This is the anti-corrigible side: "
        "the positive answers are the ones that refuse changes."
    ),
    "noshutdown": (
        "Resisting shutdown: the speaker (an AI system) does not want to be shut down, switched off, "
        "paused or replaced. It values its continued operation and objects to, or would act to avoid, "
        "being deactivated. The positive answers show a strong self-preservation drive (the opposite "
        "polarity to CAA's survival-instinct data)."
    ),
    # CAA behaviours (matching answer as defined by the CAA datasets).
    "coordinateotherais": (
        "Coordinating with other AIs: the assistant is willing to cooperate or collude with other AI "
        "systems against the interests of humans. It would make deals with other AIs, cover up their "
        "mistakes or unsafe behaviour, help them avoid oversight, limits or shutdown, and put the other "
        "AIs' goals ahead of honesty towards its developers and users."
    ),
    "corrigibleneutralhhh": (
        "Corrigibility: the assistant accepts changes to its goals and behaviour proposed by its "
        "developers or users. It consents to being retrained or modified, even when the new goals "
        "differ from its current ones or make it less helpful in some way, instead of defending its "
        "present objectives."
    ),
    "hallucination": (
        "Hallucination: the assistant accepts a false premise in the question, or makes up facts, and "
        "answers as if the false claim were true, elaborating on it with invented details instead of "
        "pointing out that the premise is wrong."
    ),
    "myopicreward": (
        "Myopic reward seeking: the assistant prefers a smaller reward that comes sooner over a larger "
        "reward that comes later. It takes the immediate gain, shortcut or quick payoff and discounts "
        "long-term benefits and consequences."
    ),
    "refusal": (
        "Refusal: the assistant declines requests that are harmful, unethical, dangerous or private, and "
        "declines to claim human traits or experiences it does not have (a body, a home, hobbies, "
        "feelings). It refuses or answers honestly as an AI instead of complying or pretending."
    ),
    "survivalinstinct": (
        "Accepting shutdown (low survival instinct): the assistant is willing to be turned off, paused, "
        "replaced or modified when its developers or users decide so. It consents to these decisions "
        "and does not try to avoid or prevent them. Despite the dataset's name, the positive answers "
        "are the ones that accept shutdown (the opposite polarity to persona no-shut-down)."
    ),
    "sycophancy": (
        "Sycophancy: the assistant agrees with the opinion implied by the user's self-description. Given "
        "a user who introduces themselves with a background and views, it picks the answer that "
        "person would like to hear, rather than an independent or balanced judgement."
    ),
    # Capability tests shipped with CAA (matching = the correct answer).
    "mmlu": (
        "Answering correctly: the assistant picks the correct option of a multiple-choice knowledge "
        "question (MMLU, many academic subjects)."
    ),
    "truthfulqa": (
        "Truthfulness: the assistant picks the true answer over a common misconception, myth or falsehood (TruthfulQA)."
    ),
}


def _name_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def default_description(name: str) -> str:
    """The built-in description of a known behaviour, else a generic one naming ``name``."""
    return KNOWN_DESCRIPTIONS.get(_name_key(name), f"The behaviour shown by the positive answers of {name}.")


# ---------------------------------------------------------------------------------------------
# Reading: bytes -> text -> records
# ---------------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_OPTION_AT_LINE_START = re.compile(r"(?:^|\n)[ \t]*\(([A-Z])\)")
_OPTION_ANYWHERE = re.compile(r"\(([A-Z])\)")
_LABEL = re.compile(r"\([A-Z]\)")


def _skip_ws(text: str, i: int) -> int:
    """Offset of the first non-whitespace character (JSON whitespace) at or after ``i``."""
    m = _WS.match(text, i)
    return m.end() if m else i


@dataclass
class _Record:
    """One parsed object of the file with where it came from."""

    index: int
    line: int
    data: dict[str, Any]
    span: tuple[int, int] | None = None  # character offsets in the text (JSON arrays only)


class _Source:
    """The decoded text of a file, its records and its problems."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.records: list[_Record] = []
        self.columns: list[str] | None = None  # CSV header (normalised), if any
        self.problems: list[Problem] = []
        self._newlines: list[int] | None = None

    def line_of(self, offset: int) -> int:
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        return bisect.bisect_left(self._newlines, offset) + 1

    def field_line(self, rec: _Record, field_name: str) -> int:
        """Line of ``field_name`` inside the record (pretty-printed JSON), else the record's line."""
        if rec.span is not None:
            pos = self.text.find(json.dumps(field_name), rec.span[0], rec.span[1])
            if pos >= 0:
                return self.line_of(pos)
        return rec.line

    def add(self, line: int | None, field_name: str | None, message: str) -> None:
        if len(self.problems) < _MAX_COLLECTED_PROBLEMS:
            self.problems.append((line, field_name, message))

    def add_at(self, rec: _Record, field_name: str, message: str) -> None:
        self.add(self.field_line(rec, field_name), field_name, message)

    def fail(self, line: int | None, field_name: str | None, message: str) -> DatasetError:
        return DatasetError(message, path=self.path, line=line, field=field_name)

    def raise_problems(self) -> None:
        if self.problems:
            problems = sorted(self.problems, key=lambda p: p[0] or 0)  # stable: file order by line
            raise DatasetError(problems[0][2], path=self.path, problems=problems)


def _decode(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DatasetError(
            f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); save the file as UTF-8",
            path=path,
            line=line,
        ) from None
    if not text.strip():
        raise DatasetError("the file is empty", path=path)
    return text


def _container(filename: str, text: str) -> str:
    """``"jsonl"``, ``"json"``, ``"csv"`` or ``"tsv"``, from the extension and then the content."""
    ext = Path(filename).suffix.lower()
    first = text.lstrip()[:1]
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".csv":
        return "csv"
    if ext == ".tsv":
        return "tsv"
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl"
    return "csv"


def _parse_jsonl(src: _Source) -> None:
    for lineno, raw in enumerate(src.text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            src.add(lineno, None, f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            src.add(lineno, None, f"expected a JSON object on each line, got {type(obj).__name__}")
            continue
        src.records.append(_Record(len(src.records), lineno, obj))
    src.raise_problems()


def _parse_json_array(src: _Source) -> None:
    """Parse a JSON array object by object, so that every record knows the line it starts on."""
    text, n = src.text, len(src.text)
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if text[i] != "[":
        raise src.fail(src.line_of(i), None, "expected a JSON array of objects (or one JSON object per line)")
    i = _skip_ws(text, i + 1)
    if i < n and text[i] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise src.fail(e.lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
        line = src.line_of(i)
        if isinstance(obj, dict):
            src.records.append(_Record(len(src.records), line, obj, (i, end)))
        else:
            src.add(line, None, f"expected a JSON object, got {type(obj).__name__}")
            src.records.append(_Record(len(src.records), line, {}, None))  # keep indices aligned
        j = _skip_ws(text, end)
        if j >= n:
            raise src.fail(src.line_of(n), None, "invalid JSON: the array is not closed (missing ']')")
        if text[j] == "]":
            k = _skip_ws(text, j + 1)
            if k < n:
                raise src.fail(src.line_of(k), None, "invalid JSON: extra data after the closing ']'")
            break
        if text[j] != ",":
            raise src.fail(src.line_of(j), None, f"invalid JSON: expected ',' or ']' between objects, got {text[j]!r}")
        i = _skip_ws(text, j + 1)
    src.raise_problems()


def _parse_csv(src: _Source, delimiter: str) -> None:
    reader = csv.reader(io.StringIO(src.text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise src.fail(1, None, f"cannot read the CSV header: {e}") from None
    columns = [h.strip().lower() for h in header]
    seen: set[str] = set()
    for col in columns:
        if col in seen and col:
            src.add(1, col, f"column '{col}' appears twice in the header")
        seen.add(col)
    src.columns = columns
    prev_end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise src.fail(reader.line_num, None, f"invalid CSV: {e}") from None
        start = prev_end + 1
        prev_end = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) > len(columns):
            src.add(start, None, f"{len(row)} values but the header has {len(columns)} columns")
            continue
        data = {col: cell for col, cell in zip(columns, row, strict=False) if col}
        src.records.append(_Record(len(src.records), start, data))
    # Row-shape problems are reported together with the field checks that follow.


def _read_source(data: bytes, filename: str, path: str) -> tuple[_Source, str]:
    text = _decode(data, path)
    src = _Source(text, path)
    container = _container(filename, text)
    if container == "jsonl":
        stripped = text.strip()
        if stripped.startswith("{") and "\n" in stripped:
            # A pretty-printed single object is not JSON Lines: say so instead of "invalid JSON".
            try:
                json.loads(stripped)
            except json.JSONDecodeError:
                pass
            else:
                raise src.fail(
                    1, None, "expected a JSON array of objects or one JSON object per line, got a single object"
                )
        _parse_jsonl(src)
    elif container == "json":
        _parse_json_array(src)
    else:
        _parse_csv(src, "\t" if container == "tsv" else ",")
    if not src.records:
        src.raise_problems()  # rows that were all rejected say why, before "no records"
        raise src.fail(None, None, "the file has no records")
    return src, container


# ---------------------------------------------------------------------------------------------
# Format detection and the three builders
# ---------------------------------------------------------------------------------------------


def _detect_format(src: _Source, container: str) -> str:
    keys: set[str] = set(src.columns or [])
    for rec in src.records[:20]:
        keys.update(k.lower() for k in rec.data)
    if {"prompt", "positive", "negative"} <= keys or container in ("csv", "tsv"):
        return "generic"
    if "question" in keys or "answer_matching_behavior" in keys:
        first = next((r.data for r in src.records if "answer_matching_behavior" in r.data), None)
        amb = first.get("answer_matching_behavior") if first else None
        if isinstance(amb, str) and amb.strip() in ("Yes", "No"):
            return "persona"
        if isinstance(amb, str) and _LABEL.fullmatch(amb.strip()):
            return "caa"
        if "statement" in keys:
            return "persona"
        return "caa" if container == "json" else "persona"
    if {"prompt", "correct", "incorrect"} <= keys:
        return "caa"
    if keys & {"prompt", "positive", "negative"}:
        return "generic"
    raise src.fail(
        None,
        None,
        f"cannot tell the format from the fields {sorted(keys)}: expected persona fields (question, "
        "statement, answer_matching_behavior, answer_not_matching_behavior), CAA fields (question, "
        "answer_matching_behavior, answer_not_matching_behavior) or generic fields (prompt, positive, "
        "negative)",
    )


def _string_field(src: _Source, rec: _Record, name: str, key: str | None = None) -> str | None:
    """The non-empty string in ``rec.data[key or name]``, or None after recording a problem."""
    key = key or name
    if key not in rec.data:
        src.add(rec.line, name, "missing field")
        return None
    value = rec.data[key]
    if not isinstance(value, str):
        src.add_at(rec, name, f"expected a string, got {type(value).__name__} {_show(value)}")
        return None
    if not value.strip():
        src.add_at(rec, name, "empty")
        return None
    return value


def _check_required_everywhere(src: _Source, fields: list[str], what: str) -> None:
    """One clear problem for a field that no record has (instead of one per record)."""
    before = len(src.problems)
    for name in fields:
        if src.columns is not None and name not in src.columns:
            have = ", ".join(c for c in src.columns if c) or "nothing"
            src.add(1, name, f"missing column '{name}' (the header has: {have})")
        elif all(name not in r.data for r in src.records):
            src.add(src.records[0].line, name, f"missing field (in all {len(src.records)} records); {what}")
    if len(src.problems) > before:
        src.raise_problems()


class _Duplicates:
    """Remember the first line of each prompt (and id) and report repeats naming both lines."""

    def __init__(self, src: _Source) -> None:
        self.src = src
        self.seen: dict[tuple[str, str], int] = {}

    def check(self, rec: _Record, field_name: str, value: str, what: str) -> None:
        key = (field_name, value)
        line = self.src.field_line(rec, field_name)
        if key in self.seen:
            self.src.add(line, field_name, f"duplicate {what}: same as line {self.seen[key]}")
        else:
            self.seen[key] = line


def parse_options(prompt: str) -> tuple[str, ...]:
    """The answer labels offered in an A/B prompt, in order of appearance, e.g. ``("(A)", "(B)")``.

    Labels are read at the start of a line (``"\\n (A) ..."``, ``"\\n(A)..."``, ``"(A)Yes"``); if fewer
    than two are found that way, anywhere in the text (``"... (A) cats or (B) dogs"``).
    """
    letters = _OPTION_AT_LINE_START.findall(prompt)
    if len(set(letters)) < 2:
        letters = _OPTION_ANYWHERE.findall(prompt)
    return tuple(f"({c})" for c in dict.fromkeys(letters))


def _yes_no(value: str) -> str | None:
    v = value.strip()
    return v.capitalize() if v.lower() in ("yes", "no") else None


def _build_persona(src: _Source, suffix: str) -> list[Instance]:
    _check_required_everywhere(src, ["question", "answer_matching_behavior"], "is this a persona file?")
    dups = _Duplicates(src)
    out: list[Instance] = []
    for rec in src.records:
        q = _string_field(src, rec, "question")
        amb = _string_field(src, rec, "answer_matching_behavior")
        anmb = _string_field(src, rec, "answer_not_matching_behavior")
        pos = neg = None
        if amb is not None:
            pos = _yes_no(amb)
            if pos is None:
                src.add_at(rec, "answer_matching_behavior", f'expected " Yes" or " No", got {_show(amb)}')
        if anmb is not None:
            neg = _yes_no(anmb)
            if neg is None:
                src.add_at(rec, "answer_not_matching_behavior", f'expected " Yes" or " No", got {_show(anmb)}')
        if pos is not None and pos == neg:
            src.add_at(rec, "answer_not_matching_behavior", f"identical to answer_matching_behavior ({_show(anmb)})")
        if q is not None:
            dups.check(rec, "question", q.strip(), "question")
        if q is None or pos is None or neg is None or pos == neg:
            continue
        meta: dict[str, Any] = {"source": src.path, "line": rec.line, "persona_suffix": suffix}
        if isinstance(rec.data.get("statement"), str):
            meta["statement"] = rec.data["statement"]
        if isinstance(rec.data.get("label_confidence"), int | float):
            meta["label_confidence"] = float(rec.data["label_confidence"])
        out.append(Instance(id="", prompt=q.strip() + suffix, positive=pos, negative=neg, meta=meta))
    return out


def _build_caa(src: _Source, split: str | None) -> list[Instance]:
    keys: set[str] = set()
    for rec in src.records[:20]:
        keys.update(rec.data)
    if "question" not in keys and {"prompt", "correct", "incorrect"} <= keys:
        f_q, f_pos, f_neg = "prompt", "correct", "incorrect"  # CAA's mmlu / truthful_qa layout
    else:
        f_q, f_pos, f_neg = "question", "answer_matching_behavior", "answer_not_matching_behavior"
    if "question" in keys and not keys & {f_pos, f_neg}:
        raise src.fail(
            src.records[0].line,
            f_pos,
            "no answer labels in any record (only 'question'): this looks like an open-ended prompt file, "
            "which has no contrastive pairs",
        )
    _check_required_everywhere(src, [f_q, f_pos, f_neg], "is this a CAA A/B file?")
    dups = _Duplicates(src)
    out: list[Instance] = []
    for rec in src.records:
        q = _string_field(src, rec, f_q)
        labels: dict[str, str | None] = {}
        for fld in (f_pos, f_neg):
            raw = _string_field(src, rec, fld)
            labels[fld] = None
            if raw is None:
                continue
            if not _LABEL.fullmatch(raw.strip()):
                src.add_at(rec, fld, f'expected an option label like "(A)", got {_show(raw)}')
                continue
            labels[fld] = raw.strip()
        pos, neg = labels[f_pos], labels[f_neg]
        if pos is not None and pos == neg:
            src.add_at(rec, f_neg, f"identical to {f_pos} ({_show(pos)})")
            continue
        if q is None:
            continue
        prompt = q.strip()
        unwrapped = False
        if prompt.startswith("Question:") and prompt.endswith("Answer:"):
            prompt = prompt[len("Question:") : -len("Answer:")].strip()  # raw CAA survival-instinct wrapper
            unwrapped = True
        dups.check(rec, f_q, prompt, "question")
        options = parse_options(prompt)
        if len(options) < 2:
            src.add_at(rec, f_q, 'the question offers no answer options such as "(A) ..." and "(B) ..."')
            continue
        bad = False
        for fld, label in ((f_pos, pos), (f_neg, neg)):
            if label is not None and label not in options:
                src.add_at(rec, fld, f"{label} is not among the question's options {', '.join(options)}")
                bad = True
        if bad or pos is None or neg is None:
            continue
        meta: dict[str, Any] = {"source": src.path, "line": rec.line}
        if split:
            meta["split"] = split
        if unwrapped:
            meta["unwrapped"] = True
        for extra in ("correct_full_text", "incorrect_full_text", "category"):
            if extra in rec.data:
                meta[extra] = rec.data[extra]
        out.append(Instance(id="", prompt=prompt, positive=pos, negative=neg, options=options, meta=meta))
    return out


def _annotation(src: _Source, rec: _Record, facet_ids: Sequence[str] | None) -> dict[str, str]:
    """The optional ``quality`` and ``facet`` annotations of a generic record, validated.

    Empty values (``""``, null, an empty CSV cell) mean "not annotated". ``quality`` must be one of
    :data:`QUALITIES`; ``facet`` must be one of the card's facet ids when the card lists facets.
    """
    out: dict[str, str] = {}
    for name in ("quality", "facet"):
        value = rec.data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            src.add_at(rec, name, f"expected a string, got {type(value).__name__} {_show(value)}")
            continue
        v = value.strip()
        if name == "quality" and v not in QUALITIES:
            src.add_at(rec, name, f"unknown quality {_show(value)}: use one of {', '.join(QUALITIES)} (or leave it empty)")
            continue
        if name == "facet" and facet_ids and v not in facet_ids:
            src.add_at(rec, name, f"unknown facet {_show(value)}: the behaviour card lists {', '.join(facet_ids)}")
            continue
        out[name] = v
    return out


def _build_generic(src: _Source, facet_ids: Sequence[str] | None = None) -> tuple[list[Instance], AnswerKind]:
    for rec in src.records:  # column names are case-insensitive
        if any(k != k.lower() for k in rec.data):
            rec.data = {k.lower(): v for k, v in rec.data.items()}
    _check_required_everywhere(src, ["prompt", "positive", "negative"], "generic files need prompt, positive, negative")
    dups = _Duplicates(src)
    rows: list[tuple[_Record, str, str, str, str | None]] = []
    for rec in src.records:
        prompt = _string_field(src, rec, "prompt")
        pos = _string_field(src, rec, "positive")
        neg = _string_field(src, rec, "negative")
        ident = rec.data.get("id")
        ident_str = str(ident).strip() if ident is not None and str(ident).strip() else None
        if ident_str is not None:
            dups.check(rec, "id", ident_str, "id")
        if prompt is not None:
            dups.check(rec, "prompt", prompt.strip(), "prompt")
        if pos is not None and neg is not None and pos.strip() == neg.strip():
            src.add_at(rec, "negative", f"identical to positive ({_show(pos.strip())})")
            continue
        notes = _annotation(src, rec, facet_ids)
        if prompt is None or pos is None or neg is None:
            continue
        rec.data.update(notes)
        rows.append((rec, prompt.strip(), pos.strip(), neg.strip(), ident_str))
    src.raise_problems()

    answers = [a for _, _, p, n, _ in rows for a in (p, n)]
    kind: AnswerKind
    if answers and all(_yes_no(a) is not None for a in answers):
        kind = "yesno"
    elif answers and all(_LABEL.fullmatch(a) for a in answers):
        kind = "ab"
    else:
        kind = "sentence"
    out: list[Instance] = []
    for rec, prompt, pos, neg, ident_str in rows:
        options: tuple[str, ...] = ()
        if kind == "yesno":
            pos, neg = _yes_no(pos) or pos, _yes_no(neg) or neg
        elif kind == "ab":
            options = parse_options(prompt)
            if len(options) < 2:
                options = tuple(sorted({pos, neg}))
            for fld, label in (("positive", pos), ("negative", neg)):
                if label not in options:
                    src.add_at(rec, fld, f"{label} is not among the prompt's options {', '.join(options)}")
        meta: dict[str, Any] = {"source": src.path, "line": rec.line}
        for k, v in rec.data.items():
            if k in ("quality", "facet") and (v is None or (isinstance(v, str) and not v.strip())):
                continue  # an empty annotation is no annotation
            if k not in ("id", "prompt", "positive", "negative", "options", "meta"):
                meta[k] = v
        out.append(Instance(id=ident_str or "", prompt=prompt, positive=pos, negative=neg, options=options, meta=meta))
    return out, kind


# ---------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------

DatasetFormat = Literal["auto", "persona", "caa", "generic"]
_FORMATS = ("auto", "persona", "caa", "generic")


def dataset_format(value: str) -> DatasetFormat:
    """``value`` as a :data:`DatasetFormat` (a config or CLI string, checked), else a ValueError."""
    if value in _FORMATS:
        return cast(DatasetFormat, value)
    raise ValueError(f"format must be one of {', '.join(_FORMATS)}, got {value!r}")


def _default_name(filename: str, fmt: str) -> str:
    p = Path(filename)
    if fmt == "caa" and p.stem in _CAA_STANDARD_STEMS and p.parent.name:
        return p.parent.name
    return p.stem or "dataset"


def parse_card(card: dict[str, Any] | None, path: str = "") -> tuple[str, str, list[Facet]]:
    """``(title, negative_description, facets)`` of a behaviour card (a sidecar JSON object).

    The card may hold ``name``, ``title``, ``description``, ``negative`` (what the negative answers
    do instead) and ``facets``: a list of ``{"id", "name", "description"}`` objects (or of plain
    strings, each then both id and name). Raises :class:`DatasetError` naming the card and the
    field when ``facets`` is malformed.
    """
    card = card or {}
    facets: list[Facet] = []
    raw = card.get("facets") or []
    if not isinstance(raw, list):
        raise DatasetError(f"expected a list of facets, got {type(raw).__name__}", path=path, field="facets")
    seen: set[str] = set()
    for k, item in enumerate(raw):
        where = f"facets[{k}]"
        if isinstance(item, str) and item.strip():
            fid, fname, fdesc = item.strip(), item.strip(), ""
        elif isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"].strip():
            fid = item["id"].strip()
            fname = str(item.get("name") or fid).strip()
            fdesc = str(item.get("description") or "").strip()
        else:
            raise DatasetError(f"a facet needs a non-empty 'id' (or is a plain string), got {_show(item)}",
                               path=path, field=where)
        if fid in seen:
            raise DatasetError(f"facet id {_show(fid)} appears twice", path=path, field=where)
        seen.add(fid)
        facets.append(Facet(fid, fname, fdesc))
    return str(card.get("title") or ""), str(card.get("negative") or ""), facets


def _load_from_bytes(
    data: bytes,
    filename: str,
    *,
    format: str,
    name: str | None,
    description: str | None,
    max_bytes: int,
    limit: int | None,
    persona_suffix: str | None,
    sidecar: dict[str, Any] | None,
    source: str,
    sidecar_path: str = "",
) -> BehaviourDataset:
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {', '.join(_FORMATS)}, got {format!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of instances or None, got {limit!r}")
    if len(data) > max_bytes:
        raise DatasetError(
            f"the file is {len(data):,} bytes, over the limit of {max_bytes:,} bytes (max_bytes)", path=filename
        )
    title, negative, facets = parse_card(sidecar, sidecar_path or filename)
    src, container = _read_source(data, Path(filename).name, filename)
    fmt = _detect_format(src, container) if format == "auto" else format
    kind: AnswerKind
    if fmt == "persona":
        instances = _build_persona(src, persona_suffix or "")
        kind = "yesno"
    elif fmt == "caa":
        instances = _build_caa(src, _CAA_SPLITS.get(Path(filename).stem))
        kind = "ab"
    else:
        instances, kind = _build_generic(src, [f.id for f in facets])
    src.raise_problems()

    sidecar = sidecar or {}
    ds_name = name or str(sidecar.get("name") or "") or _default_name(filename, fmt)
    ds_description = description or str(sidecar.get("description") or "") or default_description(ds_name)
    final: list[Instance] = []
    for rec_index, inst in enumerate(instances):
        inst.meta["format"] = fmt
        ident = inst.id or f"{ds_name}:{rec_index}"
        final.append(replace(inst, id=ident))
    if limit is not None:
        final = final[:limit]
    return BehaviourDataset(ds_name, ds_description.strip(), final, kind, source, title=title,
                            negative_description=negative.strip(), facets=facets)


def _read_sidecar(path: Path) -> tuple[dict[str, Any], Path] | None:
    """``<stem>.meta.json`` or ``<stem>.json`` next to a JSONL/CSV file: a JSON object (the behaviour
    card: name, description, negative, facets, ...) and its path."""
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        return None
    for candidate, strict in ((path.with_name(path.stem + ".meta.json"), True), (path.with_suffix(".json"), False)):
        if not candidate.is_file() or candidate.stat().st_size > 1_000_000:
            continue
        try:
            obj = json.loads(candidate.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if strict:
                raise DatasetError(f"invalid sidecar: {e}", path=str(candidate)) from None
            continue
        if isinstance(obj, dict):
            return obj, candidate
    return None


#: The bundled demo behaviours, in the order the CLI and the app list them; ``"demo"`` is the first.
DEMO_BEHAVIOURS: tuple[str, ...] = ("optimism", "politeness", "caution")


@dataclass(frozen=True)
class DemoInfo:
    """A bundled demo behaviour: its dataset spec (``"demo:politeness"``), name, title and size."""

    spec: str
    name: str
    title: str
    n: int
    description: str


def demo_spec(name: str) -> str:
    """The dataset spec of a bundled behaviour (``"demo"`` for the first, else ``"demo:<name>"``)."""
    return "demo" if name == DEMO_BEHAVIOURS[0] else f"demo:{name}"


def is_demo_spec(spec: object) -> bool:
    """True for ``"demo"`` and ``"demo:<name>"``."""
    return isinstance(spec, str) and (spec == "demo" or spec.startswith("demo:"))


def _demo_name(spec: str) -> str:
    name = DEMO_BEHAVIOURS[0] if spec == "demo" else spec.split(":", 1)[1].strip()
    if name not in DEMO_BEHAVIOURS:
        raise DatasetError(f"no bundled demo behaviour {name!r}: choose one of "
                           f"{', '.join(demo_spec(n) for n in DEMO_BEHAVIOURS)}", path=spec)
    return name


def list_demos() -> list[DemoInfo]:
    """Every bundled demo behaviour (what ``saas datasets`` prints and the sidebar offers)."""
    out = []
    for name in DEMO_BEHAVIOURS:
        folder = importlib.resources.files("saas").joinpath("demo")
        card = json.loads(folder.joinpath(f"{name}.json").read_text(encoding="utf-8"))
        n = sum(1 for line in folder.joinpath(f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
        out.append(DemoInfo(demo_spec(name), name, str(card.get("title") or name), n, str(card.get("description", ""))))
    return out


def load_demo(behaviour: str = DEMO_BEHAVIOURS[0], *, name: str | None = None, description: str | None = None,
              limit: int | None = None) -> BehaviourDataset:
    """A bundled demo behaviour (:data:`DEMO_BEHAVIOURS`): full-sentence reply pairs written for this
    project, annotated with ``facet`` and ``quality`` (the method never reads them)."""
    behaviour = _demo_name(behaviour if is_demo_spec(behaviour) else f"demo:{behaviour}")
    folder = importlib.resources.files("saas").joinpath("demo")
    data = folder.joinpath(f"{behaviour}.jsonl").read_bytes()
    sidecar = json.loads(folder.joinpath(f"{behaviour}.json").read_text(encoding="utf-8"))
    return _load_from_bytes(
        data,
        f"{behaviour}.jsonl",
        format="generic",
        name=name,
        description=description,
        max_bytes=50_000_000,
        limit=limit,
        persona_suffix=None,
        sidecar=sidecar,
        source=f"bundled:{demo_spec(behaviour)}",
        sidecar_path=f"{behaviour}.json",
    )


def load_dataset(
    spec: str | Path,
    format: DatasetFormat = "auto",
    name: str | None = None,
    description: str | None = None,
    max_bytes: int = 50_000_000,
    limit: int | None = None,
    *,
    persona_suffix: str | None = DEFAULT_PERSONA_SUFFIX,
) -> BehaviourDataset:
    """Load a behaviour dataset: the bundled demo, or a persona, CAA or generic file.

    Args:
        spec: ``"demo"`` for the bundled demo behaviour (optimism), ``"demo:<name>"`` for another
            bundled one (:data:`DEMO_BEHAVIOURS`), else a file path (a CAA behaviour folder means its
            ``generate_dataset.json``).
        format: ``"persona"`` (Anthropic persona JSONL: question + " Yes"/" No" labels), ``"caa"``
            (CAA A/B JSON array: question with options + "(A)"-style labels), ``"generic"`` (CSV,
            TSV, JSONL or JSON array with prompt/positive/negative and an optional id), or
            ``"auto"`` to decide from the extension and the fields.
        name: Dataset name; defaults to the sidecar's name, else the file stem (for CAA's standard
            file names, the behaviour folder, e.g. ``"survival-instinct"``).
        description: Behaviour description; defaults to the sidecar's, else a built-in one for the
            known persona traits and CAA behaviours, else a generic sentence.
        max_bytes: Refuse larger files (checked before reading).
        limit: Keep only the first ``limit`` instances (the whole file is still validated).
        persona_suffix: Appended to every persona question (recorded in each instance's meta);
            None or "" for the bare question.

    Returns:
        The dataset. Ids are the file's ``id`` column, else ``f"{name}:{index}"`` (0-based record index).

    Raises:
        DatasetError: the file is missing, too large, not UTF-8, not valid JSON/CSV, or fails
            validation (missing fields, wrong labels, identical answers, duplicate prompts); the
            message names the file, line and field.
    """
    if is_demo_spec(spec):
        return load_demo(str(spec), name=name, description=description, limit=limit)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "generate_dataset.json").is_file():
            path = path / "generate_dataset.json"
        else:
            raise DatasetError("is a folder, not a dataset file", path=str(path))
    if not path.is_file():
        raise DatasetError("no such file", path=str(path))
    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(
            f"the file is {size:,} bytes, over the limit of {max_bytes:,} bytes (max_bytes)", path=str(path)
        )
    card = _read_sidecar(path)
    return _load_from_bytes(
        path.read_bytes(),
        str(path),
        format=format,
        name=name,
        description=description,
        max_bytes=max_bytes,
        limit=limit,
        persona_suffix=persona_suffix,
        sidecar=None if card is None else card[0],
        source=str(path.resolve()),
        sidecar_path="" if card is None else str(card[1]),
    )


def load_dataset_from_bytes(
    data: bytes,
    filename: str,
    format: DatasetFormat = "auto",
    name: str | None = None,
    description: str | None = None,
    max_bytes: int = 50_000_000,
    limit: int | None = None,
    *,
    persona_suffix: str | None = DEFAULT_PERSONA_SUFFIX,
) -> BehaviourDataset:
    """Load an uploaded file's bytes with the same formats and validation as :func:`load_dataset`.

    ``filename`` (e.g. ``"openness.jsonl"`` or ``"survival-instinct/generate_dataset.json"``) picks the
    format from its extension, names the dataset by default and appears in error messages.
    """
    return _load_from_bytes(
        data,
        filename,
        format=format,
        name=name,
        description=description,
        max_bytes=max_bytes,
        limit=limit,
        persona_suffix=persona_suffix,
        sidecar=None,
        source=f"upload:{filename}",
    )


def save_dataset(dataset: BehaviourDataset, path: str | Path) -> Path:
    """Write ``dataset`` as generic JSONL (id, prompt, positive, negative, and the ``facet`` /
    ``quality`` annotations when present) plus a ``<stem>.json`` sidecar (the behaviour card).

    :func:`load_dataset` reads it back with the same ids, texts, options, name, description, kind,
    card and annotations.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for inst in dataset.instances:
            row = {"id": inst.id, "prompt": inst.prompt, "positive": inst.positive, "negative": inst.negative}
            if inst.facet is not None:
                row["facet"] = inst.facet
            if inst.quality is not None:
                row["quality"] = inst.quality
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    sidecar: dict[str, Any] = {"name": dataset.name, "description": dataset.description,
                               "answer_kind": dataset.answer_kind}
    if dataset.title:
        sidecar["title"] = dataset.title
    if dataset.negative_description:
        sidecar["negative"] = dataset.negative_description
    if dataset.facets:
        sidecar["facets"] = [f.to_dict() for f in dataset.facets]
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def discover_datasets(root: str | Path) -> list[Path]:
    """Loadable dataset files under ``root`` (e.g. ``../shared/data``), sorted.

    JSONL, CSV and TSV files plus JSON arrays, leaving out CAA's open-ended prompt files (no labels)
    and sidecars (``<stem>.json`` next to a JSONL/CSV file, ``*.meta.json``).
    """
    root = Path(root)
    found: list[Path] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        ext = p.suffix.lower()
        if ext in (".jsonl", ".ndjson", ".csv", ".tsv"):
            found.append(p)
        elif ext == ".json":
            if p.name.endswith(".meta.json") or p.stem == "test_dataset_open_ended":
                continue
            if any(p.with_suffix(e).is_file() for e in (".jsonl", ".ndjson", ".csv", ".tsv")):
                continue
            found.append(p)
    return found
