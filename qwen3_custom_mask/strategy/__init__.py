"""The strategy: what a spec in ``config.json`` means, and how it becomes each backend's mask.

    registry.py     named mask families: register_mask, get_mask, available_masks (families live in ../masks/)
    spec.py         the Strategy interface and one registered family with its parameters (MaskStrategy)
    composition.py  and / or / not, and one spec per group of layers
    resolve.py      resolve_strategy: a spec (name, dict, file) checked and turned into a Strategy
    lowering.py     a mask_mod lowered per backend: dense bool, additive float, flex BlockMask, flash form
    reference.py    the brute-force reference (plain attention, mask applied element by element)
    presets.py      the shipped configs/*.yaml, found by name

torch-free at import (lowering and reference import torch themselves), so the CLI answers fast.
"""

from .composition import CompositeStrategy, LayeredStrategy, and_intervals, not_mask, or_intervals, parse_layers
from .registry import ENTRY_POINT_GROUP, MaskEntry, MaskMod, available_masks, get_mask, register_mask, unregister_mask
from .resolve import LARGEST_PARAM, SPEC_FILE_SUFFIXES, load_spec_file, resolve_strategy
from .spec import COMBINATORS, MaskStrategy, Strategy

# Everything 0.1.0's strategy.py held is importable from here (third-party strategies import not_mask, ...).
__all__ = [
    "COMBINATORS", "ENTRY_POINT_GROUP", "LARGEST_PARAM", "SPEC_FILE_SUFFIXES", "CompositeStrategy", "LayeredStrategy",
    "MaskEntry", "MaskMod", "MaskStrategy", "Strategy", "and_intervals", "available_masks", "get_mask",
    "load_spec_file", "not_mask", "or_intervals", "parse_layers", "register_mask", "resolve_strategy",
    "unregister_mask",
]
