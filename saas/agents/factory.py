"""Build an agent backend by name (the top of the package: it imports the backends lazily)."""

from __future__ import annotations

import os
from typing import Any, Literal

from saas.agents.types import AgentBackend, AgentError

BackendName = Literal["anthropic", "offline", "local", "auto"]


def make_backend(name: BackendName | str, **kw: Any) -> AgentBackend:
    """Build a backend by name.

    Args:
        name: ``"anthropic"`` (Claude; needs ``api_key=`` or ``$ANTHROPIC_API_KEY``), ``"offline"``
            (sentence encoder), ``"local"`` (a transformers chat model: pass ``model=`` and
            ``tokenizer=``, or ``model_path=``), or ``"auto"`` (anthropic if a key is present, else
            offline).
        **kw: Passed to the backend's constructor.

    Raises:
        AgentError: an unknown name, or a local backend without a model.
    """
    if name == "auto":
        if kw.get("api_key") or os.environ.get("ANTHROPIC_API_KEY"):
            name = "anthropic"
        else:
            kw.pop("api_key", None)
            name = "offline"
    if name == "anthropic":
        from saas.agents.anthropic_backend import AnthropicBackend

        return AnthropicBackend(**kw)
    if name == "offline":
        from saas.agents.offline import OfflineBackend

        return OfflineBackend(**kw)
    if name == "local":
        from saas.agents.local_llm import LocalLLMBackend

        path = kw.pop("model_path", None)
        if path is not None:
            return LocalLLMBackend.from_pretrained(path, **kw)
        if "model" not in kw or "tokenizer" not in kw:
            raise AgentError("the local backend needs model= and tokenizer= (or model_path=)")
        return LocalLLMBackend(**kw)
    raise AgentError(f"unknown agent backend {name!r}: use anthropic, offline, local or auto")
