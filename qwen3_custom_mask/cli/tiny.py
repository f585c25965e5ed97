"""A tiny, seeded Qwen3 checkpoint in the official layout (config.json + safetensors), for tests and demos.

Nothing is downloaded: the weights are random but reproducible, the architecture is Qwen3's (GQA, q/k norms,
RoPE), so every code path of a real checkpoint runs, just small enough for two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

QWEN3_EOS = 151643  # <|endoftext|>, which Qwen3 also uses as its pad token


def tiny_qwen3_config(**overrides) -> Qwen3Config:
    """A stock `Qwen3Config` (model_type "qwen3", as on the Hub) shrunk to 2 layers and a 256-token vocabulary."""
    fields = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,  # as Qwen3-0.6B
        initializer_range=0.3,  # larger than the 0.02 default so that a random model does not just echo its input
        bos_token_id=254,
        eos_token_id=255,
    )
    fields.update(overrides)
    return Qwen3Config(**fields)


def save_tiny_checkpoint(path: str | Path, *, seed: int = 0, max_shard_size: str | None = None, **overrides) -> Path:
    """Writes a stock `Qwen3ForCausalLM` checkpoint with ``save_pretrained`` (sharded if ``max_shard_size``)."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(**overrides))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return Path(path)
