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
import types
import warnings
from importlib import import_module
from importlib.abc import Loader, MetaPathFinder
from importlib.util import spec_from_loader

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

# Modules of the flat layout (0.1.0 before the role folders) and where they went. Their old import paths keep
# working, with a FutureWarning naming the new one, for code and pickles written against them.
MOVED = {
    "registry": "strategy.registry", "lowering": "strategy.lowering", "reference": "strategy.reference",
    "recipes": "strategy.presets", "configuration": "model.configuration", "modeling": "model.heads",
    "masking": "model.masking", "generation": "model.generation", "cache": "model.cache",
    "speculative": "model.speculative", "paged": "model.paged", "loss": "model.loss", "compat": "model.compat",
    "packing": "training.packing", "fsdp": "training.fsdp", "finetune": "training.finetune",
    "export": "serving.export", "script_args": "cli.args", "bench_args": "cli.bench_args",
    "benchmark": "cli.benchmark", "bench_serving": "cli.bench_serving", "stackcheck": "cli.selfcheck",
    "draw": "cli.draw", "default": "cli.default", "tiny": "cli.tiny", "tokenizer": "cli.tokenizer",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _MovedModuleFinder(MetaPathFinder, Loader):
    """``import qwen3_custom_mask.modeling`` (an old path) gives a module that reads from the new one."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in MOVED:
            return spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new} (or import the name from {__name__}); the old path goes in 0.2.",
                      FutureWarning, stacklevel=2)
        target = import_module(new)
        alias = types.ModuleType(spec.name, f"Moved: see {new}.")
        alias.__getattr__ = lambda attribute: getattr(target, attribute)  # PEP 562 on the alias
        alias.__dir__ = lambda: dir(target)
        return alias

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

# The one exception to the eager registration: the `qwen3-mask` command, so that `--help` and `list` answer
# without loading torch and transformers (its model commands import the model classes, which registers them).
# The project's own entry points import the model code themselves once their arguments are checked.
if os.path.basename(sys.argv[0] if sys.argv else "") not in ("qwen3-mask", "finetune.py", "benchmark.py"):
    from . import masks  # noqa: F401, E402
    from .model import heads  # noqa: F401, E402  (registers the config and classes with the Auto API)
else:
    from . import masks  # noqa: F401, E402  (registers the built-in strategies: torch-free at import)
