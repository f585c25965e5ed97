"""What the plugin tells the clients that build on a model by its type or its path (PEFT, TRL), whatever the
import order: PEFT's per-model_type defaults, and the line that a client rebuilding from the path gets the
folder's strategy, said where such a client is at work (TRL imported, PEFT adapters on the model), once.
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
_pending: list[str] = []  # rebuild lines waiting for TRL to be imported
_said: set[str] = set()  # each line once per process


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


def _say(line: str) -> None:
    """The line, once per process, however it comes due (TRL imported, PEFT adapters at a forward)."""
    if line in _pending:
        _pending.remove(line)
    if line not in _said:
        _said.add(line)
        logger.warning(line)


def _say_pending() -> None:
    while _pending:
        _say(_pending[0])


class ClientImportHook(MetaPathFinder):
    """Runs the plugin's part right after a client module has executed (PEFT's tables: before any other PEFT
    module reads them); it finds nothing itself (the usual finders do) and leaves once every client is in."""

    WATCHED = {PEFT_TABLES: register_with_peft, "trl": _say_pending}

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
    reference (from ``config._name_or_path``), a PEFT adapter (``base_model_name_or_path``, then AutoPeftModel).
    The plugin cannot fix their rebuild, so it says so, with the fix, where it matters: once TRL is imported
    (now or later), or at the first forward of this model with PEFT adapters on it (`say_if_adapted`). A script
    that uses neither, Trainer alone included (which imports PEFT when installed), is never told about them.
    """
    try:
        recorded = resolve_strategy(CustomQwen3Config.from_pretrained(path, **location).mask_strategy)
    except (OSError, ValueError):  # not a folder or hub id this process can read again: nothing to compare
        return
    if model.mask_strategy == recorded:
        return
    line = (f"{path} records mask_strategy {recorded.to_dict()}, not {model.mask_strategy.to_dict()}: TRL's reference "
            f"models (DPO, GRPO, ...) and AutoPeftModelForCausalLM rebuild that; save_pretrained(dir), or pass ref_model=.")
    body = getattr(model, "model", model)
    body._rebuild_note = line  # for PEFT: said at the first forward with adapters (say_if_adapted)
    if line not in _pending and line not in _said:  # two loads of one folder: said once
        _pending.append(line)
    if "trl" in sys.modules:
        _say_pending()
    else:
        ClientImportHook.install()


def say_if_adapted(body) -> None:
    """At a forward of a body whose load-time strategy differs from its folder: the line, once, as soon as PEFT
    adapters sit on it (their adapter_config records the folder, which AutoPeftModel rebuilds from)."""
    if "peft" not in sys.modules or not any(type(m).__module__.startswith("peft.") for m in body.modules()):
        return
    line, body._rebuild_note = body._rebuild_note, None
    _say(line)
