"""The strategy registry: a plain dict from name to mask factory, filled by ``@register_mask``.

A *strategy* is a factory of keyword parameters that returns a FlexAttention-style ``mask_mod``::

    mask_mod(batch_idx, head_idx, q_idx, kv_idx) -> bool tensor   # True = the query may attend to the key

over absolute positions (position 0 is the first token of the row, padding included). The indices are
integer tensors that broadcast against each other, so a mask_mod written with tensor operations works for
every backend: dense masks call it once on broadcast index grids, flex_attention calls it under vmap.

Specs (``"prefix_lm"``, ``{"name": "sliding_window", "window": 256}``, compositions) are resolved into
strategies in resolve.py.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# torch is not imported at run time here, so that `qwen3-mask list` answers without loading it.
MaskMod = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]

ENTRY_POINT_GROUP = "qwen3_custom_mask.masks"


class UnknownMaskError(KeyError, ValueError):
    """No strategy of that name is registered (a KeyError for lookups, a ValueError for bad specs)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


@dataclass(frozen=True)
class MaskEntry:
    """One registered strategy.

    inputs: names of per-call tensors the factory takes from ``forward(**inputs)`` / ``generate(**inputs)``
        (e.g. ``prefix_lengths``); they are not part of the saved spec.
    flash: for flash-attention, a function of the strategy parameters returning the kwargs that express the
        mask (``{}`` causal, ``{"is_causal": False}``, ``{"sliding_window": w}``); None if flash cannot.
    positions: a function ``(padding_mask, **inputs) -> (batch, total) position ids`` for strategies whose
        tokens do not sit at their index (packed documents restart at 0, tree drafts sit at prefix + depth);
        used when the caller passes no ``position_ids``.
    cache_bounds: a function of the parameters returning ``(first, last)``: a query only ever sees the first
        ``first`` real tokens and the last ``last`` earlier tokens, so `BoundedCache` may drop the rest.
    intervals: the mask's structure, for flex_attention's block indices without evaluating every (query, key)
        pair: a factory taking what the mask factory takes and returning ``fn(q) -> (lo, hi)``, where ``q`` is the
        (1, Q, 1) query positions and ``lo``/``hi`` broadcast to (batch, Q, n): the keys a query sees are exactly
        the union of ``[lo, hi)`` over the n intervals (padding aside). It may return None when the inputs of a
        call have no such form (documents whose tokens are not contiguous); None means the generic path.
    generates: False for strategies that make no sense token by token (a draft tree).
    """

    name: str
    factory: Callable[..., MaskMod]
    inputs: tuple[str, ...] = ()
    flash: Callable[..., dict] | None = None
    positions: Callable[..., torch.Tensor] | None = None
    cache_bounds: Callable[..., tuple[int, int]] | None = None
    generates: bool = True
    intervals: Callable[..., Callable | None] | None = None

    def __reduce__(self):
        # A registered entry is pickled (and copied) as its factory, by reference: its hooks may be lambdas, which
        # pickle cannot name, and importing the factory's module in a new process registers it again. A model keeps
        # the entry it resolved even after register_mask(replace=True) or unregister_mask (see `entry_of`).
        if _BY_FACTORY.get(self.factory) is self:
            return entry_of, (self.factory, self.name)
        return MaskEntry, tuple(getattr(self, f) for f in self.__dataclass_fields__)  # built by hand: by value

    @property
    def doc(self) -> str:
        """First line of the factory's docstring."""
        return (inspect.getdoc(self.factory) or "").split("\n", 1)[0]

    @property
    def parameters(self) -> dict[str, Any]:
        """Static (saved) parameters with their defaults (`inspect.Parameter.empty` when required)."""
        return {
            name: p.default
            for name, p in inspect.signature(self.factory).parameters.items()
            if name not in self.inputs and name not in CONTEXT_ARGS
        }

    @cached_property
    def accepts(self) -> frozenset[str]:
        """Every argument name the factory takes (parameters, per-call inputs, context args)."""
        return frozenset(inspect.signature(self.factory).parameters)


# Arguments the model glue fills in itself when a factory asks for them by name:
#   padding_mask (batch, total) bool, True for real tokens; its width covers every key position of the call
#       (past + new tokens, or a static cache's full length, whose unwritten slots are False);
#   sequence_length: past + new tokens (None while a compiled graph is traced);
#   position_ids (batch, new) as given to forward() (None if not given); num_heads of the model.
#   training: whether the model is in training mode (False in generate()): a strategy may relax a requirement
#       outside training (a `document` row without boundaries is one document).
CONTEXT_ARGS = ("padding_mask", "sequence_length", "position_ids", "num_heads", "training")

_MASKS: dict[str, MaskEntry] = {}
_BY_FACTORY: dict[Callable, MaskEntry] = {}  # every entry ever registered, by its factory: what a pickle names
_entry_points_loaded = False


def register_mask(
    name: str,
    *,
    inputs: tuple[str, ...] = (),
    flash: Callable[..., dict] | None = None,
    positions: Callable[..., torch.Tensor] | None = None,
    cache_bounds: Callable[..., tuple[int, int]] | None = None,
    generates: bool = True,
    intervals: Callable[..., Callable | None] | None = None,
    replace: bool = False,
) -> Callable[[Callable[..., MaskMod]], Callable[..., MaskMod]]:
    """Decorator that registers a mask factory under ``name``.

    >>> @register_mask("my_window")
    ... def my_window(window: int = 4):
    ...     def mask_mod(b, h, q_idx, kv_idx):
    ...         return (kv_idx <= q_idx) & (q_idx - kv_idx < window)
    ...     return mask_mod

    See `MaskEntry` for ``inputs``, ``flash``, ``positions``, ``cache_bounds``, ``generates`` and ``intervals``.
    Registering a taken name raises unless ``replace=True``. A model that already resolved the old
    factory keeps it: replacing or removing an entry never changes a built model.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Mask name must be a Python identifier such as 'my_window', got {name!r}.")
    inputs = tuple(inputs)

    def decorator(factory: Callable[..., MaskMod]) -> Callable[..., MaskMod]:
        if not callable(factory):
            raise TypeError(f"register_mask({name!r}) decorates a factory function, got {type(factory).__name__}.")
        if name in _MASKS and not replace:
            raise ValueError(
                f"A mask strategy named {name!r} is already registered ({_MASKS[name].factory.__module__}). "
                f"Pick another name, or pass replace=True to override it."
            )
        signature = inspect.signature(factory).parameters
        missing = [i for i in inputs if i not in signature]
        if missing:
            raise TypeError(f"Mask factory {name!r} declares inputs {missing} that are not parameters of {factory}.")
        _MASKS[name] = _BY_FACTORY[factory] = MaskEntry(name, factory, inputs, flash, positions, cache_bounds, generates, intervals)
        return factory

    return decorator


def unregister_mask(name: str) -> None:
    """Removes a strategy from the registry (models built with it keep working)."""
    get_mask(name)
    del _MASKS[name]


def _load_entry_points() -> None:
    """Imports third-party strategies declared under the ``qwen3_custom_mask.masks`` entry-point group.

    An entry point may name a module (importing it runs its ``@register_mask`` decorators) or a factory
    (registered under the entry point's name).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not break the built-in strategies
            logger.warning("Could not load mask plugin %r (%s): %s", ep.name, ep.value, err)
            continue
        if callable(obj) and not inspect.ismodule(obj) and ep.name not in _MASKS:
            register_mask(ep.name)(obj)


def available_masks() -> list[str]:
    """Sorted names of every registered strategy, plugins included."""
    _load_entry_points()
    return sorted(_MASKS)


def mask_input_names() -> set[str]:
    """Every per-call input name any registered strategy declares (e.g. ``prefix_lengths``)."""
    return {name for entry in _MASKS.values() for name in entry.inputs}


def entry_of(factory: Callable[..., MaskMod], name: str) -> MaskEntry:
    """The entry ``factory`` was registered with (unpickling, copying); the current ``name`` if it never was here."""
    entry = _BY_FACTORY.get(factory)
    return entry if entry is not None else get_mask(name)


def get_mask(name: str) -> MaskEntry:
    """The registry entry for ``name``; the error lists the known names."""
    if name not in _MASKS:
        _load_entry_points()
    if name not in _MASKS:
        from .presets import preset_names

        close = difflib.get_close_matches(str(name), available_masks(), n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        if name in preset_names():  # a shipped configs/ preset given without its suffix
            hint = f"A shipped preset has that name: pass '{name}.yaml'. " + hint
        raise UnknownMaskError(
            f"Unknown mask strategy {name!r}. {hint}Known strategies: {', '.join(available_masks())}. "
            f"Register your own with @qwen3_custom_mask.register_mask({name!r}) in every process that uses it (import "
            f"that module before from_pretrained), or install it as a package with a {ENTRY_POINT_GROUP!r} entry point, "
            f"which every process finds by itself (servers, TRL and lm-eval import nothing of yours)."
        )
    return _MASKS[name]
