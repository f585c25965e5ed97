"""Strategies: a resolved spec, ready to build mask_mods for the model glue.

A spec is what ``config.json`` stores and what users write:

    "prefix_lm"                                         a registered strategy, default parameters
    {"name": "sliding_window", "window": 256}           ... with parameters
    {"and": [spec, spec, ...]}  {"or": [...]}  {"not": spec}     composition (attention-gym's and_masks/or_masks)
    {"layers": {"0-13": spec_a, "14-27": spec_b}}       one spec per group of layers (top level only)

`resolve_strategy` checks a spec against the registry and the factories' signatures and returns one of the
classes below. They share one small interface (name, to_dict, inputs, mask_mod, flash_form, cache_bounds,
position_ids, for_layer), so the model glue never looks at which kind it holds.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .registry import MaskEntry, MaskMod

if TYPE_CHECKING:
    import torch

COMBINATORS = ("and", "or", "not")


class Strategy:
    """Interface shared by every resolved spec."""

    name: str
    inputs: tuple[str, ...] = ()
    generates: bool = True

    def to_dict(self) -> Any:
        raise NotImplementedError

    def mask_mod(self, **inputs: Any) -> MaskMod:
        """The mask_mod for one forward; ``inputs`` holds per-call inputs and context args (see registry)."""
        raise NotImplementedError

    def flash_form(self) -> dict | None:
        """The flash-attention kwargs that express this mask (``{}`` is plain causal), or None."""
        return None

    def cache_bounds(self) -> tuple[int, int] | None:
        """``(first real tokens, last tokens)`` a query can ever see, or None if unbounded."""
        return None

    def key_intervals(self, **inputs: Any):
        """``fn(q) -> (lo, hi)``: the keys each query sees as a union of intervals (see `MaskEntry.intervals`),
        or None when this call's mask has no such form (flex_attention then evaluates the mask_mod)."""
        return None

    def position_ids(self, **inputs: Any) -> torch.Tensor | None:
        """(batch, total) positions when the strategy places tokens itself, else None (stock positions)."""
        return None

    @property
    def places_tokens(self) -> bool:
        """Whether `position_ids` is defined (packed documents, draft trees)."""
        return False

    def for_layer(self, layer_idx: int) -> Strategy:
        return self

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Raises if the spec does not fit a model of ``num_layers`` layers and ``num_heads`` attention heads
        (a per-layer spec that misses layers, a per-head window list of the wrong length)."""

    def __eq__(self, other) -> bool:
        return isinstance(other, Strategy) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))


@dataclass(frozen=True, eq=False)
class MaskStrategy(Strategy):
    """A registered factory captured at resolve time plus its validated static parameters."""

    entry: MaskEntry
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.entry.inputs

    @property
    def generates(self) -> bool:
        return self.entry.generates

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved in ``config.json``: ``{"name": ..., **params}``."""
        return {"name": self.name, **self.params}

    def _wanted(self, inputs: Mapping[str, Any], fn) -> dict[str, Any]:
        accepts = self.entry.accepts if fn is self.entry.factory else inspect.signature(fn).parameters
        return {k: v for k, v in inputs.items() if k in accepts}

    def mask_mod(self, **inputs: Any) -> MaskMod:
        return self.entry.factory(**self.params, **self._wanted(inputs, self.entry.factory))

    def check_model(self, num_layers: int, num_heads: int) -> None:
        if not self.entry.inputs:
            self.mask_mod(num_heads=num_heads)  # e.g. a per-head window list must match num_heads

    @property
    def resolved_params(self) -> dict[str, Any]:
        """The parameters with the factory's defaults filled in: what the registry's hooks (flash, cache_bounds,
        intervals) receive, so a spec that leaves a parameter at its default (``"sliding_window"``) works there too."""
        defaults = {k: v for k, v in self.entry.parameters.items() if v is not inspect.Parameter.empty}
        return {**defaults, **self.params}

    def key_intervals(self, **inputs: Any):
        if self.entry.intervals is None:
            return None
        return self.entry.intervals(**self.resolved_params, **self._wanted(inputs, self.entry.intervals))

    def flash_form(self) -> dict | None:
        return self.entry.flash(**self.resolved_params) if self.entry.flash else None

    def cache_bounds(self) -> tuple[int, int] | None:
        return self.entry.cache_bounds(**self.resolved_params) if self.entry.cache_bounds else None

    @property
    def places_tokens(self) -> bool:
        return self.entry.positions is not None

    def position_ids(self, **inputs: Any) -> torch.Tensor | None:
        if self.entry.positions is None:
            return None
        return self.entry.positions(**self._wanted(inputs, self.entry.positions))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"MaskStrategy({self.name}({args}))"


