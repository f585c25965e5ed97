"""The checks every `qwen3-mask` command makes before anything heavy loads: flags, paths, strategies, and what a
checkpoint's config.json alone decides. A mistake raises `UserError`, which the CLI prints in one line (exit 2).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake in the command line: reported in one line, no traceback."""


def _value(text: str):
    """``3`` -> 3, ``[1, 2]`` or ``1,2`` -> [1, 2], ``true`` -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return [json.loads(part) for part in text.split(",")] if "," in text else text
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{flag} takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _value(value)
    return out


def _spec(text: str | None, params: dict | None = None):
    """A strategy from a name, a JSON spec or a .json/.yaml file, with --param overrides for a name."""
    if text is None:
        spec = "causal"
    elif text.lstrip().startswith(("{", "[")):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"--strategy {text!r} is not valid JSON ({err}); e.g. '{{\"name\": \"sliding_window\", \"window\": 256}}'") from None
    else:
        spec = text
    if params:
        if not isinstance(spec, str) or spec.endswith((".json", ".yaml", ".yml")):
            raise UserError("--param works with a strategy name; put parameters inside a JSON spec or file instead")
        spec = {"name": spec, **params}
    from ..strategy import resolve_strategy

    return resolve_strategy(spec)


BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
MAX_SHOW_LENGTH = 1024
DTYPES = ("float32", "bfloat16", "float16", "float64")


def _check_flags(args) -> None:
    """The flag mistakes that need no model, answered before torch is imported (a model load takes seconds)."""
    import difflib

    def near(value, choices):
        close = difflib.get_close_matches(value, choices, n=1)
        return f"did you mean {close[0]}? " if close else ""

    new_tokens = getattr(args, "max_new_tokens", None)
    if new_tokens is not None and new_tokens < 1:
        raise UserError(f"--max-new-tokens {new_tokens}: give at least 1")
    backend = getattr(args, "backend", None)
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not an attention backend; {near(backend, BACKENDS)}use one of {', '.join(BACKENDS)}")
    dtype = getattr(args, "dtype", None)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not a torch dtype; {near(dtype, DTYPES)}use float32, bfloat16 or float16")
    device = getattr(args, "device", None)
    if device is not None and not re.fullmatch(r"(cpu|cuda|mps|xpu|npu|hpu|meta)(:\d+)?|\d+", device):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N")
    if getattr(args, "model", None):
        _model_path_exists(args.model)
    stock = getattr(args, "stock", None)
    if stock is not None and os.path.exists(stock) and not os.path.isdir(stock):
        raise UserError(f"--stock {stock}: a file is there; give a folder to write the checkpoint to (created if missing)")
    strategy = _spec(args.strategy) if getattr(args, "strategy", None) and args.command in ("generate", "export") else None
    if device is not None and device.startswith("cuda"):
        _check_device(device)  # imports torch (a second), not transformers or a model
    if args.command in ("generate", "export") and (strategy is not None or args.command == "export"):
        _check_strategy_fits(args, strategy)


def _check_strategy_fits(args, strategy) -> None:
    """What the checkpoint's config alone decides, before any weights load: a strategy generate() cannot cache
    (without --no-cache), or one a stock checkpoint cannot express (export)."""
    from ..strategy import resolve_strategy

    path = _model_path(args.model)
    if args.command == "export":  # the stock form reads layer_types as transformers derives them
        from ..model.configuration import CustomQwen3Config
        from ..serving.export import stock_form

        config = CustomQwen3Config.from_pretrained(path)
        stock_form(strategy if strategy is not None else resolve_strategy(config.mask_strategy), config)
    elif not args.no_cache:  # config.json as it is (no transformers import: a second, not several)
        from ..strategy.cacheable import serving_refusal

        config = json.loads((Path(path) / "config.json").read_text()) if os.path.isdir(path) else None
        if config is None:  # a hub id: generate() refuses it later, the same way
            return
        strategy = strategy if strategy is not None else resolve_strategy(config.get("mask_strategy"))
        why = serving_refusal(strategy, config["num_hidden_layers"], config["num_attention_heads"], continuous_batching=False)
        if why and "generated after it" in why:
            raise UserError(f"The mask strategy {strategy.name!r} lets a token see tokens generated after it, which a KV "
                            f"cache cannot honour: pass --no-cache (recomputes every step), or use prefix_lm or causal.")
        if why:
            raise UserError(why)


def _model_path_exists(model_id: str) -> str:
    """A path that looks local (absolute, ./, ~, or several parts that are no hub id) must be a checkpoint folder."""
    import os

    path = os.path.expanduser(model_id)
    hub_like = re.fullmatch(r"[\w.-]+/[\w.-]+", model_id) is not None and not model_id.startswith(".")
    local = os.path.isabs(model_id) or model_id.startswith((".", "~")) or os.path.exists(path) or not hub_like
    if local and not os.path.isdir(path):
        raise UserError(f"--model {model_id}: no such folder (a checkpoint folder with config.json, or a hub id like Qwen/Qwen3-0.6B)")
    if local and not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"--model {model_id}: the folder has no config.json (is it a checkpoint folder?)")
    return path


def _model_path(model_id: str | None) -> str:
    """The embedded default, a local folder, or a hub id; a path that looks local must exist."""
    from .default import default_checkpoint, default_path

    if model_id:
        return _model_path_exists(model_id)
    if not (default_path() / "config.json").is_file():  # first use: a few seconds of work that should not look dead
        print(f"qwen3-mask: building the embedded default checkpoint in {default_path()} (first use only)", file=sys.stderr, flush=True)
    return str(default_checkpoint())


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device on this machine (torch {torch.__version__}); use --device cpu")
