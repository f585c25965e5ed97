"""qwen3-custom-mask: Qwen3 with any attention mask you can write as a function.

    from qwen3_custom_mask import CustomQwen3ForCausalLM, register_mask, available_masks
"""

from .configuration import CustomQwen3Config
from .modeling import (
    CustomQwen3ForCausalLM,
    CustomQwen3ForQuestionAnswering,
    CustomQwen3ForSequenceClassification,
    CustomQwen3ForTokenClassification,
    CustomQwen3Model,
)
from .cache import BoundedCache
from .registry import ENTRY_POINT_GROUP, available_masks, get_mask, register_mask, unregister_mask
from .speculative import TreeVerification, verify_draft_tree
from .strategy import CompositeStrategy, LayeredStrategy, MaskStrategy, Strategy, resolve_strategy

__version__ = "0.1.0"

__all__ = [
    "BoundedCache",
    "CompositeStrategy",
    "LayeredStrategy",
    "Strategy",
    "CustomQwen3Config",
    "CustomQwen3ForCausalLM",
    "CustomQwen3ForQuestionAnswering",
    "CustomQwen3ForSequenceClassification",
    "CustomQwen3ForTokenClassification",
    "CustomQwen3Model",
    "ENTRY_POINT_GROUP",
    "MaskStrategy",
    "available_masks",
    "get_mask",
    "register_mask",
    "resolve_strategy",
    "unregister_mask",
    "TreeVerification",
    "verify_draft_tree",
]
