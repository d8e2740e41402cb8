"""Tiny random-weight models of each supported family, built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "gemma": lambda: GemmaConfig(**COMMON, head_dim=8),
    "gpt2": lambda: GPT2Config(vocab_size=128, n_embd=32, n_layer=3, n_head=4, n_positions=64),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64),
}

EXPECTED_PATH = {"llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
                 "gemma": "model.layers", "gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
