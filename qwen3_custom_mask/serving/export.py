"""Checkpoints other runtimes can serve: a plugin model as a plain ``qwen3`` checkpoint, where stock can express it.

Stock Qwen3 (and runtimes that read its config: vLLM, TGI, llama.cpp converters) knows three masks: causal,
bidirectional (``is_causal: false``) and one sliding window on the layers ``layer_types`` marks
``sliding_attention``. A strategy that is exactly one of those, per layer, exports; anything else is refused
with the reason, since a stock loader would silently run a different mask::

    export_stock("finetuned/", "served/")          # or: qwen3-mask export --model finetuned --stock served
    Qwen3ForCausalLM.from_pretrained("served/")    # same logits as CustomQwen3ForCausalLM on "finetuned/"
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from transformers import Qwen3Config

from ..model.configuration import PLUGIN_FIELDS, CustomQwen3Config

logger = logging.getLogger(__name__)



def served_form(strategy) -> dict | None:
    """The strategy's flash form as a server runs it (`stock_form`, and vLLM's plan in vllm.py): packed documents,
    served without boundaries, are one document per row, i.e. the direction alone (``{}`` causal,
    ``{"is_causal": False}``, or a window); None if it has no flash form."""
    form = strategy.flash_form()
    if not form:
        return form
    return {k: v for k, v in form.items() if k != "documents" and not (k == "is_causal" and v)}


def legacy_sliding_fields(layer_types: list[str], strategy) -> dict:
    """``use_sliding_window`` + ``max_window_layers`` that say what ``layer_types`` says: Qwen3Config rebuilt
    without layer_types, and readers that derive the layers from these (``i >= max_window_layers`` slides), get
    the same layers. They can state "every layer from k on"; any other pattern is refused."""
    sliding = [idx for idx, kind in enumerate(layer_types) if kind == "sliding_attention"]
    if not sliding:
        return {"use_sliding_window": False, "max_window_layers": len(layer_types)}
    first = sliding[0]
    if sliding != list(range(first, len(layer_types))):
        raise ValueError(
            f"Cannot export the mask strategy {strategy.to_dict()} to a stock qwen3 checkpoint: layers {sliding} slide, "
            f"and Qwen3's legacy fields (use_sliding_window, max_window_layers) can only say 'every layer from k on'; "
            f"readers that derive the layers from them would run a different mask. Slide a last run of layers instead."
        )
    return {"use_sliding_window": True, "max_window_layers": first}


def runtime_notes(fields: dict) -> list[str]:
    """What known runtimes ignore of an exported config (checked against their Qwen3 code as of 2026-12)."""
    notes = []
    kinds = set(fields["layer_types"])
    if "sliding_attention" in kinds and len(kinds) > 1:  # every layer sliding: vLLM's native Qwen3 serves it
        notes.append("vLLM 0.32's native Qwen3 refuses to start a checkpoint whose sliding window covers some layers "
                     "only (AssertionError 'Sliding window for some but all layers is not supported', vllm issue 39514, "
                     "open): with qwen3-custom-mask installed beside vLLM, serve the plugin checkpoint itself, or this "
                     "export with --hf-overrides '{\"architectures\": [\"CustomQwen3ForCausalLM\"]}' (each layer gets "
                     "its own window); without it, `vllm serve OUT --model-impl transformers`. transformers, TGI and "
                     "llama.cpp's converter read layer_types.")
    if fields["is_causal"] is False:
        notes.append("bidirectional: written as is_causal: false (transformers, vLLM) and use_bidirectional_attention: "
                     "true (text-embeddings-inference); a runtime that reads neither runs it causal.")
    return notes


def stock_form(strategy, config) -> dict:
    """The stock config fields that express ``strategy`` on a model with ``config``; ValueError if none do."""
    num_layers = config.num_hidden_layers
    forms = [served_form(strategy.for_layer(idx)) for idx in range(num_layers)]
    names = sorted({strategy.for_layer(idx).name for idx, form in enumerate(forms) if form is None})
    if names:
        raise ValueError(
            f"Cannot export the mask strategy {strategy.to_dict()} to a stock qwen3 checkpoint: {names} has no "
            f"standard form (stock Qwen3 expresses causal, bidirectional as is_causal: false, and one sliding window "
            f"per layer through layer_types). Serve it with qwen3_custom_mask, or export a causal/sliding variant."
        )
    bidirectional = [form.get("is_causal") is False for form in forms]
    if any(bidirectional):  # stock runs is_causal: false with the config's own sliding layers as the plugin does
        if not all(bidirectional) or any(form.get("sliding_window") for form in forms):
            raise ValueError(
                f"Cannot export the mask strategy {strategy.to_dict()} to a stock qwen3 checkpoint: stock sets the "
                f"direction for the whole model (is_causal), without windows; this strategy mixes directions or windows."
            )
        return {"is_causal": False}
    windows = []
    for idx, form in enumerate(forms):
        own = config.sliding_window if config.layer_types[idx] == "sliding_attention" else None
        candidates = [w for w in (own, form.get("sliding_window")) if w]
        windows.append(min(candidates) if candidates else None)
    distinct = sorted({w for w in windows if w is not None})
    if len(distinct) > 1:
        raise ValueError(
            f"Cannot export the mask strategy {strategy.to_dict()} to a stock qwen3 checkpoint: its layers use "
            f"windows {distinct}, and stock Qwen3 has one sliding_window for every sliding layer."
        )
    if not distinct:
        return {"layer_types": ["full_attention"] * num_layers, "use_sliding_window": False}
    return {
        "layer_types": ["sliding_attention" if w else "full_attention" for w in windows],
        "use_sliding_window": True,
        "sliding_window": distinct[0],
    }


def export_fields(model) -> dict:
    """Every mask field of the exported config.json (`stock_form` plus the flags each runtime reads)."""
    config = model.config
    fields = stock_form(model.mask_strategy, config)
    fields.setdefault("layer_types", list(config.layer_types))
    fields["is_causal"] = fields.get("is_causal", True)
    fields["use_bidirectional_attention"] = not fields["is_causal"]  # what text-embeddings-inference reads
    fields.update(legacy_sliding_fields(fields["layer_types"], model.mask_strategy))
    if fields["use_sliding_window"]:
        fields.setdefault("sliding_window", config.sliding_window)
    return fields


def export_stock(model, out_dir: str | Path) -> Path:
    """Writes ``model`` (a plugin model, a PEFT model on one, or the path of a plugin checkpoint) as a plain
    ``qwen3`` checkpoint: the same weights (a PEFT adapter merged into a copy), a config.json stock Qwen3 reads
    with the same mask. Raises before writing anything if the strategy has no standard form (`stock_form`)."""
    if isinstance(model, (str, Path)):
        from ..model import CustomQwen3ForCausalLM

        model = CustomQwen3ForCausalLM.from_pretrained(model)
    if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
        # save_pretrained of a PeftModel writes the adapter alone, which stock cannot load as a checkpoint.
        logger.info("export_stock: merging the PEFT adapter into a copy of the model")
        model = copy.deepcopy(model).merge_and_unload()
    config = model.config
    if not isinstance(config, CustomQwen3Config):
        raise TypeError(f"export_stock takes a qwen3_custom_mask model or checkpoint, got a {type(config).__name__}.")
    fields = export_fields(model)
    out = Path(out_dir)
    model.save_pretrained(out)
    plain = {k: v for k, v in config.to_dict().items() if k not in PLUGIN_FIELDS and k != "model_type"}
    plain.update(fields)
    plain["architectures"] = [type(model).__name__.replace("Custom", "", 1)]
    Qwen3Config(**plain).to_json_file(out / "config.json")
    for note in runtime_notes(fields):
        logger.warning("export_stock: %s", note)
    return out
