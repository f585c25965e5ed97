"""The flat layout of 0.1.0 (``qwen3_custom_mask.modeling``, ``.lowering``, ``.registry``, ...) keeps importing.

Each old path gives a module that reads its names from the module(s) the code moved to and *writes* to them:
``monkeypatch.setattr("qwen3_custom_mask.masking.lower", spy)`` patches the function the code really calls,
as it did before (a copy that took the write and changed nothing would fail silently). Importing an old path
says once, in a FutureWarning, where it went. ``python -m qwen3_custom_mask.finetune`` runs the new module.
"""

from __future__ import annotations

import sys
import types
import warnings
from importlib import import_module
from importlib.abc import Loader, MetaPathFinder
from importlib.util import spec_from_loader

PACKAGE = __name__.rpartition(".")[0]

# old module -> the new modules that hold its names, the first one first (where a write goes when both have it).
MOVED = {
    "registry": ("strategy.registry",),
    "lowering": ("strategy.lowering",),
    "reference": ("strategy.reference",),
    "recipes": ("strategy.presets",),
    "configuration": ("model.configuration",),
    "modeling": ("model.body", "model.heads"),
    "masking": ("model.masking", "model.packed"),
    "generation": ("model.generation",),
    "cache": ("model.cache",),
    "speculative": ("model.speculative",),
    "paged": ("model.paged",),
    "loss": ("model.loss",),
    "compat": ("model.compat",),
    "packing": ("training.packing",),
    "fsdp": ("training.fsdp",),
    "finetune": ("cli.finetune", "training.finetune"),
    "export": ("serving.export",),
    "script_args": ("cli.args",),
    "bench_args": ("cli.bench_args",),
    "benchmark": ("cli.benchmark", "cli.bench_timing"),
    "bench_serving": ("cli.bench_serving",),
    "stackcheck": ("cli.selfcheck",),
    "draw": ("cli.draw",),
    "default": ("cli.default",),
    "tiny": ("cli.tiny",),
    "tokenizer": ("cli.tokenizer",),
}


_MISSING = object()


class MovedModule(types.ModuleType):
    """An old path: reads from the new modules (``_targets``); writes and deletes go where the code reads them.

    A write lands on every target that binds the same object (0.1.0's modeling.py is now body.py and heads.py, which
    both bind ``as_custom_config``), or on the first target for a new name. The first write or delete of a name
    records what the targets held, so that ``mock.patch``'s exit (a delete, where the name did not live on the
    alias) puts the originals back rather than deleting them.
    """

    def _holders(self, name: str) -> list:
        targets = self.__dict__["_targets"]
        holders = [module for module in targets if name in vars(module)]
        return [module for module in holders if vars(module)[name] is vars(holders[0])[name]]

    def _record(self, name: str) -> list:
        saved = self.__dict__["_saved"]
        if name not in saved:
            holders = self._holders(name) or self.__dict__["_targets"][:1]
            saved[name] = [(module, vars(module).get(name, _MISSING)) for module in holders]
        return saved[name]

    def __getattr__(self, name: str):
        holders = self._holders(name)
        if not holders:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} (it moved to "
                                 f"{', '.join(m.__name__ for m in self.__dict__['_targets'])})")
        return vars(holders[0])[name]

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("__") or name in ("_targets", "_saved"):
            super().__setattr__(name, value)
            return
        recorded = self._record(name)
        for module, _ in recorded:
            setattr(module, name, value)
        if all(original is value for _, original in recorded):  # put back as it was: nothing left to undo
            del self.__dict__["_saved"][name]

    def __delattr__(self, name: str) -> None:
        saved = self.__dict__["_saved"]
        if name in saved:  # undo of a write through this path: the originals come back
            for module, original in saved.pop(name):
                if original is not _MISSING:
                    setattr(module, name, original)
                elif name in vars(module):
                    delattr(module, name)
            return
        holders = self._holders(name)
        if not holders:
            raise AttributeError(name)
        self._record(name)  # a later write (monkeypatch's undo) restores it where it was
        for module in holders:
            delattr(module, name)

    def __dir__(self):
        return sorted({name for module in self.__dict__["_targets"] for name in dir(module)})


def _warn(old: str) -> list[str]:
    new = [f"{PACKAGE}.{module}" for module in MOVED[old.rpartition(".")[2]]]
    warnings.warn(f"{old} moved to {' and '.join(new)} (or import the name from {PACKAGE}); the old path goes in 0.2.",
                  FutureWarning, stacklevel=3)
    return new


class MovedModuleFinder(MetaPathFinder, Loader):
    """Finds the old paths (after every other finder: a real module of that name always wins)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        return spec_from_loader(fullname, self) if package == PACKAGE and name in MOVED else None

    def create_module(self, spec):
        new = _warn(spec.name)
        targets = [import_module(module) for module in new]
        alias = MovedModule(spec.name, f"Moved to {' and '.join(new)}.")
        alias._targets = targets
        alias._saved = {}
        alias.__file__ = targets[0].__file__  # where an ImportError says the names were looked up
        alias.__all__ = sorted({name for module in targets for name in getattr(module, "__all__", vars(module))
                                if not name.startswith("_") and name != "annotations"  # (from __future__)
                                and not isinstance(getattr(module, name, None), types.ModuleType)})
        return alias

    def exec_module(self, module):
        pass

    def get_code(self, fullname):
        """``python -m OLD``: runs the module the old one's command line moved to."""
        new = _warn(fullname)[0]
        return compile(f"import runpy; runpy.run_module({new!r}, run_name='__main__', alter_sys=True)", fullname, "exec")


def install() -> None:
    """Once per process, also across ``importlib.reload`` of the package (which defines the class anew)."""
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__qualname__ != MovedModuleFinder.__qualname__
                        or type(f).__module__ != __name__]
    sys.meta_path.append(MovedModuleFinder())
