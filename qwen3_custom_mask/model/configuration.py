"""CustomQwen3Config: Qwen3Config plus the mask strategy, saved in config.json."""

from __future__ import annotations

from typing import Any

from transformers import Qwen3Config


# Bumped when the saved spec format changes meaning; a config from a newer format is refused, not misread.
MASK_SPEC_VERSION = 1
# The fields this config adds to Qwen3Config: an export to stock drops them, and generation_config must not keep them.
PLUGIN_FIELDS = ("mask_strategy", "mask_spec_version", "loss_chunk_size", "recompute_when_uncacheable")


def strategy_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A stock config's fields with its ``is_causal: false`` (stock's bidirectional switch) read as the
    ``bidirectional`` strategy: the strategy alone decides the mask (see export.py for the way back)."""
    fields = dict(fields)
    if fields.pop("is_causal", True) is False and fields.get("mask_strategy") is None:
        fields["mask_strategy"] = {"name": "bidirectional"}
    return fields


class CustomQwen3Config(Qwen3Config):
    """A `Qwen3Config` that records ``mask_strategy`` as ``{"name": ..., **params}`` (None means causal).

    Its own ``model_type`` lets ``AutoModelForCausalLM`` bring a saved model back as
    `CustomQwen3ForCausalLM`; the weights keep the stock Qwen3 names, so `Qwen3ForCausalLM` still loads them.
    Official ``qwen3`` configs load into it silently (same architecture, causal by default).
    ``loss_chunk_size`` (tokens, default None) turns on the chunked training loss of `CustomQwen3ForCausalLM`.
    """

    model_type = "qwen3_custom_mask"
    # What clients read of a remote-code config. Empty: the classes come from `import qwen3_custom_mask` (the Auto
    # registrations), not from code in the folder. TRL's create_model_from_path reads it when architectures[0] is
    # not a transformers class (SFTTrainer(model=path), DPOTrainer's reference). Class-level: never in config.json.
    auto_map = {}
    mask_strategy: dict | str | None = None
    mask_spec_version: int = MASK_SPEC_VERSION
    # Tokens per chunk of the training loss computed without the full logits (loss.py); None: stock's logits.
    loss_chunk_size: int | None = None
    # generate(use_cache=True) with a strategy a KV cache cannot honour (bidirectional): raise (default), or, when
    # True, recompute every step as use_cache=False does; for clients that force use_cache=True (lm-eval).
    recompute_when_uncacheable: bool = False

    @classmethod
    def get_config_dict(cls, *args, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == Qwen3Config.model_type:
            config_dict = strategy_fields({**config_dict, "model_type": cls.model_type})
        check_spec_version(config_dict)
        return config_dict, kwargs

    def __post_init__(self, **kwargs):
        # Also the constructor (CustomQwen3Config(**fields), AutoConfig.for_model): never a newer spec, misread.
        check_spec_version({"mask_spec_version": self.mask_spec_version})
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        # AutoConfig / AutoModel*.from_pretrained read the file through the base class's get_config_dict, so the
        # version is checked here too: every load path (TRL, lm-eval, PEFT, sentence-transformers) refuses alike.
        check_spec_version(config_dict)
        return super().from_dict(config_dict, **kwargs)


def check_spec_version(config_dict: dict[str, Any]) -> None:
    version = config_dict.get("mask_spec_version", MASK_SPEC_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > MASK_SPEC_VERSION:
        raise ValueError(
            f"This checkpoint's mask_strategy was written by a newer qwen3-custom-mask (mask_spec_version "
            f"{version!r}; this version reads up to {MASK_SPEC_VERSION}). Upgrade: pip install -U qwen3-custom-mask. "
            f"Its weights still load in transformers' stock Qwen3ForCausalLM."
        )
