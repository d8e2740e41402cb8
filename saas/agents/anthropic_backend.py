"""Claude as the three agents, through the official ``anthropic`` SDK (2.x, which speaks ``httpx2``).

- Structured output: every call offers exactly one tool whose ``input_schema`` is the reply's JSON
  schema, and ``tool_choice`` forces it; the reply is read from the ``tool_use`` block only.
- HTTP faults (429, 5xx, timeouts, connection errors) are retried by the SDK itself
  (``max_retries``, exponential backoff honouring ``retry-after``); what is left becomes an
  :class:`AgentError` with the status and the SDK's message (never the key) and what to do. The SDK
  does not retry a 401 (invalid key) or a 400 (e.g. a prompt longer than the context window): one
  request, then a clear message. A reply cut off at ``max_tokens`` is an AgentError too (asking
  again with the same limit would be cut off again) and is not cached.
- Prompt caching: Agent-3 sends the same instructions and sub-behaviour list in every batch; that
  block is marked ``cache_control: {"type": "ephemeral"}`` (it follows the tool schema and the
  system prompt, which are the same in every batch too, so the whole prefix is cached). The
  call log stores the reply's ``usage`` as the API reports it: ``input_tokens`` (uncached),
  ``cache_creation_input_tokens`` (written to the cache) and ``cache_read_input_tokens`` (read from
  it); :class:`saas.agents.cache.StageStats` sums them per stage. A prefix shorter than the model's
  minimum cacheable length is simply not cached (the API reports zero cache tokens).
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
from saas.agents.cache import CallSession
from saas.agents.types import (
    AgentError,
    BatchScores,
    Behaviour,
    ContributionResult,
    DraftSubBehaviour,
    ReplyError,
    SubBehaviour,
    clip_score,
)
from saas.data import Instance

#: The prompt-cache marker on Agent-3's repeated block.
CACHE_CONTROL: dict[str, str] = {"type": "ephemeral"}
_CONTEXT_WORDS = ("prompt is too long", "too long", "context window", "context length")

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
    """Agent-1's sub-behaviours from a ``record_subbehaviours`` tool call."""
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
            c, repaired = clip_score(float(value))  # type: ignore[arg-type]  # checked by _is_number
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
            s, repaired = clip_score(float(value))  # type: ignore[arg-type]  # checked by _is_number
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

    def _invoke(self, stage: str, blocks: Sequence[str], cached: int, tool: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """One Messages API request; the first ``cached`` user blocks end in a prompt-cache marker."""
        import anthropic

        content: list[dict[str, Any]] = [{"type": "text", "text": b} for b in blocks]
        if cached:
            content[cached - 1]["cache_control"] = dict(CACHE_CONTROL)
        try:
            messages: Any = [{"role": "user", "content": content}]
            tools: Any = [tool]
            message = self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=prompts.SYSTEM_PROMPT,
                messages=messages,
                tools=tools,
                tool_choice={"type": "tool", "name": tool["name"]},
            )
        except anthropic.APITimeoutError as err:
            raise AgentError(
                f"{stage}: the Anthropic request timed out ({self.timeout:.0f} s) after {self.max_retries} retries; "
                "try again later, or raise the timeout"
            ) from err
        except anthropic.APIConnectionError as err:
            raise AgentError(
                f"{stage}: cannot reach the Anthropic API after {self.max_retries} retries ({err}); check the "
                "network connection and any proxy settings, or use the offline backend"
            ) from err
        except anthropic.AuthenticationError as err:
            raise AgentError(
                "Anthropic rejected the API key (401 invalid API key): check ANTHROPIC_API_KEY (or the app's "
                "Streamlit secrets), or use the offline backend"
            ) from err
        except anthropic.PermissionDeniedError as err:
            raise AgentError(
                f"Anthropic refused the request (403: {err.message}): the API key has no access to model "
                f"{self.model!r}; pick another model or check the key's workspace"
            ) from err
        except anthropic.BadRequestError as err:
            text = str(err.message)
            if any(w in text.lower() for w in _CONTEXT_WORDS):
                raise AgentError(
                    f"{stage}: the prompt is too long for {self.model} (400: {text}); lower the Agent-3 batch "
                    f"size (now {self.batch_size} instances per call) or shorten the instances"
                ) from err
            raise AgentError(f"{stage}: Anthropic rejected the request (400: {text})") from err
        except anthropic.APIStatusError as err:
            raise AgentError(
                f"Anthropic API error {err.status_code} after {self.max_retries} retries: {err.message}"
            ) from err
        raw: dict[str, Any] = message.to_dict()
        reported: dict[str, Any] = raw.get("usage") or {}
        # input_tokens (uncached), cache_creation_input_tokens, cache_read_input_tokens, output_tokens, ...
        usage = {k: v for k, v in reported.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return raw, usage

    def _call(
        self,
        session: CallSession,
        stage: str,
        user: str | Sequence[str],
        tool: dict[str, Any],
        parse: Callable[[Any], T],
        *,
        cached: int = 0,
    ) -> tuple[T, str]:
        """One tool call, asked again (with a note on the error) up to ``reply_retries`` times.

        ``user`` is the user message, or its blocks; the first ``cached`` blocks are marked for the
        provider's prompt cache. A reply cut off at ``max_tokens`` raises AgentError at once.
        """
        blocks = [user] if isinstance(user, str) else list(user)
        error: ReplyError | None = None
        for attempt in range(self.reply_retries + 1):
            sent = list(blocks)
            if error is not None:
                sent[-1] += (
                    f"\n\nYour previous reply was invalid ({error}). Call the tool `{tool['name']}` "
                    "once, with arguments that follow its schema exactly."
                )
            full_prompt = f"[system]\n{prompts.SYSTEM_PROMPT}\n\n[user]\n" + "\n\n".join(sent)
            params = {**self.signature, "tool": tool, "attempt": attempt, "cached_blocks": cached}

            def checked(raw: Any, sent: list[str] = sent) -> T:
                if isinstance(raw, dict) and raw.get("stop_reason") == "max_tokens":
                    raise AgentError(
                        f"{stage}: Claude's reply hit max_tokens={self.max_tokens} before it was complete; "
                        f"raise max_tokens or lower the batch size (now {self.batch_size} instances per call)"
                    )
                return parse(raw)

            def invoke(sent: list[str] = sent) -> tuple[dict[str, Any], dict[str, Any]]:
                return self._invoke(stage, sent, cached, tool)

            try:
                return session.call(stage, self.name, self.model_id, full_prompt, params, invoke, checked)
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
        """Agent-1 from the description and the sampled ``examples``; K outside [5, 10] is asked again."""
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
        origin = f"written by {self.model} from the behaviour description and {len(examples)} sampled training pairs"
        return [DraftSubBehaviour(i["name"], i["description"], False, origin) for i in items[: prompts.K_MAX]]

    def rate(
        self, behaviour: Behaviour, subs: Sequence[SubBehaviour], *, session: CallSession
    ) -> list[ContributionResult]:
        """Agent-2: one tool call for all sub-behaviours; ids left out are asked again once."""
        results: dict[str, ContributionResult] = {}
        todo = list(subs)
        for _round in range(2):  # the full list, then once more for any id the reply left out
            wanted = [s.id for s in todo]
            user = prompts.rate_prompt(behaviour.name, behaviour.description, todo)
            def parse(raw: Any, w: list[str] = wanted) -> dict[str, Any]:
                return parse_ratings(raw, w)

            parsed, call_id = self._call(session, "agent2", user, prompts.RATE_TOOL, parse)
            for sid, (c, repaired, rationale) in parsed["ratings"].items():
                results[sid] = ContributionResult(sid, c, rationale, repaired, call_id)
            todo = [s for s in todo if s.id not in results]
            if not todo:
                break
        if todo:
            raise AgentError(f"agent2: Claude did not rate {[s.id for s in todo]} even when asked again")
        return [results[s.id] for s in subs]

    def score_batch(
        self, instances: Sequence[Instance], subs: Sequence[SubBehaviour], *, session: CallSession
    ) -> BatchScores:
        """Agent-3 on one batch: contrastive scores; instructions + sub-behaviours are prompt-cached."""
        ids = [i.id for i in instances]
        sub_ids = [s.id for s in subs]
        head, batch = prompts.score_prompt_parts(subs, instances)
        def parse(raw: Any) -> dict[str, Any]:
            return parse_relevance(raw, ids, sub_ids)

        parsed, call_id = self._call(session, "agent3", [head, batch], prompts.score_tool(sub_ids), parse, cached=1)
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
