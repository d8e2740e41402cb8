"""Claude as the three agents, through the official ``anthropic`` SDK (2.x, which speaks ``httpx2``).

- Structured output: every call offers exactly one tool whose ``input_schema`` is the reply's JSON
  schema, and ``tool_choice`` forces it; the reply is read from the ``tool_use`` block only.
- HTTP faults (429, 5xx, timeouts, connection errors) are retried by the SDK itself
  (``max_retries``, exponential backoff honouring ``retry-after``); what is left becomes an
  :class:`AgentError` with the status and the SDK's message (never the key).
- Reply faults: no ``tool_use`` block / empty reply / wrong types -> the call is asked again once
  with a note on what was wrong (``reply_retries``), then AgentError. Out-of-range numbers are clipped
  and flagged. Ids the reply invents are ignored and noted; ids it leaves out are asked again (Agent-2
  here, Agent-3 in the pipeline), then AgentError. K outside [5, 10] is asked again, then clipped to
  10 or refused below 5.
- The key comes from ``api_key=`` (the app passes Streamlit secrets) or ``$ANTHROPIC_API_KEY``. It is
  given to the SDK client and kept nowhere else: not in the backend's fields, repr, cache or logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from saas.agents import prompts
from saas.agents.backend import BatchScores, DraftSubBehaviour
from saas.agents.cache import CallSession, ReplyError
from saas.agents.types import AgentError, Behaviour, ContributionResult, clip_score
from saas.data import Instance

T = TypeVar("T")

#: A current Claude Sonnet id from the SDK's own ``anthropic.types.Model`` Literal (checked in tests).
DEFAULT_MODEL = "claude-sonnet-5-5"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def tool_input(raw: dict[str, Any], tool_name: str) -> dict[str, Any]:
    """The ``input`` of the reply's ``tool_use`` block for ``tool_name``; ReplyError if there is none."""
    content = raw.get("content") or []
    if not content:
        raise ReplyError(f"empty reply (stop_reason={raw.get('stop_reason')!r})")
    for block in content:
        if block.get("type") == "tool_use" and block.get("name") == tool_name:
            data = block.get("input")
            if not isinstance(data, dict):
                raise ReplyError(f"tool {tool_name} was called with a non-object input")
            return data
    kinds = [b.get("type") for b in content]
    raise ReplyError(f"no tool_use block for {tool_name} in the reply (blocks: {kinds})")


def parse_decomposition(raw: dict[str, Any]) -> list[dict[str, str]]:
    data = tool_input(raw, prompts.DECOMPOSE_TOOL["name"])
    items = data.get("subbehaviours")
    if not isinstance(items, list):
        raise ReplyError("'subbehaviours' is missing or not a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ReplyError("a sub-behaviour is not an object")
        name, desc = item.get("name"), item.get("description")
        if not isinstance(name, str) or not isinstance(desc, str) or not name.strip() or not desc.strip():
            raise ReplyError("a sub-behaviour lacks a non-empty string name or description")
        out.append({"name": name.strip(), "description": desc.strip()})
    return out


def parse_ratings(raw: dict[str, Any], wanted: Sequence[str]) -> dict[str, Any]:
    """``{"ratings": {id: [value, repaired, rationale]}, "extra": [...]}``; ReplyError on non-numbers."""
    data = tool_input(raw, prompts.RATE_TOOL["name"])
    items = data.get("ratings")
    if not isinstance(items, list):
        raise ReplyError("'ratings' is missing or not a list")
    ratings: dict[str, Any] = {}
    extra: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            raise ReplyError("a rating is not an object")
        sid = str(item.get("id"))
        if sid not in wanted:
            extra.append(sid)
            continue
        value = item.get("contribution")
        if not _is_number(value):
            raise ReplyError(f"contribution of {sid} is not a number: {value!r}")
        if sid not in ratings:
            c, repaired = clip_score(float(value))
            ratings[sid] = [c, repaired, str(item.get("rationale", "")).strip()]
    return {"ratings": ratings, "extra": extra}


def parse_relevance(raw: dict[str, Any], ids: Sequence[str], sub_ids: Sequence[str]) -> dict[str, Any]:
    """``{"scores": {id: [..K]}, "flags": {id: [..K]}, "extra": [...]}``; ReplyError on non-numbers."""
    data = tool_input(raw, "record_relevance")
    items = data.get("scores")
    if not isinstance(items, list):
        raise ReplyError("'scores' is missing or not a list")
    scores: dict[str, list[float]] = {}
    flags: dict[str, list[bool]] = {}
    extra: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            raise ReplyError("a score entry is not an object")
        iid = str(item.get("instance_id"))
        if iid not in ids:
            extra.append(iid)
            continue
        rel = item.get("relevance")
        if not isinstance(rel, dict):
            raise ReplyError(f"relevance of instance {iid} is not an object")
        row, row_flags = [], []
        for sid in sub_ids:
            value = rel.get(sid)
            if not _is_number(value):
                raise ReplyError(f"score of instance {iid} for {sid} is not a number: {value!r}")
            s, repaired = clip_score(float(value))
            row.append(s)
            row_flags.append(repaired)
        if iid not in scores:
            scores[iid], flags[iid] = row, row_flags
    return {"scores": scores, "flags": flags, "extra": extra}


class AnthropicBackend:
    """Claude through the ``anthropic`` SDK.

    Args:
        model: Model id (default :data:`DEFAULT_MODEL`).
        api_key: The key; default ``$ANTHROPIC_API_KEY``. Ignored when ``client`` is given.
        client: A ready ``anthropic.Anthropic`` client (tests inject one with a mock transport).
        max_concurrency: Agent-3 calls in flight at once.
        batch_size: Instances per Agent-3 call.
        timeout: Seconds per HTTP request (the SDK retries timeouts).
        max_retries: SDK retries for 408/409/429/5xx/timeouts/connection errors.
        max_tokens: Reply token limit.
        reply_retries: How often a malformed reply is asked again before AgentError.
    """

    name = "anthropic"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        client: Any | None = None,
        max_concurrency: int = 4,
        batch_size: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        max_tokens: int = 4096,
        reply_retries: int = 1,
    ) -> None:
        import anthropic

        if client is None:
            key = api_key or os.environ.get("ANTHROPIC_API_KEY")
            if not key:
                raise AgentError(
                    "no Anthropic API key: set ANTHROPIC_API_KEY (or Streamlit secrets in the app), "
                    "or use the offline backend"
                )
            client = anthropic.Anthropic(api_key=key)
        self._client = client.with_options(timeout=timeout, max_retries=max_retries)
        self.model = model
        self.model_id = model
        self.max_concurrency = max(1, int(max_concurrency))
        self.batch_size = max(1, int(batch_size))
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.reply_retries = max(0, int(reply_retries))

    def __repr__(self) -> str:
        return f"AnthropicBackend(model={self.model!r}, batch_size={self.batch_size})"

    @property
    def signature(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens}

    # --- one call ---------------------------------------------------------------------------

    def _invoke(self, user: str, tool: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        import anthropic

        try:
            message = self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=prompts.SYSTEM_PROMPT,
                messages=[{"role": "user", "content": user}],
                tools=[tool],
                tool_choice={"type": "tool", "name": tool["name"]},
            )
        except anthropic.APITimeoutError as err:
            raise AgentError(
                f"Anthropic request timed out ({self.timeout:.0f} s) after {self.max_retries} retries"
            ) from err
        except anthropic.APIConnectionError as err:
            raise AgentError(f"cannot reach the Anthropic API after {self.max_retries} retries: {err}") from err
        except anthropic.AuthenticationError as err:
            raise AgentError("Anthropic rejected the API key (401): check ANTHROPIC_API_KEY") from err
        except anthropic.APIStatusError as err:
            raise AgentError(
                f"Anthropic API error {err.status_code} after {self.max_retries} retries: {err.message}"
            ) from err
        raw = message.to_dict()
        usage = {k: v for k, v in (raw.get("usage") or {}).items() if isinstance(v, (int, float))}
        return raw, usage

    def _call(
        self,
        session: CallSession,
        stage: str,
        user: str,
        tool: dict[str, Any],
        parse: Callable[[Any], T],
    ) -> tuple[T, str]:
        """One tool call, asked again (with a note on the error) up to ``reply_retries`` times."""
        error: ReplyError | None = None
        for attempt in range(self.reply_retries + 1):
            text = user
            if error is not None:
                text += (
                    f"\n\nYour previous reply was invalid ({error}). Call the tool `{tool['name']}` "
                    "once, with arguments that follow its schema exactly."
                )
            full_prompt = f"[system]\n{prompts.SYSTEM_PROMPT}\n\n[user]\n{text}"
            params = {**self.signature, "tool": tool, "attempt": attempt}
            try:
                return session.call(
                    stage, self.name, self.model_id, full_prompt, params, lambda t=text: self._invoke(t, tool), parse
                )
            except ReplyError as err:
                error = err
        raise AgentError(f"{stage}: Claude's reply was invalid after {self.reply_retries + 1} attempts: {error}")

    # --- the three agents -----------------------------------------------------------------------

    def decompose(
        self,
        behaviour: Behaviour,
        examples: Sequence[Instance],
        pool: Sequence[Instance],
        *,
        seed: int,
        session: CallSession,
    ) -> list[DraftSubBehaviour]:
        user = prompts.decompose_prompt(behaviour.name, behaviour.description, examples, tool=True)
        items: list[dict[str, str]] = []
        for attempt in range(self.reply_retries + 1):
            note = (
                ""
                if attempt == 0
                else (
                    f"\n\nYour previous reply had {len(items)} sub-behaviours; give between "
                    f"{prompts.K_MIN} and {prompts.K_MAX}."
                )
            )
            items, _ = self._call(session, "agent1", user + note, prompts.DECOMPOSE_TOOL, parse_decomposition)
            if prompts.K_MIN <= len(items) <= prompts.K_MAX:
                break
        if len(items) < prompts.K_MIN:
            raise AgentError(
                f"agent1: Claude gave {len(items)} sub-behaviours (fewer than {prompts.K_MIN}) "
                f"after {self.reply_retries + 1} attempts"
            )
        return [DraftSubBehaviour(i["name"], i["description"]) for i in items[: prompts.K_MAX]]

    def rate(self, behaviour: Behaviour, subs: Sequence[Any], *, session: CallSession) -> list[ContributionResult]:
        results: dict[str, ContributionResult] = {}
        todo = list(subs)
        for _round in range(2):  # the full list, then once more for any id the reply left out
            wanted = [s.id for s in todo]
            user = prompts.rate_prompt(behaviour.name, behaviour.description, todo)
            parsed, call_id = self._call(
                session, "agent2", user, prompts.RATE_TOOL, lambda raw, w=wanted: parse_ratings(raw, w)
            )
            for sid, (c, repaired, rationale) in parsed["ratings"].items():
                results[sid] = ContributionResult(sid, c, rationale, repaired, call_id)
            todo = [s for s in todo if s.id not in results]
            if not todo:
                break
        if todo:
            raise AgentError(f"agent2: Claude did not rate {[s.id for s in todo]} even when asked again")
        return [results[s.id] for s in subs]

    def score_batch(self, instances: Sequence[Instance], subs: Sequence[Any], *, session: CallSession) -> BatchScores:
        ids = [i.id for i in instances]
        sub_ids = [s.id for s in subs]
        user = prompts.score_prompt(subs, instances)
        parsed, call_id = self._call(
            session,
            "agent3",
            user,
            prompts.score_tool(sub_ids),
            lambda raw: parse_relevance(raw, ids, sub_ids),
        )
        got = [i for i in ids if i in parsed["scores"]]
        notes = []
        if parsed["extra"]:
            notes.append(f"call {call_id[:12]}: ignored ids not in the batch: {sorted(set(parsed['extra']))}")
        k = len(sub_ids)
        return BatchScores(
            got,
            np.asarray([parsed["scores"][i] for i in got], dtype=np.float64).reshape(len(got), k),
            np.asarray([parsed["flags"][i] for i in got], dtype=bool).reshape(len(got), k),
            call_id,
            notes,
        )
