"""qwen3-custom-mask: Qwen3 with any attention mask you can write as a function.

    from qwen3_custom_mask import CustomQwen3ForCausalLM, register_mask, available_masks

Three places hold the idea; everything else sits around them and imports them, never the other way round:

    masks/      what each built-in strategy means: one small file per mask family, its mask_mod
    strategy/   the registry, specs and composition, the lowering to each backend, the brute-force reference
    model/      the Qwen3 glue: config, body (masks built once per forward), heads, generate, caches, serving masks
    training/   collators, packing, FSDP2, the fine-tuning recipe
    serving/    `qwen3-mask serve` (transformers serve with the plugin) and export for other runtimes
    cli/        the `qwen3-mask` commands, benchmark, selfcheck, drawing, the embedded default checkpoint

Layers, lowest first: strategy, masks, model, training and serving, cli (tests/test_layout.py checks it).
Importing the package registers the config and every model class with transformers' Auto API, so that
``AutoModelForCausalLM.from_pretrained(saved_plugin_checkpoint)`` (or sentence-transformers) finds them.
"""

import os
import sys
from importlib import import_module

from . import _moved

__version__ = "0.1.0"

# Where each public name lives; resolved on first use (PEP 562), so that light modules stay light.
_EXPORTS = {
    "CustomQwen3Config": "model.heads",
    "CustomQwen3ForCausalLM": "model.heads",
    "CustomQwen3ForQuestionAnswering": "model.heads",
    "CustomQwen3ForSequenceClassification": "model.heads",
    "CustomQwen3ForTokenClassification": "model.heads",
    "CustomQwen3Model": "model.heads",  # through heads: handed out registered with the Auto API
    "BoundedCache": "model.cache",
    "TreeVerification": "model.speculative",
    "verify_draft_tree": "model.speculative",
    "ENTRY_POINT_GROUP": "strategy.registry",
    "available_masks": "strategy.registry",
    "get_mask": "strategy.registry",
    "register_mask": "strategy.registry",
    "unregister_mask": "strategy.registry",
    "CompositeStrategy": "strategy.composition",
    "LayeredStrategy": "strategy.composition",
    "MaskStrategy": "strategy.spec",
    "Strategy": "strategy.spec",
    "resolve_strategy": "strategy.resolve",
    "PackingCollator": "training.packing",
    "pack_examples": "training.packing",
    "pack_dataset": "training.collators",
    "export_stock": "serving.export",
    "default_checkpoint": "cli.default",
    "draw_ascii": "cli.draw",
    "draw_png": "cli.draw",
    "selfcheck": "cli.selfcheck",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _moved.MOVED:  # `qwen3_custom_mask.modeling.X` after `import qwen3_custom_mask`, as in 0.1.0
        return import_module(f".{name}", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


# The flat layout's paths (qwen3_custom_mask.modeling, .lowering, ...) keep importing, with a FutureWarning.
_moved.install()


def _own_command() -> bool:
    """Whether this process is one of the project's own commands: the `qwen3-mask` script, ``python -m
    qwen3_custom_mask.cli``, or this checkout's scripts/finetune.py and scripts/benchmark.py. They import the model
    code themselves once their arguments are checked, so that `--help` and `list` answer without torch. Anything
    else (a user's own script called finetune.py too) gets the classes registered at import."""
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == [f"{__name__}.cli"]:
        return True
    program = sys.argv[0] if sys.argv else ""
    if os.path.basename(program) == "qwen3-mask":
        return True
    scripts = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts")
    return os.path.realpath(program) in {os.path.join(scripts, name) for name in ("finetune.py", "benchmark.py")}


from . import masks  # noqa: E402  (registers the built-in strategies: torch-free at import)

if not _own_command():
    from .model import heads  # noqa: F401, E402  (registers the config and classes with the Auto API)
