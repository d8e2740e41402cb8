"""The whole method, headless: the orchestration shared by the CLI and the app.

Two stages, so that a slider never runs the model (STYLE.md, DESIGN.md section 2):

- :func:`prepare` does everything expensive once: load the model and the dataset, extract the
  all-layer activations (cached), split 7:2:1, run the agents (cached calls) and the model's own
  answer scores for the logit-diff and conf baselines (cached).
- :func:`compute` is cheap numpy on those arrays for one (layer, kappa, axis, temperature): the
  eligibility of the training instances, the SAAS weights and every method's vector.

Temperatures. Eq. 6 divides the importance s_i = sum_k c_k s_ik by t. Its scale depends on K' and
on the backend, so the default temperature (``temperature=None``) is the spread of the importance
over the eligible training instances (its standard deviation): weights are then exp(z-score)-like.
The logit-diff and conf baselines are weighted "the same way as SAAS" (DESIGN.md): with the same
*relative* temperature, i.e. each divides its own scores by ``(t / spread(s)) * spread(own scores)``,
so only the source of the score differs, not the sharpness of the softmax.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from saas import baselines
from saas.activations import ActivationSet, extract_activations
from saas.annotated import annotation_summary, evaluation_pairs, is_annotated
from saas.data import BehaviourDataset, dataset_format, load_dataset
from saas.eligibility import EligibilityResult, Projection, apply_cutoff, project
from saas.lengths import check_lengths
from saas.models import LoadedModel, load_model
from saas.steering import SteeringVector
from saas.weighting import WeightSummary, softmax_weights, summarize

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]

#: Display names of the methods (keys are saas.baselines' method ids).
METHOD_LABELS: dict[str, str] = {
    baselines.SAAS: "SAAS",
    baselines.CAA: "CAA",
    baselines.PCA_CENTER: "PCA-center",
    baselines.PCA_MIDPOINT: "PCA-midpoint",
    baselines.PCA_DIFF: "PCA-diff",
    baselines.LOGIT_DIFF: "logit-diff",
    baselines.CONF: "conf",
    baselines.UNIFORM_ELIGIBLE: "uniform-eligible",
    baselines.BIPO: "BiPO",
}
AGENT_CHOICES = ("auto", "offline", "anthropic", "local", "none")


@dataclass
class RunConfig:
    """Everything that defines a run; doubles as the record written to ``config.json``."""

    model: str = "default"
    dataset: str = "demo"
    format: str = "auto"
    limit: int | None = None
    layer: int | None = None  # None: the middle layer
    kappa: float = 0.5
    axis: str = "fisher"
    shrinkage: str | float = "ledoit-wolf"
    consistency: str = "mean"  # or "polarity-balanced" (token answers; DESIGN.md section 5)
    max_tokens: int | None = None  # prompt + answer limit in tokens (None: the model's context length)
    max_prompt_tokens: int | None = None  # truncate longer prompts to their last N tokens (None: never)
    temperature: float | None = None  # None: the spread of the importance (see module doc)
    agents: str = "offline"
    agent_model: str | None = None  # Anthropic model id, or a local model folder for "local"
    scores: str | None = None  # a scores table (CSV) instead of agents
    threshold: float = 2.0
    seed: int = 0  # split and Agent-1 example seed
    batch_size: int = 16
    model_scores: bool = True  # logit-diff / conf from the activation pass (LM head at the answer positions)
    device: str | None = None
    dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Prepared:
    """The expensive, cached part of a run.

    Attributes:
        acts: activations of every instance, all layers [N, L, d].
        split: ``{"train": idx, "val": idx, "test": idx}`` positions into the dataset.
        importance: Eq. 5 per instance [N] (NaN where no score exists); None without agents/scores.
        logit_diff, conf: the model's own scores per instance [N] (None if not computed).
    """

    config: RunConfig
    lm: LoadedModel
    dataset: BehaviourDataset
    acts: ActivationSet
    split: dict[str, list[int]]
    importance: np.ndarray | None = None
    agent_run: Any = None
    scores_source: str = "uniform"
    logit_diff: np.ndarray | None = None
    conf: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    lengths: Any = None  # saas.lengths.LengthReport of the token-length check

    @property
    def train(self) -> list[int]:
        return self.split["train"]

    def instances(self, split: str) -> list[Any]:
        return [self.dataset.instances[i] for i in self.split[split]]


@dataclass
class MethodResult:
    """The cheap part of a run for one (layer, kappa, axis, temperature), on the training split."""

    layer: int
    projection: Projection
    eligibility: EligibilityResult
    temperature: float
    importance: np.ndarray  # [n_train] (zeros when uniform)
    weights: np.ndarray  # [n_train] SAAS weights (0 for ineligible)
    summary: WeightSummary
    vectors: dict[str, SteeringVector]

    def vector(self, method: str) -> SteeringVector:
        if method not in self.vectors:
            raise KeyError(f"no {method!r} vector in this run; methods: {sorted(self.vectors)}")
        return self.vectors[method]


def default_layer(n_layers: int) -> int:
    """The middle layer: where behaviour directions usually steer best in small models."""
    return n_layers // 2


def spread(x: np.ndarray | None, mask: np.ndarray | None = None) -> float:
    """Standard deviation of the finite entries (under ``mask``); 0 when there are fewer than 2."""
    if x is None:
        return 0.0
    v = np.asarray(x, dtype=np.float64)
    if mask is not None:
        v = v[mask]
    v = v[np.isfinite(v)]
    return float(v.std()) if v.size > 1 else 0.0


def auto_temperature(importance: np.ndarray, eligible: np.ndarray) -> float:
    """Default t: the spread of s_i over the eligible instances (1.0 when they are all equal)."""
    s = spread(importance, eligible)
    return s if s > 1e-12 else 1.0


def split_indices(n: int, seed: int, ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)) -> dict[str, list[int]]:
    from saas.evaluation import split_indices as _split

    train, val, test = _split(n, seed, ratios)
    return {"train": [int(i) for i in train], "val": [int(i) for i in val], "test": [int(i) for i in test]}


def _model_scores(lm: LoadedModel, dataset: BehaviourDataset, acts: ActivationSet, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """logit-diff and conf per instance at alpha 0, from the answer log-probs that the activation pass
    computed in the same forwards (:attr:`ActivationSet.logprobs`, cached with the activations); a
    separate scoring pass only when they are missing (e.g. a prompt with no token before the answer)."""
    from saas.evaluation import model_scores, model_scores_from_logprobs

    if acts.logprobs is not None and [lp.id for lp in acts.logprobs] == [i.id for i in dataset.instances]:
        return model_scores_from_logprobs(acts.logprobs, dataset.answer_kind)
    if progress:
        progress(0, 1, "Scoring answers with the model (logit-diff / conf baselines)")
    logit_diff, conf = model_scores(lm, dataset.instances, dataset.answer_kind)
    return np.asarray(logit_diff, dtype=np.float64), np.asarray(conf, dtype=np.float64)


def agent_backend(config: RunConfig, lm: LoadedModel | None = None, api_key: str | None = None) -> Any:
    """The agent backend a config names (``None`` for ``agents="none"``)."""
    from saas.agents import make_backend

    if config.agents == "none":
        return None
    kw: dict[str, Any] = {}
    if config.agents in ("anthropic", "auto") and api_key:
        kw["api_key"] = api_key
    if config.agents == "anthropic" and config.agent_model:
        kw["model"] = config.agent_model
    if config.agents == "local":
        if config.agent_model:
            kw["model_path"] = config.agent_model
        elif lm is not None:
            kw.update(model=lm.model, tokenizer=lm.tokenizer)
    return make_backend(config.agents, **kw)


def run_agents_for(prepared: Prepared, backend: Any, *, refresh: bool = False, overlay: Any = None,
                   progress: Progress | None = None) -> Any:
    """Agent-1 sees the training split; Agent-3 scores every instance, so that moving kappa (which
    changes the eligible set) or changing the split never needs new agent calls."""
    from saas.agents import run_agents

    ds = prepared.dataset
    return run_agents(
        ds, backend,
        train_ids=[ds.instances[i].id for i in prepared.train],
        eligible_ids=[i.id for i in ds.instances],
        seed=prepared.config.seed, threshold=prepared.config.threshold,
        refresh=refresh, overlay=overlay, progress=progress,
    )


def set_agent_run(prepared: Prepared, run: Any) -> None:
    """Use an agent run's Eq. 5 importance for the SAAS weights."""
    from saas.agents import importance_from_run

    prepared.agent_run = run
    prepared.importance = importance_from_run(run, [i.id for i in prepared.dataset.instances])
    prepared.scores_source = f"agents:{run.backend}"


def prepare(
    config: RunConfig,
    *,
    lm: LoadedModel | None = None,
    dataset: BehaviourDataset | None = None,
    progress: Progress | None = None,
    refresh_agents: bool = False,
    api_key: str | None = None,
) -> Prepared:
    """Everything expensive, each piece cached on disk (see module doc)."""
    from saas.weighting import load_scores_table

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if dataset is None:
        dataset = load_dataset(config.dataset, format=dataset_format(config.format), limit=config.limit)
    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype, progress=progress)
    timings["load"] = time.perf_counter() - t0
    # Before any forward pass: every prompt + answer must fit (fails fast with file, line, field).
    dataset, lengths = check_lengths(lm, dataset, max_tokens=config.max_tokens,
                                     max_prompt_tokens=config.max_prompt_tokens)
    t0 = time.perf_counter()
    acts = extract_activations(lm, dataset, batch_size=config.batch_size, progress=progress, scores=config.model_scores)
    timings["activations"] = time.perf_counter() - t0
    prepared = Prepared(config, lm, dataset, acts, split_indices(len(dataset), config.seed), lengths=lengths)
    if config.scores:
        table = load_scores_table(config.scores)
        prepared.importance = table.align([i.id for i in dataset.instances])
        prepared.scores_source = f"table:{config.scores}"
    elif config.agents != "none":
        t0 = time.perf_counter()
        backend = agent_backend(config, lm, api_key)
        set_agent_run(prepared, run_agents_for(prepared, backend, refresh=refresh_agents, progress=progress))
        timings["agents"] = time.perf_counter() - t0
    if config.model_scores:
        t0 = time.perf_counter()
        prepared.logit_diff, prepared.conf = _model_scores(lm, dataset, acts, progress)
        timings["model_scores"] = time.perf_counter() - t0
    prepared.timings = timings
    return prepared


def _rel_t(t: float, s_spread: float, own: np.ndarray) -> float:
    own_spread = spread(own)
    tau = t / s_spread if s_spread > 1e-12 else 1.0
    return max(tau * own_spread, 1e-6) if own_spread > 1e-12 else 1.0


def consistency_groups(dataset: BehaviourDataset, indices: list[int], consistency: str) -> list[str] | None:
    """The groups the consistency test needs: for ``"polarity-balanced"`` on token answers (Yes/No,
    A/B) the positive answer token of each pair (:func:`saas.diagnostics.positive_tokens`, the same
    key the answer-token confound check splits by); None for ``"mean"`` or sentence answers."""
    from saas.diagnostics import positive_tokens

    if consistency == "mean" or dataset.answer_kind == "sentence":
        return None
    return positive_tokens([dataset.instances[i] for i in indices])


def fixed_vectors(prepared: Prepared, layer: int) -> dict[str, np.ndarray]:
    """CAA and the PCA baselines of the training split at one layer (independent of kappa and t)."""
    pos, neg = prepared.acts.layer(layer)
    idx = prepared.train
    return baselines.unweighted_vectors(pos[idx], neg[idx])


def cheap_projection(prepared: Prepared, layer: int, axis: str, shrinkage: str | float,
                     consistency: str = "mean") -> Projection:
    """The Fisher / mean-difference projection of the training instances at one layer (with the
    consistency test's cosines against the ``consistency`` reference)."""
    pos, neg = prepared.acts.layer(layer)
    idx = prepared.train
    groups = consistency_groups(prepared.dataset, idx, consistency)
    return project(pos[idx], neg[idx], axis=axis, shrinkage=shrinkage,  # type: ignore[arg-type]
                   consistency=consistency, groups=groups)  # type: ignore[arg-type]


def compute(
    prepared: Prepared,
    *,
    layer: int | None = None,
    kappa: float | None = None,
    axis: str | None = None,
    temperature: float | None = None,
    projection: Projection | None = None,
    methods: tuple[str, ...] | None = None,
    consistency: str | None = None,
    fixed: dict[str, np.ndarray] | None = None,
) -> MethodResult:
    """Eligibility, weights and every method's vector on the training split (cheap: no model).

    Args default to the run's config. Pass ``projection`` (from :func:`cheap_projection`) to skip
    the Fisher solve when only kappa or t moved, and ``fixed`` (from :func:`fixed_vectors`) to skip
    the PCAs, which no kappa or t changes.
    """
    cfg = prepared.config
    if layer is None:
        layer = cfg.layer if cfg.layer is not None else default_layer(prepared.acts.n_layers)
    kappa = cfg.kappa if kappa is None else kappa
    axis = cfg.axis if axis is None else axis
    consistency = cfg.consistency if consistency is None else consistency
    if projection is None:
        projection = cheap_projection(prepared, layer, axis, cfg.shrinkage, consistency)
    idx = prepared.train
    ids = [prepared.dataset.instances[i].id for i in idx]
    elig = apply_cutoff(projection, kappa=kappa, ids=ids)
    eligible = np.asarray(elig.eligible, dtype=bool)
    s = np.zeros(len(idx)) if prepared.importance is None else np.asarray(prepared.importance)[idx]
    if prepared.importance is not None and not np.isfinite(s[eligible]).all():
        missing = [ids[k] for k in np.flatnonzero(eligible & ~np.isfinite(s))][:3]
        raise ValueError(f"eligible instances without an importance score, e.g. {missing}")
    s = np.where(np.isfinite(s), s, 0.0)
    t = temperature if temperature is not None else (cfg.temperature if cfg.temperature is not None else auto_temperature(s, eligible))
    pos, neg = prepared.acts.layer(layer)
    pos, neg = pos[idx], neg[idx]
    weights = softmax_weights(s, t, eligible) if eligible.any() else np.zeros(len(idx))
    s_spread = spread(s, eligible)
    ld = None if prepared.logit_diff is None else prepared.logit_diff[idx]
    cf = None if prepared.conf is None else prepared.conf[idx]
    arrays = baselines.compute_vectors(pos, neg, eligible=eligible, importance=s, t=t, fixed=fixed)
    diffs = pos - neg
    if ld is not None:
        arrays[baselines.LOGIT_DIFF] = baselines.score_weighted(diffs, ld, _rel_t(t, s_spread, ld))
    if cf is not None:
        arrays[baselines.CONF] = baselines.score_weighted(diffs, cf, _rel_t(t, s_spread, cf))
    fp, dh = prepared.lm.fingerprint, prepared.dataset.content_hash()
    summary = summarize(weights, t) if eligible.any() else summarize(np.full(len(idx), 1.0 / max(len(idx), 1)), t)
    meta = {"kappa": kappa, "axis": axis, "consistency": projection.consistency, "temperature": t, "split_seed": cfg.seed, "n_train": len(idx),
            "n_eligible": int(eligible.sum()), "scores": prepared.scores_source}
    vectors = {
        m: SteeringVector.from_array(v.astype(np.float32), layer, m, model_fingerprint=fp, dataset_hash=dh, **meta)
        for m, v in arrays.items() if methods is None or m in methods
    }
    if baselines.SAAS in vectors:
        vectors[baselines.SAAS].meta["weights"] = summary.to_dict()
    return MethodResult(layer, projection, elig, float(t), s, weights, summary, vectors)


# --- artifacts ---------------------------------------------------------------------------------


def run_steerability(prepared: Prepared, result: MethodResult, *, only_cached: bool = False,
                     progress: Progress | None = None) -> Any:
    """Per-instance steerability of the training pairs under the run's CAA vector at the result's
    layer (:func:`saas.diagnostics.steerability`; cached on disk). ``only_cached``: never run the model."""
    from saas.diagnostics import steerability

    if baselines.CAA not in result.vectors:
        return None
    return steerability(prepared.lm, prepared.instances("train"), prepared.dataset.answer_kind,
                        result.vectors[baselines.CAA], batch_size=prepared.config.batch_size,
                        only_cached=only_cached, progress=progress)


def write_run(prepared: Prepared, result: MethodResult, out: str | Path, steer: Any = None) -> Path:
    """``eligibility.csv``, ``weights.csv``, ``vectors/<method>.safetensors`` (+ ``.json``), the
    agents' ``subbehaviours.json`` + ``relevance.csv`` when they ran, ``config.json``,
    ``split.json`` and ``summary.json``. ``steer`` (a :class:`saas.diagnostics.Steerability` of the
    training pairs, from :func:`run_steerability`) adds a ``steerability`` column and its shares."""
    from saas.export import save_vector

    out = Path(out)
    (out / "vectors").mkdir(parents=True, exist_ok=True)
    idx = prepared.train
    insts = [prepared.dataset.instances[i] for i in idx]
    frame = result.eligibility.to_frame()
    if steer is not None:  # a diagnostic: the method does not use it either
        frame["steerability"] = steer.align([i.id for i in insts])
    if is_annotated(insts):  # for the reader; the method never read these columns
        frame["quality"] = [i.quality or "" for i in insts]
        frame["facet"] = [i.facet or "" for i in insts]
    frame.to_csv(out / "eligibility.csv", index=False)
    weights = pd.DataFrame({"id": [i.id for i in insts], "score": result.importance, "weight": result.weights,
                            "eligible": result.eligibility.eligible})
    if is_annotated(insts):
        weights["quality"] = [i.quality or "" for i in insts]
    weights.to_csv(out / "weights.csv", index=False)
    for method, vec in result.vectors.items():
        save_vector(vec, out / "vectors" / method)
    if prepared.agent_run is not None:
        prepared.agent_run.save(out / "agents")
    ids = [i.id for i in prepared.dataset.instances]
    _write_json(out / "split.json", {k: [ids[i] for i in v] for k, v in prepared.split.items()})
    cfg = prepared.config.to_dict() | {"layer": result.layer, "temperature": result.temperature}
    _write_json(out / "config.json", cfg)
    elig = result.eligibility
    summary: dict[str, Any] = {
        "model": prepared.lm.name, "model_fingerprint": prepared.lm.fingerprint,
        "dataset": prepared.dataset.name, "dataset_source": prepared.dataset.source,
        "dataset_hash": prepared.dataset.content_hash(), "answer_kind": prepared.dataset.answer_kind,
        "n_instances": len(prepared.dataset), "split_sizes": {k: len(v) for k, v in prepared.split.items()},
        "layer": result.layer, "kappa": elig.kappa, "axis": elig.axis, "consistency": elig.consistency,
        "D": elig.D, "cutoff": elig.cutoff,
        "shrinkage": {"method": elig.shrinkage_method, "value": elig.shrinkage},
        "eligibility": elig.counts, "eligibility_message": elig.message,
        "temperature": result.temperature, "weights": result.summary.to_dict(),
        "scores_source": prepared.scores_source, "methods": sorted(result.vectors),
        "vector_norms": {m: v.norm() for m, v in result.vectors.items()},
        "timings_s": {k: round(v, 3) for k, v in prepared.timings.items()},
        "lengths": None if prepared.lengths is None else prepared.lengths.to_dict(),
    }
    notes = annotation_summary(elig, result.weights, insts)
    if notes:
        summary["annotations"] = notes
    if steer is not None:
        from saas.diagnostics import steerability_shares

        slopes = steer.align([i.id for i in insts])
        summary["steerability"] = {"vector": steer.method, "layer": steer.layer, "alphas": steer.alphas.tolist(),
                                   **steerability_shares(slopes, elig.eligible)}
        if is_annotated(insts):
            from saas.annotated import steerability_by_quality

            table = steerability_by_quality(slopes, elig.eligible, insts)
            summary["steerability"]["by_quality"] = {r["quality"]: {k: r[k] for k in table.columns if k != "quality"}
                                                     for r in table.to_dict("records")}
    if prepared.dataset.answer_kind != "sentence" and not elig.empty:
        from saas.diagnostics import confound_check

        summary["answer_tokens"] = confound_check(insts, elig.eligible, result.weights).to_dict()
    if prepared.agent_run is not None:
        summary["agents"] = {"backend": prepared.agent_run.backend, "model": prepared.agent_run.model,
                             "stats": {k: _stats(v) for k, v in prepared.agent_run.stats.items()}}
    _write_json(out / "summary.json", summary)
    return out


def _stats(s: Any) -> Any:
    return s.to_dict() if hasattr(s, "to_dict") else (asdict(s) if hasattr(s, "__dataclass_fields__") else str(s))


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


@dataclass
class RunBundle:
    """A run read back from disk (what ``saas eval`` and ``saas generate`` need)."""

    path: Path
    config: RunConfig
    summary: dict[str, Any]
    split: dict[str, list[str]]
    vectors: dict[str, SteeringVector]


def load_run(path: str | Path) -> RunBundle:
    from saas.export import load_vector

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.json): create one with `saas run --out {path}`")
    config = RunConfig.from_dict(json.loads((path / "config.json").read_text()))
    summary = json.loads((path / "summary.json").read_text())
    split = json.loads((path / "split.json").read_text())
    vectors = {p.stem: load_vector(p.with_suffix("")) for p in sorted((path / "vectors").glob("*.safetensors"))}
    return RunBundle(path, config, summary, split, vectors)


def instances_by_ids(dataset: BehaviourDataset, ids: list[str]) -> list[Any]:
    by_id = {i.id: i for i in dataset.instances}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"the dataset no longer has instances {missing[:3]} of this run's split: was the file changed?")
    return [by_id[i] for i in ids]


def evaluate_run(bundle: RunBundle, lm: LoadedModel, dataset: BehaviourDataset, alphas: list[float],
                 split: str = "test", methods: list[str] | None = None, progress: Progress | None = None,
                 norm_matched: bool = False) -> pd.DataFrame:
    """Alignment probability per method and alpha on a held-out split of a saved run.

    ``norm_matched``: every vector is rescaled to the run's CAA vector's norm at the same layer
    first (the ``norm`` column says which), so that only the directions differ."""
    from saas.evaluation import alpha_sweep

    if bundle.summary.get("dataset_hash") not in (None, dataset.content_hash()):
        log.warning("the dataset changed since this run was made (hash differs)")
    insts = instances_by_ids(dataset, bundle.split[split])
    keep, used = evaluation_pairs(insts)  # annotated data: the clean held-out pairs only
    if not keep:
        raise ValueError(f"no pair of the {split} split is usable for evaluation: {used}")
    vectors = {m: v for m, v in bundle.vectors.items() if methods is None or m in methods}
    if norm_matched:
        from saas.steering import match_norms

        if baselines.CAA not in bundle.vectors:
            raise ValueError("a norm-matched evaluation needs the run's CAA vector (vectors/caa.safetensors)")
        matched = match_norms({**vectors, baselines.CAA: bundle.vectors[baselines.CAA]}, baselines.CAA)
        vectors = {m: matched[m] for m in vectors}
    df = alpha_sweep(lm, [insts[k] for k in keep], dataset.answer_kind, vectors, alphas)
    df.insert(2, "split", split)
    df["pairs"] = used
    df["norm"] = "matched to CAA" if norm_matched else "as extracted"
    return df


def run_hash(config: RunConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
