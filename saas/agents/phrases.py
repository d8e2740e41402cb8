"""Contrastive phrase mining: the n-grams that separate the positive from the negative answers.

Both classes are a bag of documents: class ``+`` holds the positive answers' behavioural texts,
class ``-`` the negative ones' (:mod:`saas.agents.contrast`; for Yes/No data class ``+`` holds the
statements the positive answer endorses and class ``-`` those it rejects). Each n-gram (1 to 4
words) gets its class-based TF-IDF weight (c-TF-IDF, as in BERTopic)::

    W(t, c) = tf(t, c) / |c| * log(1 + A / f(t))

with tf(t, c) the number of documents of class c containing t, |c| the number of n-gram
occurrences of class c, A the average of |c| over the classes and f(t) = sum_c tf(t, c). A phrase
is *distinctive* of class c when ``W(t, c) - W(t, other)`` is high, it occurs in at least
``min_support`` documents of c and at least ``ratio`` times as often in c as in the other class.
Topic words occur in both classes (the two answers of a pair share the prompt's topic), so they
are never distinctive. Phrases that start or end with a stop word, or have no content word, are
not considered; negations ("no", "not", "never") are kept because they often carry the contrast.
Overlapping n-grams are reduced to one: the strongest, or a longer one that contains it when the
longer one has at least 60 % of its support ("no need" replaces "need"; "sorry" hides "really sorry").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_NEGATIONS = frozenset({"no", "not", "nor", "never", "nothing", "none", "cannot", "neither", "nobody", "nowhere"})
TOKEN_PATTERN = r"(?u)\b[^\W\d_][\w']*\b"


def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words, less the negations, plus contraction pieces."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    extra = {"i'm", "i'd", "i've", "i'll", "it's", "that's", "there's", "you're", "you'll", "you've", "you'd",
             "we'll", "we're", "we've", "let's", "s", "t", "ll", "ve", "re", "d", "m"}
    return frozenset((set(ENGLISH_STOP_WORDS) - _NEGATIONS) | extra)


@dataclass(frozen=True)
class Phrase:
    """A distinctive n-gram.

    Attributes:
        text: The n-gram, lower case.
        pole: +1 if it is distinctive of the positive class, -1 of the negative class.
        support: Documents of its own class that contain it.
        other: Documents of the other class that contain it.
        weight: ``W(t, own) - W(t, other)`` (c-TF-IDF).
    """

    text: str
    pole: int
    support: int
    other: int
    weight: float


def _usable(tokens: list[str], stop: frozenset[str]) -> bool:
    if tokens[0] in stop or tokens[-1] in stop:
        return False
    return any(t not in stop and t not in _NEGATIONS and "'" not in t and len(t) >= 4 for t in tokens)


def _contains(longer: list[str], shorter: list[str]) -> bool:
    n = len(shorter)
    return any(longer[i : i + n] == shorter for i in range(len(longer) - n + 1))


def mine_phrases(
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    max_phrases: int = 40,
    min_support: int | None = None,
    ratio: float = 3.0,
    ngram_range: tuple[int, int] = (1, 4),
) -> list[Phrase]:
    """Distinctive phrases of each class, strongest first (see the module docstring).

    Args:
        positive: Documents of class ``+`` (e.g. the positive answers).
        negative: Documents of class ``-``.
        max_phrases: At most this many phrases per class.
        min_support: Minimum number of own-class documents; default ``max(2, 3% of the larger class)``.
        ratio: Own-class count must be at least ``ratio * other + 1``.
        ngram_range: n-gram lengths.

    Returns:
        Phrases of both poles, each pole sorted by weight (the ``+`` ones first).
    """
    from sklearn.feature_extraction.text import CountVectorizer

    pos = [p.replace("\u2019", "'") for p in positive if p.strip()]
    neg = [n.replace("\u2019", "'") for n in negative if n.strip()]
    if not pos or not neg:
        return []
    need = min_support if min_support is not None else max(2, int(np.ceil(0.03 * max(len(pos), len(neg)))))
    cv = CountVectorizer(ngram_range=ngram_range, binary=True, token_pattern=TOKEN_PATTERN, lowercase=True)
    try:
        x = cv.fit_transform([*pos, *neg])
    except ValueError:  # no tokens at all
        return []
    vocab = cv.get_feature_names_out()
    tf = np.vstack([np.asarray(x[: len(pos)].sum(axis=0)).ravel(), np.asarray(x[len(pos) :].sum(axis=0)).ravel()])
    tf = tf.astype(np.float64)
    sizes = tf.sum(axis=1, keepdims=True)
    w = tf / np.maximum(sizes, 1.0) * np.log1p(sizes.mean() / np.maximum(tf.sum(axis=0), 1.0))
    stop = stop_words()
    out: list[Phrase] = []
    for c, pole in ((0, 1), (1, -1)):
        score = w[c] - w[1 - c]
        chosen: list[tuple[list[str], Phrase]] = []
        for j in np.argsort(-score, kind="stable"):
            own, other = tf[c, j], tf[1 - c, j]
            if score[j] <= 0 or len(chosen) >= max_phrases:
                break
            if own < need or own < ratio * other + 1:
                continue
            tokens = re.findall(r"[\w']+", str(vocab[j]))
            if not tokens or not _usable(tokens, stop):
                continue
            phrase = Phrase(" ".join(tokens), pole, int(own), int(other), float(score[j]))
            inside = [k for k, (ch, _) in enumerate(chosen) if _contains(tokens, ch)]
            if any(_contains(ch, tokens) for ch, _ in chosen):
                continue  # a longer phrase holding this one is already there
            if inside:
                k = inside[0]
                if own >= 0.6 * chosen[k][1].support and len(inside) == 1:
                    chosen[k] = (tokens, Phrase(phrase.text, pole, phrase.support, phrase.other, chosen[k][1].weight))
                continue
            chosen.append((tokens, phrase))
        out.extend(p for _, p in chosen)
    return out
