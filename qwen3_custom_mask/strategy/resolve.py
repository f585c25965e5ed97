"""`resolve_strategy`: a spec (what ``config.json`` stores and users write; see `spec`) checked against the
registry and the factories' signatures, and turned into a `Strategy`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .composition import CompositeStrategy, LayeredStrategy, parse_layers
from .registry import get_mask
from .spec import COMBINATORS, MaskStrategy, Strategy


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
    from .presets import preset_names, shipped_preset

    path = shipped_preset(str(path)) or Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mask strategy file {str(path)!r} does not exist (shipped presets, usable by name "
                                f"from any folder: {', '.join(f'{n}.yaml' for n in preset_names())}).")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError: say which file, in one line
        where = " ".join(str(err).split())
        raise ValueError(f"Mask strategy file {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {where}") from None
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
