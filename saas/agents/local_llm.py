"""A local transformers chat model as the three agents (e.g. a 7B instruct model on the user's GPU).

- **Agent-1** by sampling with a strict numbered format (``1. Name: description``), parsed robustly
  (markdown bold, ``1)``, dashes instead of colons, preambles and trailing chatter are tolerated).
  A reply with fewer than 5 items is sampled again with a new seed, up to ``max_attempts`` times,
  then :class:`AgentError`; more than 10 is sampled again too and finally cut to the first 10.
- **Agents 2 and 3** from the next-token distribution: the prompt asks for one digit 0-9; the
  probabilities of the digit tokens (with and without a leading space) are renormalised and their
  expected value E[d] is scaled to [0, 10] as ``10 * E[d] / 9``. The digits' share of the total
  probability mass is stored in the cache and a note is added when it is low (< 0.5): the model is
  then not really answering with a digit. Prompts are batched with left padding.

The embedded SmolLM2-135M is too small for this (measured: flat scores); the backend is for capable
local models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saas.agents import prompts
from saas.agents.cache import CallSession
from saas.agents.types import AgentError, BatchScores, Behaviour, ContributionResult, DraftSubBehaviour, ReplyError

_ITEM = re.compile(r"^\s*(?:[-*]\s*)?(\d{1,2})\s*[.):]\s*(?P<body>.+?)\s*$")
_SPLIT = re.compile(r"\s*(?::|\s[-\u2013\u2014]\s)\s*")
LOW_DIGIT_MASS = 0.5


def parse_numbered_list(text: str) -> list[dict[str, str]]:
    """Parse ``1. Name: description`` lines; lines that do not match are ignored.

    Returns a list of ``{"name", "description"}``; duplicates (same name, case-insensitive) are dropped.
    """
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for line in text.splitlines():
        m = _ITEM.match(line)
        if not m:
            continue
        body = m.group("body").replace("**", "").replace("__", "").strip()
        parts = _SPLIT.split(body, maxsplit=1)
        if len(parts) != 2:
            continue
        name, desc = parts[0].strip(" *_\"'"), parts[1].strip()
        if not name or not desc or len(name.split()) > 8:
            continue
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        out.append({"name": name, "description": desc})
    return out


def digit_token_ids(tokenizer: Any) -> list[list[int]]:
    """For each digit 0-9, the single-token ids that spell it (``"7"`` and ``" 7"`` where they exist)."""
    table: list[list[int]] = []
    for d in range(10):
        ids: list[int] = []
        for s in (str(d), f" {d}"):
            enc = tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(int(enc[0]))
        if not ids:
            raise AgentError(f"the tokenizer has no single token for the digit {d}; the local backend cannot score")
        table.append(ids)
    return table


class LocalLLMBackend:
    """Agents on an already-loaded transformers causal LM.

    Args:
        model: A ``transformers`` causal LM (any device / dtype).
        tokenizer: Its tokenizer (a chat template is used when it has one).
        model_name: Name used in cache keys; default ``model.config._name_or_path``.
        batch_size: Instances per Agent-3 call; ``batch_size * K`` prompts are scored per call in
            micro-batches of ``forward_batch``.
        forward_batch: Prompts per forward pass.
        max_new_tokens: Generation budget for Agent-1.
        temperature: Sampling temperature for Agent-1.
        max_attempts: Agent-1 samples (each with a new seed) before giving up.
    """

    name = "local"
    max_concurrency = 1

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str | None = None,
        batch_size: int = 8,
        forward_batch: int = 16,
        max_new_tokens: int = 600,
        temperature: float = 0.7,
        max_attempts: int = 3,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        cfg = getattr(model, "config", None)
        self.model_id = model_name or getattr(cfg, "_name_or_path", "") or type(model).__name__
        self.batch_size = max(1, int(batch_size))
        self.forward_batch = max(1, int(forward_batch))
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_attempts = max(1, int(max_attempts))
        self._digits: list[list[int]] | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw: Any) -> LocalLLMBackend:
        """Load a model folder (or hub id) with transformers and wrap it."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path))
        model.eval()
        return cls(model, tok, model_name=kw.pop("model_name", str(path)), **kw)

    def __repr__(self) -> str:
        return f"LocalLLMBackend(model={self.model_id!r})"

    @property
    def signature(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens, "scale": "10*E[d]/9"}

    # --- text in, text / distributions out -----------------------------------------------------

    def format_prompt(self, user: str, system: str = prompts.LOCAL_SYSTEM_PROMPT) -> str:
        """The chat-templated prompt ending where the assistant's answer starts."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            try:
                return str(
                    tok.apply_chat_template(
                        [{"role": "system", "content": system}, {"role": "user", "content": user}],
                        tokenize=False,
                        add_generation_prompt=True,
                    )
                )
            except Exception:  # templates without a system role
                return str(
                    tok.apply_chat_template(
                        [{"role": "user", "content": f"{system}\n\n{user}"}], tokenize=False, add_generation_prompt=True
                    )
                )
        return f"{system}\n\n{user}\n\nAnswer:"

    def _device(self) -> Any:
        try:
            return next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            return "cpu"

    def _encode_batch(self, texts: Sequence[str]) -> Any:
        tok = self.tokenizer
        old_side = getattr(tok, "padding_side", "right")
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            # A chat template already writes the special tokens; plain prompts get the tokenizer's (BOS).
            templated = bool(getattr(tok, "chat_template", None))
            enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=not templated)
        finally:
            tok.padding_side = old_side
        device = self._device()
        return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}

    def generate(self, prompt: str, seed: int) -> str:
        """Sample one reply to a formatted prompt (Agent-1)."""
        import torch

        torch.manual_seed(seed)
        enc = self._encode_batch([prompt])
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=self.temperature,
                top_p=0.95,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return str(self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))

    def digit_distribution(self, formatted: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Next-token probabilities of the digits 0-9 for each prompt.

        Returns:
            ``(probs, mass)``: probs float [n, 10], each row renormalised over the digits; mass
            float [n], the digits' share of the full next-token distribution.
        """
        import torch

        if self._digits is None:
            self._digits = digit_token_ids(self.tokenizer)
        rows, masses = [], []
        for start in range(0, len(formatted), self.forward_batch):
            enc = self._encode_batch(formatted[start : start + self.forward_batch])
            # Left padding: give the real tokens positions 0.. as if each prompt ran alone.
            positions = (enc["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)
            with torch.no_grad():
                try:  # logits for the last position only: the LM head over every position is the bulk of the work
                    out = self.model(**enc, position_ids=positions, logits_to_keep=1)
                except TypeError:  # an older or custom model without these arguments
                    out = self.model(**enc)
            logits = out.logits[:, -1, :].float()
            p = torch.softmax(logits, dim=-1)
            digit_p = torch.stack([p[:, ids].sum(dim=-1) for ids in self._digits], dim=-1)
            mass = digit_p.sum(dim=-1)
            rows.append((digit_p / mass.clamp_min(1e-12)[:, None]).cpu().numpy())
            masses.append(mass.cpu().numpy())
        return np.concatenate(rows).astype(np.float64), np.concatenate(masses).astype(np.float64)

    @staticmethod
    def expected_score(probs: np.ndarray) -> np.ndarray:
        """``10 * E[d] / 9`` for digit distributions [n, 10] -> scores in [0, 10]."""
        return np.asarray(probs, dtype=np.float64) @ np.arange(10, dtype=np.float64) * (10.0 / 9.0)

    def _digit_call(self, session: CallSession, stage: str, users: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str]:
        formatted = [self.format_prompt(u) for u in users]
        prompt = "\n\n=====\n\n".join(formatted)

        def invoke() -> tuple[dict[str, Any], dict[str, Any]]:
            probs, mass = self.digit_distribution(formatted)
            return {"digit_probs": probs.tolist(), "digit_mass": mass.tolist()}, {"prompts": len(formatted)}

        def parse(raw: Any) -> tuple[np.ndarray, np.ndarray]:
            probs = np.asarray(raw.get("digit_probs") if isinstance(raw, dict) else None, dtype=np.float64)
            if probs.shape != (len(users), 10) or not np.all(np.isfinite(probs)):
                raise ReplyError(f"{stage} (local): digit distribution has the wrong shape")
            return probs, np.asarray(raw.get("digit_mass"), dtype=np.float64)

        (probs, mass), call_id = session.call(
            stage, self.name, self.model_id, prompt, dict(self.signature), invoke, parse
        )
        return self.expected_score(probs), mass, call_id

    # --- the three agents -----------------------------------------------------------------------

    def decompose(
        self,
        behaviour: Behaviour,
        examples: Sequence[Any],
        pool: Sequence[Any],
        *,
        seed: int,
        session: CallSession,
    ) -> list[DraftSubBehaviour]:
        user = prompts.decompose_prompt(behaviour.name, behaviour.description, examples, tool=False)
        formatted = self.format_prompt(user)
        items: list[dict[str, str]] = []
        problems: list[str] = []
        for attempt in range(self.max_attempts):
            sample_seed = seed * 1000 + attempt

            def parse(raw: Any) -> list[dict[str, str]]:
                if not isinstance(raw, str) or not raw.strip():
                    raise ReplyError("empty reply")
                found = parse_numbered_list(raw)
                if len(found) < prompts.K_MIN:
                    raise ReplyError(
                        f"found {len(found)} lines of the form '1. Name: description' (need {prompts.K_MIN})"
                    )
                return found

            def invoke(s: int = sample_seed) -> tuple[str, dict[str, Any]]:
                return self.generate(formatted, s), {}

            try:
                items, _ = session.call(
                    "agent1", self.name, self.model_id, formatted, {**self.signature, "seed": sample_seed}, invoke, parse
                )
            except ReplyError as err:
                problems.append(f"seed {sample_seed}: {err}")
                continue
            if len(items) <= prompts.K_MAX:
                break
            problems.append(f"seed {sample_seed}: {len(items)} items (more than {prompts.K_MAX})")
        if len(items) < prompts.K_MIN:
            raise AgentError(
                f"agent1 (local {self.model_id}): no parsable decomposition after {self.max_attempts} samples; "
                + "; ".join(problems)
            )
        origin = (f"written by the local model {self.model_id} from the behaviour description and "
                  f"{len(examples)} sampled training pairs")
        return [DraftSubBehaviour(i["name"], i["description"], False, origin) for i in items[: prompts.K_MAX]]

    def rate(self, behaviour: Behaviour, subs: Sequence[Any], *, session: CallSession) -> list[ContributionResult]:
        users = [prompts.local_rate_prompt(behaviour.name, behaviour.description, s) for s in subs]
        scores, mass, call_id = self._digit_call(session, "agent2", users)
        return [
            ContributionResult(
                s.id,
                float(c),
                f"expected digit {c * 0.9:.2f}/9 from the next-token distribution (digit mass {m:.2f})",
                False,
                call_id,
            )
            for s, c, m in zip(subs, scores, mass, strict=True)
        ]

    def score_batch(self, instances: Sequence[Any], subs: Sequence[Any], *, session: CallSession) -> BatchScores:
        users = [prompts.local_score_prompt(s, inst) for inst in instances for s in subs]
        scores, mass, call_id = self._digit_call(session, "agent3", users)
        n, k = len(instances), len(subs)
        notes = []
        if len(mass) and float(np.mean(mass)) < LOW_DIGIT_MASS:
            notes.append(
                f"call {call_id[:12]}: the digits got only {float(np.mean(mass)):.2f} of the next-token mass on "
                "average; the model may not be answering with a digit"
            )
        return BatchScores([i.id for i in instances], scores.reshape(n, k), np.zeros((n, k), bool), call_id, notes)
