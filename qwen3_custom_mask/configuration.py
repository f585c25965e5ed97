"""CustomQwen3Config: Qwen3Config plus the mask strategy, saved in config.json."""

from __future__ import annotations

from typing import Any

from transformers import Qwen3Config


class CustomQwen3Config(Qwen3Config):
    """A `Qwen3Config` that records ``mask_strategy`` as ``{"name": ..., **params}`` (None means causal).

    Its own ``model_type`` lets ``AutoModelForCausalLM`` bring a saved model back as
    `CustomQwen3ForCausalLM`; the weights keep the stock Qwen3 names, so `Qwen3ForCausalLM` still loads them.
    Official ``qwen3`` configs load into it silently (same architecture, causal by default).
    """

    model_type = "qwen3_custom_mask"
    mask_strategy: dict | str | None = None

    @classmethod
    def get_config_dict(cls, *args, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == Qwen3Config.model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs
