"""Shared fixtures: tiny Qwen3 checkpoints written with save_pretrained and loaded through from_pretrained."""

import os

# The whole suite runs as if the installed transformers were a release CI has not proven yet (and so do the CLI
# subprocesses, which inherit it): a new release must not turn a test red by itself (tests/test_compat.py).
os.environ.setdefault("QWEN3_MASK_ASSUME_UNTESTED", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.cli.tiny import save_tiny_checkpoint

# torch 2.13's CPU inductor miscompiles flex_attention once it recompiles with dynamic shapes
# (C++ error "cur_qSplitSize4 was not declared"); static shapes compile fine. See README, "Known limits".
torch._dynamo.config.automatic_dynamic_shapes = False
torch._dynamo.config.recompile_limit = 64

hf_logging.disable_progress_bar()

BACKENDS = ["eager", "sdpa", "flex_attention"]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A stock-layout single-file checkpoint (model_type "qwen3", no mask strategy)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def sharded_checkpoint(tmp_path_factory):
    """The same weights, sharded (model.safetensors.index.json + several files)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3-sharded"), max_shard_size="50KB")


@pytest.fixture(scope="session")
def sliding_checkpoint(tmp_path_factory):
    """The same architecture with a sliding layer (use_sliding_window, max_window_layers=1: layer 1 slides, window 4)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3-sliding"), use_sliding_window=True, sliding_window=4, max_window_layers=1)


CONFIGS = ["plain", "sliding-layers"]


@pytest.fixture(scope="session")
def models(checkpoint, sliding_checkpoint):
    """One eval-mode CustomQwen3ForCausalLM per (config, backend), loaded on first use (strategy reset per test).

    models[backend] is the plain config's; models["sliding-layers", backend] the one with a sliding layer.
    """

    class Models(dict):
        def __missing__(self, key):
            config, backend = key if isinstance(key, tuple) else ("plain", key)
            path = checkpoint if config == "plain" else sliding_checkpoint
            self[key] = CustomQwen3ForCausalLM.from_pretrained(path, attn_implementation=backend).eval()
            return self[key]

    return Models()


@pytest.fixture
def model_for(models):
    """model_for(backend, strategy, config="plain") -> the session model with that strategy set."""

    def get(backend, strategy="causal", config="plain"):
        model = models[backend] if config == "plain" else models[config, backend]
        model.set_mask_strategy(strategy)
        return model

    yield get
    for model in models.values():
        model.set_mask_strategy("causal")
        model.config.use_cache = True  # as loaded: Trainer sets it to TrainingArguments.use_cache (False)


def left_padded(batch=2, length=12, pads=(3, 0), vocab=250, seed=0):
    """input_ids, 2D attention_mask and generate-style position_ids for a left-padded batch."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
        ids[row, :pad] = 255
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions
