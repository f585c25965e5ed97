"""Composition: ``{"and"|"or": [spec, ...]}``, ``{"not": spec}`` (attention-gym's and_masks/or_masks/not) and
``{"layers": {"0-13": spec, ...}}`` (one spec per group of layers), as strategies with the same interface as a
single registered one (`spec.Strategy`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import MaskMod
from .spec import Strategy

if TYPE_CHECKING:
    import torch


def and_intervals(parts):
    """Intersection of unions of intervals: every pairwise intersection (empty ones are harmless)."""

    def intervals(q):
        import torch

        lo, hi = parts[0](q)
        for part in parts[1:]:
            lo2, hi2 = part(q)
            lo = torch.maximum(lo.unsqueeze(-1), lo2.unsqueeze(-2)).flatten(-2)
            hi = torch.minimum(hi.unsqueeze(-1), hi2.unsqueeze(-2)).flatten(-2)
        return lo, hi

    return intervals


def or_intervals(parts):
    """Union: all the parts' intervals side by side."""

    def intervals(q):
        import torch

        bounds = [part(q) for part in parts]
        shape = torch.broadcast_shapes(*(b.shape[:-1] for pair in bounds for b in pair))
        return tuple(torch.cat([pair[i].expand(*shape, pair[i].shape[-1]) for pair in bounds], -1) for i in (0, 1))

    return intervals


def not_mask(mask_mod: MaskMod) -> MaskMod:
    def inverted(batch_idx, head_idx, q_idx, kv_idx):
        return ~mask_mod(batch_idx, head_idx, q_idx, kv_idx)

    return inverted


@dataclass(frozen=True, eq=False)
class CompositeStrategy(Strategy):
    """``and`` / ``or`` of several strategies, or ``not`` of one."""

    op: str
    children: tuple[Strategy, ...]

    @property
    def name(self) -> str:
        return self.op

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for child in self.children for name in child.inputs))

    @property
    def generates(self) -> bool:
        return all(child.generates for child in self.children)

    def to_dict(self) -> dict[str, Any]:
        if self.op == "not":
            return {"not": self.children[0].to_dict()}
        return {self.op: [child.to_dict() for child in self.children]}

    def mask_mod(self, **inputs: Any) -> MaskMod:
        from transformers.masking_utils import and_masks, or_masks

        mods = [child.mask_mod(**inputs) for child in self.children]
        if self.op == "not":
            return not_mask(mods[0])
        return (and_masks if self.op == "and" else or_masks)(*mods)

    def check_model(self, num_layers: int, num_heads: int) -> None:
        for child in self.children:
            child.check_model(num_layers, num_heads)

    def key_intervals(self, **inputs: Any):
        if self.op == "not":
            return None
        parts = [child.key_intervals(**inputs) for child in self.children]
        if any(part is None for part in parts):
            return None
        return and_intervals(parts) if self.op == "and" else or_intervals(parts)

    def cache_bounds(self) -> tuple[int, int] | None:
        # An intersection sees no more than any of its parts, so any bounded part bounds it.
        if self.op != "and":
            return None
        bounds = [b for b in (child.cache_bounds() for child in self.children) if b is not None]
        return min(bounds, key=sum) if bounds else None

    @property
    def places_tokens(self) -> bool:
        return any(child.places_tokens for child in self.children)

    def position_ids(self, **inputs: Any) -> torch.Tensor | None:
        for child in self.children:
            positions = child.position_ids(**inputs)
            if positions is not None:
                return positions
        return None

    def __repr__(self) -> str:
        return f"CompositeStrategy({self.to_dict()!r})"


_LAYER_KEY = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_layers(key: str) -> list[int]:
    """``"3"`` -> [3]; ``"0-13"`` -> [0..13]; ``"0-3,8"`` -> [0, 1, 2, 3, 8]."""
    layers = []
    for part in str(key).split(","):
        match = _LAYER_KEY.match(part)
        if not match:
            raise ValueError(
                f"Bad layer key {key!r} in a 'layers' spec: use layer indices and inclusive ranges such as "
                f"'0-13', '14-27' or '0,2,4'."
            )
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise ValueError(f"Bad layer range {part.strip()!r} in a 'layers' spec: the end is before the start.")
        layers.extend(range(first, last + 1))
    return layers


@dataclass(frozen=True, eq=False)
class LayeredStrategy(Strategy):
    """One strategy per group of layers: ``{"layers": {"0-13": spec_a, "14-27": spec_b}}``."""

    groups: tuple[tuple[str, Strategy], ...]

    name = "layers"

    @property
    def by_layer(self) -> dict[int, Strategy]:
        return {layer: strategy for key, strategy in self.groups for layer in parse_layers(key)}

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for _, s in self.groups for name in s.inputs))

    @property
    def generates(self) -> bool:
        return all(s.generates for _, s in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {key: strategy.to_dict() for key, strategy in self.groups}}

    def mask_mod(self, **inputs: Any) -> MaskMod:
        raise TypeError("A per-layer strategy has one mask_mod per layer: call .for_layer(i).mask_mod(...).")

    def for_layer(self, layer_idx: int) -> Strategy:
        return self.by_layer[layer_idx]

    def cache_bounds(self) -> tuple[int, int] | None:
        # One BoundedCache serves every layer: it keeps the loosest group's bounds (each layer's mask still
        # hides what its own strategy hides); one unbounded group leaves nothing to drop.
        bounds = [s.cache_bounds() for _, s in self.groups]
        if any(b is None for b in bounds):
            return None
        return max(b[0] for b in bounds), max(b[1] for b in bounds)

    @property
    def places_tokens(self) -> bool:
        return any(s.places_tokens for _, s in self.groups)

    def position_ids(self, **inputs: Any) -> torch.Tensor | None:
        import torch

        positions = {id(s): s.position_ids(**inputs) for _, s in self.groups}
        found = [p for p in positions.values() if p is not None]
        if found and (len(found) < len(positions) or any(not torch.equal(found[0], p) for p in found[1:])):
            raise ValueError(
                "The layer groups of this 'layers' spec place tokens at different positions (e.g. 'document' "
                "in some layers only); pass position_ids explicitly."
            )
        return found[0] if found else None

    def check_model(self, num_layers: int, num_heads: int) -> None:
        for _, strategy in self.groups:
            strategy.check_model(num_layers, num_heads)
        seen: dict[int, str] = {}
        for key, _ in self.groups:
            for layer in parse_layers(key):
                if layer in seen:
                    raise ValueError(f"Layer {layer} appears in both {seen[layer]!r} and {key!r} of the 'layers' spec.")
                seen[layer] = key
        outside = sorted(set(seen) - set(range(num_layers)))
        missing = sorted(set(range(num_layers)) - set(seen))
        if outside:
            raise ValueError(f"The 'layers' spec names layers {outside}, but the model has {num_layers} (0-{num_layers - 1}).")
        if missing:
            raise ValueError(
                f"The 'layers' spec leaves layers {missing} without a strategy; cover all {num_layers} layers "
                f"(e.g. add {{'{missing[0]}-{missing[-1]}': 'causal'}})."
            )

    def __repr__(self) -> str:
        return f"LayeredStrategy({self.to_dict()!r})"


