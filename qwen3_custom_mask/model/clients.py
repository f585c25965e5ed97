"""What the plugin tells the clients that build on a model by its type or its path (PEFT, TRL), whatever the
import order: PEFT's per-model_type defaults, and the warning that a client rebuilding from the path gets the
folder's strategy, said once such a client is imported (the usual script never meets it, and never sees it).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from importlib.abc import MetaPathFinder

from ..strategy import resolve_strategy
from .configuration import CustomQwen3Config

logger = logging.getLogger("qwen3_custom_mask.model.body")  # the name users and tests configure (0.1.0's modeling)

PEFT_TABLES = "peft.utils.constants"
REBUILDERS = ("trl", "peft")  # clients that rebuild a model from its path (TRL's reference models, AutoPeftModel)
_pending: list[str] = []  # rebuild warnings waiting for such a client to be imported


def register_with_peft() -> None:
    """PEFT picks defaults by model_type (LoraConfig() and IA3Config() without target_modules, ...): the plugin's
    model_type gets Qwen3's entries. Runs at import if PEFT is already imported, else right after PEFT's tables
    are (`ClientImportHook`): a script (or TRL, lazily) that imports PEFT after building the model gets them too."""
    constants = sys.modules.get(PEFT_TABLES)
    if constants is None:
        ClientImportHook.install()
        return
    for table in vars(constants).values():
        if isinstance(table, dict) and "qwen3" in table and CustomQwen3Config.model_type not in table:
            table[CustomQwen3Config.model_type] = table["qwen3"]


def _say_pending() -> None:
    while _pending:
        logger.warning(_pending.pop(0))


class ClientImportHook(MetaPathFinder):
    """Runs the plugin's part right after a client module has executed (PEFT's tables: before any other PEFT
    module reads them); it finds nothing itself (the usual finders do) and leaves once every client is in."""

    WATCHED = {PEFT_TABLES: register_with_peft, "trl": _say_pending, "peft": _say_pending}

    @classmethod
    def install(cls) -> None:
        if not any(type(f).__qualname__ == cls.__qualname__ for f in sys.meta_path):  # once, across reloads
            sys.meta_path.insert(0, cls())

    def find_spec(self, fullname, path, target=None):
        after = self.WATCHED.get(fullname)
        if after is None:
            return None
        sys.meta_path.remove(self)  # find the real spec without meeting this hook again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            if not all(name in sys.modules or name == fullname for name in self.WATCHED):
                sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module  # this spec's own loader object: patching it touches no other module

        def exec_then(module):
            run(module)
            after()

        spec.loader.exec_module = exec_then
        return spec


def warn_if_path_rebuilds_differently(model, path, **location) -> None:
    """One line when ``model``'s strategy was given at load time and differs from what ``path`` records.

    Clients that rebuild a model from its path get the path's mask, not this one: TRL's DPO/KTO/GRPO/RLOO
    reference (from ``config._name_or_path``), PEFT's adapter (``base_model_name_or_path``, then AutoPeftModel).
    The plugin cannot fix their rebuild, so it says so, with the fix, at every such load, once TRL or PEFT is
    imported (now or later): a script that uses neither is never told about them.
    """
    try:
        recorded = resolve_strategy(CustomQwen3Config.from_pretrained(path, **location).mask_strategy)
    except (OSError, ValueError):  # not a folder or hub id this process can read again: nothing to compare
        return
    if model.mask_strategy == recorded:
        return
    line = (f"{path} records mask_strategy {recorded.to_dict()}, which TRL's reference models (DPO, KTO, GRPO, RLOO) and "
            f"AutoPeftModelForCausalLM rebuild from it: model.save_pretrained(dir) and load from dir, or pass ref_model=.")
    if line not in _pending:  # two loads before the client arrives: said once
        _pending.append(line)
    if any(name in sys.modules for name in REBUILDERS):
        _say_pending()
    else:
        ClientImportHook.install()
