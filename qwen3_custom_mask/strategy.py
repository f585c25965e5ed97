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
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .registry import MaskEntry, MaskMod, get_mask

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


def _spec_error(spec: Any) -> TypeError:
    return TypeError(
        f"A mask strategy spec is a name such as 'prefix_lm', a dict such as {{'name': 'sliding_window', "
        f"'window': 256}}, a composition {{'and'|'or': [spec, ...]}} / {{'not': spec}}, or "
        f"{{'layers': {{'0-13': spec, ...}}}}; got {spec!r}."
    )


def _resolve(spec: Any, top_level: bool) -> Strategy:
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise _spec_error(spec)
    keys = set(spec)
    if keys & {*COMBINATORS, "layers"}:
        if len(keys) != 1:
            raise TypeError(f"A composition spec has exactly one key ('and', 'or', 'not' or 'layers'), got {sorted(keys)}.")
        (op, arg), = spec.items()
        if op == "layers":
            if not top_level:
                raise TypeError("A 'layers' spec must be the outermost spec; compose inside each layer group instead.")
            if not isinstance(arg, Mapping) or not arg:
                raise TypeError(f"'layers' maps layer ranges to specs, e.g. {{'0-13': 'causal'}}; got {arg!r}.")
            groups = tuple((str(key), _resolve(sub, False)) for key, sub in arg.items())
            for key, _ in groups:
                parse_layers(key)
            return LayeredStrategy(groups)
        if op == "not":
            return CompositeStrategy("not", (_resolve(arg, False),))
        if isinstance(arg, (str, Mapping)) or not isinstance(arg, Sequence) or len(arg) < 1:
            raise TypeError(f"{op!r} takes a list of one or more specs, got {arg!r}.")
        return CompositeStrategy(op, tuple(_resolve(sub, False) for sub in arg))
    if not isinstance(spec.get("name"), str):
        raise _spec_error(spec)
    params = {k: v for k, v in spec.items() if k != "name"}
    entry = get_mask(spec["name"])
    accepted = entry.parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        hint = f"it takes: {', '.join(accepted)}" if accepted else "it takes no parameters"
        inputs = [k for k in unknown if k in entry.inputs]
        if inputs:
            hint += f"; {inputs} are per-call inputs: pass them to forward()/generate()"
        raise TypeError(f"Unknown parameter(s) {unknown} for mask strategy {entry.name!r}: {hint}.")
    missing = [k for k, default in accepted.items() if default is inspect.Parameter.empty and k not in params]
    if missing:
        raise TypeError(f"Mask strategy {entry.name!r} needs parameter(s) {missing}.")
    _check_param_values(entry, params)
    strategy = MaskStrategy(entry, dict(params))
    if not entry.inputs:
        strategy.mask_mod()  # validates the values now, not mid-forward
    return strategy


# Positions are int64 and flash-attention's windows int32: a larger integer parameter can only overflow later.
LARGEST_PARAM = 2**31 - 1


def _check_param_values(entry, params: Mapping[str, Any]) -> None:
    """Checks every strategy's parameters when the strategy is set (also those of strategies with per-call
    inputs, whose factory runs only at the first forward): a flag whose default is a bool takes a bool, and
    no integer overflows what positions and kernels hold."""
    for key, value in params.items():
        default = entry.parameters.get(key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{entry.name}: {key} must be true or false, got {value!r}.")
        numbers = value if isinstance(value, (list, tuple)) else [value]
        for number in numbers:
            if isinstance(number, int) and not isinstance(number, bool) and abs(number) > LARGEST_PARAM:
                raise ValueError(
                    f"{entry.name}: {key}={number} is larger than {LARGEST_PARAM} (2**31 - 1), more than any sequence "
                    f"holds; use a value up to the longest sequence, or a strategy without that limit."
                )


SPEC_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def load_spec_file(path: str | Path) -> Any:
    """A spec from a JSON/YAML file (the presets in ``configs/``): the whole file, or its ``mask_strategy`` key."""
    from .recipes import preset_names, shipped_preset

    path = shipped_preset(str(path)) or Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mask strategy file {str(path)!r} does not exist (shipped presets, usable by name "
                                f"from any folder: {', '.join(f'{n}.yaml' for n in preset_names())}).")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if isinstance(data, Mapping) and "mask_strategy" in data:
        data = data["mask_strategy"]
    if data is None:
        raise ValueError(f"{str(path)!r} holds no mask strategy.")
    return data


def resolve_strategy(spec: str | Mapping[str, Any] | Strategy | None) -> Strategy:
    """Turns a spec (see the module docstring; None means causal) into a strategy.

    A string ending in .json/.yaml/.yml is read as a file (``configs/prefix_lm.yaml``).

    Unknown or missing parameters raise a TypeError naming the accepted ones; a factory that needs no
    per-call inputs is called once here so that bad values (e.g. ``window=-1``) fail now, not mid-forward.
    """
    if isinstance(spec, (str, Path)) and str(spec).endswith(SPEC_FILE_SUFFIXES):
        spec = load_spec_file(spec)
    return _resolve("causal" if spec is None else spec, top_level=True)
