"""One call for the command line: build the backend, run the three agents with a progress bar, save.

``saas agents --dataset D --out DIR [--agents offline|anthropic|local|auto] [--refresh]`` and
``saas run --agents ...`` both come down to :func:`run_agents_to_dir`; ``saas run`` then turns the
result into SAAS weights with :func:`saas.agents.importance_from_run` (Eq. 5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from saas.agents.backend import AgentBackend, make_backend
from saas.agents.overlay import Overlay
from saas.agents.pipeline import AgentRun, Progress, run_agents
from saas.data import BehaviourDataset


def tqdm_progress(desc: str = "agents") -> tuple[Progress, Callable[[], None]]:
    """A ``progress(done, total, message)`` callable drawing a tqdm bar, and a function that closes it."""
    from tqdm.auto import tqdm

    bar: dict[str, Any] = {}

    def progress(done: int, total: int, message: str) -> None:
        stage = message.split(":", 1)[0]
        if bar.get("stage") != stage or bar.get("total") != total:
            if "bar" in bar:
                bar["bar"].close()
            bar.update(stage=stage, total=total, bar=tqdm(total=total, desc=f"{desc} {stage}", leave=False))
        b = bar["bar"]
        b.n = done
        b.set_postfix_str(message.split(":", 1)[-1].strip(), refresh=False)
        b.refresh()

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return progress, close


def run_agents_to_dir(
    dataset: BehaviourDataset,
    backend: AgentBackend | str = "auto",
    out_dir: str | Path | None = None,
    *,
    train_ids: Sequence[str] | None = None,
    eligible_ids: Sequence[str] | None = None,
    seed: int = 0,
    threshold: float = 2.0,
    refresh: bool = False,
    overlay: Overlay | str | Path | None = None,
    show_progress: bool = True,
    batch_size: int | None = None,
    **backend_kw: Any,
) -> AgentRun:
    """Run Agent-1/2/3 on ``dataset`` and (if ``out_dir``) write ``subbehaviours.json`` + ``relevance.csv``.

    Args:
        dataset: The behaviour.
        backend: A backend, or a name for :func:`make_backend` (``"auto"``: Claude with a key, else offline).
        out_dir: Where to save the run (created); None to only return it.
        train_ids, eligible_ids, seed, threshold, refresh, batch_size: See :func:`run_agents`.
        overlay: User edits, or the path of a saved overlay JSON (ignored if the file does not exist).
        show_progress: Draw tqdm bars.
        **backend_kw: For :func:`make_backend` (``api_key=``, ``model=``, ``model_path=``, ...).

    Returns:
        The run; ``run.summary()`` gives calls, cache hits and wall time per stage.
    """
    if isinstance(backend, str):
        backend = make_backend(backend, **backend_kw)
    if isinstance(overlay, (str, Path)):
        overlay = Overlay.load(overlay) if Path(overlay).exists() else None
    progress, close = tqdm_progress() if show_progress else (None, lambda: None)
    try:
        run = run_agents(
            dataset,
            backend,
            train_ids=train_ids,
            eligible_ids=eligible_ids,
            seed=seed,
            threshold=threshold,
            refresh=refresh,
            progress=progress,
            overlay=overlay,
            batch_size=batch_size,
        )
    finally:
        close()
    if out_dir is not None:
        run.save(out_dir)
    return run
