"""The on-disk agent call cache: every call stored, so a rerun costs nothing and any score can be audited.

Layout (under ``cache_dir("agents")``, i.e. ``cache/agents/`` or ``$SAAS_CACHE_DIR/agents/``)::

    calls/<key>.json     one file per call
    index/<key>.json     per-instance Agent-3 results (see saas.agents.pipeline.score_instances)

A call's key is ``sha256`` of ``(backend name, model, PROMPT_VERSION, full prompt, params)``; the key
is also the call id that every score carries. A call file holds the backend, model, prompt version,
full prompt, params, raw reply, parsed result (or the validation error), token usage, seconds and a
timestamp. It never holds an API key (keys are not part of any of those fields).

Writes are atomic (temporary file + ``os.replace``), so a run killed half-way leaves only whole
files behind and resumes from them. A file that cannot be read is treated as a miss, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from saas.agents.prompts import PROMPT_VERSION
from saas.agents.types import ReplyError
from saas.paths import cache_dir

T = TypeVar("T")

__all__ = ["CallCache", "CallSession", "ReplyError", "StageStats", "call_key"]

#: Usage fields summed into :class:`StageStats` (the Anthropic Messages API's names; other backends
#: report what they have). ``input_tokens`` counts only the uncached input tokens of a call.
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def call_key(backend: str, model: str, prompt: str, params: dict[str, Any], version: str = PROMPT_VERSION) -> str:
    """The content key of one call: sha256 of (backend, model, prompt version, full prompt, params)."""
    payload = json.dumps(
        {"backend": backend, "model": model, "prompt_version": version, "prompt": prompt, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1, default=str)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are ordinary artifacts
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> Any | None:
    if not path.exists():
        return None
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        warnings.warn(f"agent cache: ignoring unreadable file {path} ({err}); treating it as a miss", stacklevel=3)
        return None


class CallCache:
    """One JSON file per call under ``root`` (default ``cache_dir("agents")``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir("agents")

    def path(self, key: str) -> Path:
        """The file of one call."""
        return self.root / "calls" / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record of a call, or None (missing, or unreadable: then a warning)."""
        data = _read_json(self.path(key))
        if data is not None and (not isinstance(data, dict) or "raw" not in data):
            warnings.warn(f"agent cache: {self.path(key)} has no raw reply; treating it as a miss", stacklevel=2)
            return None
        return data

    def put(self, record: dict[str, Any]) -> None:
        """Store a call record (atomically)."""
        _atomic_write_json(self.path(record["key"]), record)

    def get_index(self, key: str) -> dict[str, Any] | None:
        """One instance's Agent-3 result from the per-instance index (None if absent or unreadable)."""
        path = self.root / "index" / f"{key}.json"
        data = _read_json(path)
        if data is not None and not isinstance(data, dict):
            warnings.warn(f"agent cache: {path} is not an index record; treating it as a miss", stacklevel=2)
            return None
        return data

    def put_index(self, key: str, data: dict[str, Any]) -> None:
        """Store one instance's Agent-3 result in the per-instance index."""
        _atomic_write_json(self.root / "index" / f"{key}.json", data)

    def files(self) -> list[Path]:
        """All call files (for audits and tests)."""
        d = self.root / "calls"
        return sorted(d.glob("*.json")) if d.exists() else []


@dataclass
class StageStats:
    """Counters of one agent stage.

    Attributes:
        calls: Calls actually made (cache misses).
        cache_hits: Calls answered from the cache.
        index_hits: Agent-3 instances whose scores were reused from the per-instance index (no call
            replayed at all: a rerun, or a different subset of already-scored instances).
        seconds: Wall time of the stage (set by the pipeline).
        call_seconds: Summed duration of the calls made.
        input_tokens: Uncached input tokens of the calls made (LLM backends).
        output_tokens: Output tokens of the calls made.
        cache_creation_input_tokens: Input tokens written to the provider's prompt cache (Anthropic:
            billed at a premium, once per cached prefix).
        cache_read_input_tokens: Input tokens read from the provider's prompt cache (billed at a
            fraction of the normal price).
    """

    calls: int = 0
    cache_hits: int = 0
    index_hits: int = 0
    seconds: float = 0.0
    call_seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total_input_tokens(self) -> int:
        """Uncached + cache-written + cache-read input tokens."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def describe(self) -> str:
        """One line: calls, cache hits, reused instances, time and (when any) token usage."""
        line = (
            f"{self.calls} calls, {self.cache_hits} cache hits, {self.index_hits} reused instances, "
            f"{self.seconds:.2f} s"
        )
        if self.total_input_tokens or self.output_tokens:
            line += (
                f"; input tokens {self.total_input_tokens} ({self.input_tokens} uncached, "
                f"{self.cache_creation_input_tokens} written to and {self.cache_read_input_tokens} read from "
                f"the prompt cache), output tokens {self.output_tokens}"
            )
        return line

    def to_dict(self) -> dict[str, Any]:
        """All counters, JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageStats:
        """Inverse of :meth:`to_dict` (unknown keys ignored, missing ones zero)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class CallSession:
    """A cache plus the counters of one run; backends make every call through :meth:`call`.

    Attributes:
        cache: Where calls are stored.
        refresh: If True, cached replies are not read (new calls are made and stored).
        stats: Per-stage counters, keyed by stage name (``"agent1"``, ``"agent2"``, ``"agent3"``).
    """

    cache: CallCache = field(default_factory=CallCache)
    refresh: bool = False
    stats: dict[str, StageStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stage(self, name: str) -> StageStats:
        """The counters of one stage (created on first use)."""
        with self._lock:
            return self.stats.setdefault(name, StageStats())

    def count(self, stage: str, **increments: int) -> None:
        """Add to a stage's integer counters, e.g. ``count("agent3", index_hits=1)``."""
        st = self.stage(stage)
        with self._lock:
            for name, n in increments.items():
                setattr(st, name, getattr(st, name) + n)

    def call(
        self,
        stage: str,
        backend: str,
        model: str,
        prompt: str,
        params: dict[str, Any],
        invoke: Callable[[], tuple[Any, dict[str, Any]]],
        parse: Callable[[Any], T],
    ) -> tuple[T, str]:
        """Make (or replay) one call and parse its reply.

        Args:
            stage: Stage name for the counters.
            backend, model, prompt, params: The call's identity (hashed into its key).
            invoke: Makes the call; returns ``(raw reply (JSON-able), usage dict)``.
            parse: Validates a raw reply and returns the parsed result; raises ReplyError if invalid.

        Returns:
            ``(parsed result, call id)``.

        Raises:
            ReplyError: The reply (new or cached) is invalid. A new reply is cached before this is
                raised, so the caller's retry (with different params) does not repeat it.
        """
        key = call_key(backend, model, prompt, params)
        stats = self.stage(stage)
        record = None if self.refresh else self.cache.get(key)
        if record is not None:
            with self._lock:
                stats.cache_hits += 1
            return parse(record["raw"]), key

        t0 = time.perf_counter()
        raw, usage = invoke()
        seconds = time.perf_counter() - t0
        record = {
            "key": key,
            "backend": backend,
            "model": model,
            "prompt_version": PROMPT_VERSION,
            "stage": stage,
            "prompt": prompt,
            "params": params,
            "raw": raw,
            "parsed": None,
            "error": None,
            "usage": usage,
            "seconds": round(seconds, 4),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self._lock:
            stats.calls += 1
            stats.call_seconds += seconds
            for name in TOKEN_FIELDS:
                setattr(stats, name, getattr(stats, name) + int(usage.get(name) or 0))
        try:
            parsed = parse(raw)
        except ReplyError as err:
            record["error"] = str(err)
            self.cache.put(record)
            raise
        record["parsed"] = _jsonable(parsed)
        self.cache.put(record)
        return parsed, key


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
