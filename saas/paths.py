"""Where the project keeps its on-disk artifacts.

Everything recomputable lives under one cache folder (``cache/`` at the repository root by default,
or ``$SAAS_CACHE_DIR``), in sub-folders per kind: ``models/``, ``activations/``, ``agents/``,
``vectors/``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(kind: str | None = None) -> Path:
    """The cache folder (created on demand), or its ``kind`` sub-folder."""
    root = Path(os.environ.get("SAAS_CACHE_DIR", REPO_ROOT / "cache"))
    path = root / kind if kind else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_offline_defaults() -> None:
    """Make Hugging Face libraries fail fast instead of waiting on a network that is not there.

    Called by the CLI, the app and the tests unless the user asks for a hub id.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
