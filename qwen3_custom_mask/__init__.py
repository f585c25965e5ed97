"""qwen3-custom-mask: Qwen3 with any attention mask you can write as a function.

    from qwen3_custom_mask import CustomQwen3ForCausalLM, register_mask, available_masks

Importing the package registers the config and every model class with transformers' Auto API, so that
``AutoModelForCausalLM.from_pretrained(saved_plugin_checkpoint)`` (or sentence-transformers) finds them.
"""

import os
import sys
from importlib import import_module

__version__ = "0.1.0"

# Where each public name lives; resolved on first use (PEP 562), so that light modules stay light.
_EXPORTS = {
    "BoundedCache": "cache",
    "PackingCollator": "packing",
    "pack_examples": "packing",
    "pack_dataset": "training",
    "default_checkpoint": "default",
    "CustomQwen3Config": "configuration",
    "CustomQwen3ForCausalLM": "modeling",
    "CustomQwen3ForQuestionAnswering": "modeling",
    "CustomQwen3ForSequenceClassification": "modeling",
    "CustomQwen3ForTokenClassification": "modeling",
    "CustomQwen3Model": "modeling",
    "ENTRY_POINT_GROUP": "registry",
    "available_masks": "registry",
    "get_mask": "registry",
    "register_mask": "registry",
    "unregister_mask": "registry",
    "TreeVerification": "speculative",
    "verify_draft_tree": "speculative",
    "CompositeStrategy": "strategy",
    "LayeredStrategy": "strategy",
    "MaskStrategy": "strategy",
    "Strategy": "strategy",
    "resolve_strategy": "strategy",
    "selfcheck": "stackcheck",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


# The one exception to the eager registration: the `qwen3-mask` command, so that `--help` and `list` answer
# without loading torch and transformers (its model commands import modeling.py, which registers).
# The project's own entry points import the model code themselves once their arguments are checked.
if os.path.basename(sys.argv[0] if sys.argv else "") not in ("qwen3-mask", "finetune.py", "benchmark.py"):
    from . import masks, modeling  # noqa: F401, E402
else:
    from . import masks  # noqa: F401, E402  (registers the built-in strategies: torch-free at import)
