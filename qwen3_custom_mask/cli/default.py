"""The embedded default: a small Qwen3-architecture checkpoint with the real Qwen3 tokenizer, built offline.

`default_checkpoint()` writes it once (seeded, so every machine gets the same bytes) to
``$QWEN3_MASK_HOME`` or ``~/.cache/qwen3_custom_mask/qwen3-tiny`` and returns the path. The layout is the
official one: config.json (model_type "qwen3"), generation_config.json, sharded safetensors with an index,
tokenizer.json + tokenizer_config.json. The weights are random (2 layers, hidden 64, Qwen3's full 151,936-token
vocabulary), so its text is gibberish; every code path of a real Qwen3 checkpoint runs on it in seconds.
Any real checkpoint path or hub id can stand in for it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

QWEN3_VOCAB = 151936  # the embedding size of every Qwen3 checkpoint (151,669 tokens, padded)
VERSION = "2"  # 2: Qwen3's full chat template (tools, reasoning stripped from earlier turns)


def default_path() -> Path:
    home = os.environ.get("QWEN3_MASK_HOME")
    return Path(home) if home else Path.home() / ".cache" / "qwen3_custom_mask" / f"qwen3-tiny-v{VERSION}"


def default_checkpoint(path: str | Path | None = None) -> Path:
    """Path of the embedded default checkpoint, building it on first use (a few seconds, no network)."""
    path = Path(path) if path is not None else default_path()
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    import torch  # here, not at the top: a path that is already built answers without torch or transformers
    from transformers import GenerationConfig, Qwen3ForCausalLM

    from .tiny import tiny_qwen3_config
    from .tokenizer import qwen3_tokenizer

    logger.info("Building the embedded default Qwen3 checkpoint in %s", path)
    tokenizer = qwen3_tokenizer()
    config = tiny_qwen3_config(
        vocab_size=QWEN3_VOCAB,
        max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=False
    )
    tmp = path.with_name(path.name + ".partial")
    model.save_pretrained(tmp, max_shard_size="20MB")
    tokenizer.save_pretrained(tmp)
    if path.exists():  # an incomplete earlier build
        shutil.rmtree(path)
    tmp.replace(path)
    return path
