"""The body's mask builder: one forward's attention masks, from the strategy, the call's inputs and the cache.

`build_masks` is what `CustomQwen3Model.forward` calls where stock `Qwen3Model.forward` calls
`create_causal_mask` / `create_sliding_window_causal_mask`, and what `create_masks_for_generate` calls for
static caches (outside the compiled forward, as stock does). It returns stock's ``{layer_type: mask}`` dict:

* the default ``causal`` strategy: stock's own builders, so the default is stock Qwen3 exactly (sdpa's
  ``is_causal`` fast path, packed-sequence detection and sliding layers included);
* any other strategy: under every layer type a `LayerMasks` ``{layer_idx: (mask, attention kwargs)}``; a
  forward pre-hook on each decoder layer (`pick_layer_mask`) hands the layer its own entry, so per-layer
  strategies and per-layer kwargs (sdpa's ``is_causal=False`` fast path, flash's direction) need no patching.

What the caller may pass as ``attention_mask`` (shapes: B batch, H heads, Q new tokens, K past + new keys):

| attention_mask                     | meaning                                                                |
|------------------------------------|------------------------------------------------------------------------|
| None / 2D (B, K) 1 = real token    | the strategy, AND padding                                              |
| 4D bool (B, 1|H, Q, K) or 0/1 int  | replaces the strategy for that call (True / 1 = attend)                |
| 4D float, additive (0 / finfo.min) | stock's meaning: handed to eager/sdpa as it is; lowered like a bool     |
|                                    | mask (``mask == 0``) for flex_attention and for cached decode          |
| ``{layer_type: mask}`` dict        | stock's meaning: used as it is (handled by the body, not here)         |

Every mask of a layer type is sized from that type's own cache layer (``get_mask_sizes``), so sliding
layers (whose cache keeps only the window) get masks over the keys their cache returns. A static cache's
unwritten slots are padding.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import (
    and_masks,
    create_causal_mask,
    create_sliding_window_causal_mask,
)

from transformers.utils import logging

from ..masks._checks import first_real_token
from ..masks.user_mask import check_user_mask, user_mask
from ..strategy.composition import and_intervals
from ..strategy.lowering import FLASH_BACKENDS, lower
from .cache import NOT_STARTED, BoundedCache
from .compat import mask_cache_kwarg
from .packed import continue_documents, read_per_document, within_documents

logger = logging.get_logger(__name__)
DENSE_FLOAT_BACKENDS = ("eager", "sdpa")
MASK_CACHE_KWARG = mask_cache_kwarg()  # read once: torch.compile sees a plain string


class LayerMasks(dict):
    """``{layer_idx: (mask, attention kwargs)}``, put under every layer type of the mask dict.

    Marks a mask dict as built by this plugin (its strategy inputs already consumed). generate() calls
    ``.contiguous()`` on every value of a pre-built mask dict, hence the method.
    """

    def contiguous(self) -> LayerMasks:
        return self


def pick_layer_mask(layer_idx: int, module, args, kwargs):
    """Forward pre-hook of decoder layer ``layer_idx``: swaps a `LayerMasks` for the layer's own mask."""
    masks = kwargs.get("attention_mask")
    if isinstance(masks, LayerMasks):
        mask, extra = masks[layer_idx]
        return args, {**kwargs, "attention_mask": mask, **extra}
    return None


def layer_mask(masks: dict, layer_idx: int, layer_type: str = "full_attention"):
    """``(mask, attention kwargs)`` that decoder layer ``layer_idx`` receives from a mask dict."""
    entry = masks[layer_type]
    return entry[layer_idx] if isinstance(entry, LayerMasks) else (entry, {})


def flash_error(what: str, backend: str) -> str:
    return (
        f"The {what} mask cannot be expressed by {backend}, which supports only causal, bidirectional and "
        f"sliding-window masks (plus padding). Load the model with attn_implementation='sdpa' or "
        f"'flex_attention' for it."
    )


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def refuse_non_finite(mask: torch.Tensor) -> None:
    """A float 4D mask with NaN or +inf would make the logits NaN (-inf and finfo.min block, as stock reads them)."""
    if _compiling():
        return
    bad = mask.isnan() | (mask == float("inf"))
    if bad.any():
        raise ValueError(
            f"The 4D float attention_mask holds NaN or +inf (first at index {bad.nonzero()[0].tolist()}), which makes "
            f"the logits NaN. An additive mask holds 0 to attend and torch.finfo(dtype).min to block; or pass a bool mask."
        )


def as_bool_user_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 4D bool / 0-1 integer / additive float (0 = attend, very negative = blocked) mask as bool."""
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_floating_point:
        refuse_non_finite(mask)
        blocked = mask <= torch.finfo(mask.dtype).min / 2
        if not _compiling() and not ((mask == 0) | blocked).all():
            raise ValueError(
                "This 4D float attention_mask holds values other than 0 (attend) and a large negative number "
                "(blocked), i.e. an additive bias; only eager and sdpa take a bias (as stock does), and not for "
                "generate(). Pass a bool mask (True = attend) for this backend."
            )
        return ~blocked
    if not _compiling() and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"A 4D integer attention_mask holds 1 (attend) and 0 (blocked), got other values ({mask.dtype}).")
    return mask != 0


def padding_mask(attention_mask, batch_size: int, seen, total: int, device) -> torch.Tensor:
    """(batch, total) bool, True for real tokens; slots after the ``seen`` tokens (a static cache's unwritten
    ones) are False. ``seen`` (past + new tokens) may be a 0-d tensor (a static cache's length)."""
    if attention_mask is None:
        return (torch.arange(total, device=device) < seen).expand(batch_size, total)
    if attention_mask.dim() == 2 and attention_mask.shape[0] == batch_size and attention_mask.shape[1] > total:
        raise ValueError(
            f"2D attention_mask covers {attention_mask.shape[1]} positions (past + new tokens) but there is room for "
            f"{total} (what the KV cache can hold, or the new tokens without a cache). With a StaticCache, create it "
            f"with a larger max_cache_len (at least prompt + max_new_tokens) or use a DynamicCache."
        )
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size:
        raise ValueError(
            f"2D attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, past + new tokens) = "
            f"({batch_size}, {seen}). A custom mask is 4D: (batch, 1 or heads, new tokens, past + new tokens)."
        )
    width = attention_mask.shape[1]
    if not _compiling() and width not in (int(seen), total):
        raise ValueError(
            f"2D attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, past + new tokens) = "
            f"({batch_size}, {int(seen)}). A custom mask is 4D: (batch, 1 or heads, new tokens, past + new tokens)."
        )
    if attention_mask.dtype.is_floating_point and not _compiling() and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise TypeError(
            f"A 2D attention_mask holds 1 for real tokens and 0 for padding, got {attention_mask.dtype} values "
            f"other than 0 and 1 (an additive float mask?). Pass the 0/1 padding mask, or a 4D mask."
        )
    padding = attention_mask.to(device=device, dtype=torch.bool)
    return torch.nn.functional.pad(padding, (0, total - width))


def stock_causal_masks(body, inputs_embeds, attention_mask, cache, position_ids) -> dict:
    """Plain causal: stock's builders, so the default is exactly stock Qwen3."""
    kwargs = dict(config=body.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
    kwargs[MASK_CACHE_KWARG] = cache  # `cache` from transformers 5.24, `past_key_values` before
    masks = {"full_attention": create_causal_mask(**kwargs)}
    if body.has_sliding_layers:
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    return masks


def is_bidirectional(form: dict | None) -> bool:
    # Not `form == {...}`: torch 2.11's dynamo fails tracing `None == dict` (len(None) in its dict polyfill).
    return form is not None and form == {"is_causal": False}


def sliding_layer_overlay(form: dict | None, window: int):
    """What a config's sliding layer adds to a strategy: keys less than ``window`` positions away on either side
    (for a causal strategy, stock's sliding window), or, for the bidirectional strategy, stock's bidirectional
    window ``|q - kv| <= window`` (so that a stock ``is_causal: false`` checkpoint runs as stock runs it)."""
    reach = window if is_bidirectional(form) else window - 1  # how far on either side a key may be

    def within(batch_idx, head_idx, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= reach

    within.intervals = lambda q: (q - reach, q + reach + 1)  # the same, for flex_attention's block indices
    return within


def _layer_sizes(config, cache, q_length: int) -> dict[str, tuple[int, int]]:
    """``{layer_type: (kv_offset, kv_length)}``, each read off the first cache layer of that type."""
    sizes = {}
    for layer_type in dict.fromkeys(config.layer_types):
        if cache is None:
            sizes[layer_type] = (0, q_length)
        else:
            kv_length, kv_offset = cache.get_mask_sizes(q_length, config.layer_types.index(layer_type))
            sizes[layer_type] = (kv_offset, kv_length)
    return sizes


def build_masks(body, inputs_embeds, attention_mask, cache, position_ids, mask_inputs: dict, prompt_mask=None):
    """Returns ``({layer_type: mask or LayerMasks}, position_ids)`` for one forward (see the module docstring).

    inputs_embeds: (B, Q, *) for batch size, length, dtype and device only (a 0-width tensor will do).
    mask_inputs: the strategy's per-call inputs (e.g. ``prefix_lengths``). prompt_mask: generate()'s 4D
    prompt mask (B, 1|H, P, P), kept for the prompt rows while generated rows attend causally.
    """
    config, backend = body.config, body.config._attn_implementation
    batch_size, q_length = inputs_embeds.shape[:2]
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    is_4d = isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4
    bounded = isinstance(cache, BoundedCache)
    if not is_4d and prompt_mask is None and not bounded and body.mask_strategy_is_causal:
        return stock_causal_masks(body, inputs_embeds, attention_mask, cache, position_ids), position_ids
    if (is_4d or prompt_mask is not None) and mask_inputs:
        raise ValueError(
            f"A 4D attention mask replaces the mask strategy, so {sorted(mask_inputs)} would be ignored; pass one or the other."
        )

    q_offset = 0 if cache is None else cache.get_seq_length()
    if isinstance(q_offset, torch.Tensor):  # a static cache's counter, which its update() bumps in place mid-forward
        q_offset = q_offset.clone().reshape(())  # 0-d: before transformers 5.2x the counter has shape (1,)
    seen = q_offset + q_length
    sizes = _layer_sizes(config, cache, q_length)
    total = max(offset + length for offset, length in sizes.values())
    if isinstance(seen, int):
        total = max(total, seen)
    if is_4d:
        check_user_mask(attention_mask, batch_size=batch_size, num_heads=config.num_attention_heads, q_length=q_length, kv_lengths=(seen, total))
        if attention_mask.dtype.is_floating_point:
            refuse_non_finite(attention_mask)  # before the additive mask is handed over as it is
        if attention_mask.dtype.is_floating_point and backend in DENSE_FLOAT_BACKENDS and not bounded and not body.has_sliding_layers:
            # Stock's meaning: an additive mask (or bias) handed to the attention as it is, for every layer.
            return {layer_type: attention_mask for layer_type in sizes}, position_ids
        padding = padding_mask(None, batch_size, seen, total, device)
    else:
        padding = padding_mask(attention_mask, batch_size, seen, total, device)

    kv_positions = None
    if bounded:
        bound_cache(body, cache, padding, user_mask=is_4d or prompt_mask is not None)
        kv_positions = cache.kv_positions(q_length)
        sizes = {layer_type: (0, kv_positions.shape[-1]) for layer_type in sizes}

    call = dict(batch_size=batch_size, num_heads=config.num_attention_heads, q_offset=q_offset, q_length=q_length, padding_mask=padding, device=device, kv_positions=kv_positions)
    if is_4d:
        groups = [(user_mask(as_bool_user_mask(attention_mask).to(device), row_offset=q_offset), None, None, body.all_layers)]
    elif prompt_mask is not None:
        groups = [(user_mask(as_bool_user_mask(prompt_mask).to(device)), None, None, body.all_layers)]
    else:
        strategy = body.mask_strategy
        context = dict(mask_inputs, padding_mask=padding, position_ids=position_ids, num_heads=config.num_attention_heads,
                       training=body.training)
        if not _compiling():
            context["sequence_length"] = int(seen)
        if "document_ids" in strategy.inputs and cache is not None and not _compiling():
            position_ids = continue_documents(cache, strategy, context, position_ids, q_offset, q_length, batch_size)
        if position_ids is None and strategy.places_tokens:
            position_ids = strategy.position_ids(**context)[:, q_offset : q_offset + q_length]
        structure = backend == "flex_attention" or backend in FLASH_BACKENDS  # block indices, varlen documents
        # Packed rows read document by document (packed.py): padding-free packing for every strategy, as stock's
        # builders; a composition with `document` whose boundaries come from position_ids, in every forward.
        sequences, positions = None, None
        if backend not in FLASH_BACKENDS and mask_inputs.get("document_ids") is None:
            sequences, positions = read_per_document(strategy, context, position_ids, attention_mask, cache, padding,
                                                     seen, total, batch_size, bounded)
        groups = [(s.mask_mod(**context), s.flash_form(), s.key_intervals(**context) if structure else None, layers)
                  for s, layers in body.mask_groups]
        if sequences is not None:
            if any(is_bidirectional(form) for _, form, _, _ in groups) and body.training and not _compiling():
                logger.warning_once(
                    "position_ids restart inside a row (padding-free packing): 'bidirectional' attends across the packed "
                    "documents, as stock's is_causal: false does. For packed bidirectional training use "
                    "{'name': 'document', 'causal': False}."
                )
            groups = [(mask_mod if is_bidirectional(form) else within_documents(mask_mod, sequences, positions), form,
                       intervals if is_bidirectional(form) else None, layers) for mask_mod, form, intervals, layers in groups]

    masks = LayerMasks()
    for mask_mod, form, intervals, layers in groups:
        for layer_type, (kv_offset, kv_length) in sizes.items():
            typed = [idx for idx in layers if config.layer_types[idx] == layer_type]
            if not typed:
                continue
            mask, extra = _lower(body, backend, mask_mod, form, intervals, layer_type, padding, dtype, call, kv_offset, kv_length)
            for idx in typed:
                masks[idx] = (mask, extra)
    return {layer_type: masks for layer_type in sizes}, position_ids


def lower_dense_masks(body, dense: dict[int, torch.Tensor], cache, dtype, device) -> dict:
    """Per-layer bool masks (B, 1|H, Q, cached + Q) that already say everything a layer may see (a sliding
    layer's window included, measured at the queries' true positions), lowered for the backend as one ready
    ``{layer_type: LayerMasks}`` for forward(). verify_draft_tree needs it: a draft sits at its depth, not
    at its index in the tree, so the body's sliding-layer window over contiguous rows would be wrong."""
    config, backend = body.config, body.config._attn_implementation
    if backend in FLASH_BACKENDS:
        raise ValueError(flash_error("4D attention_mask", backend))
    batch_size, _, q_length, _ = next(iter(dense.values())).shape
    q_offset = cache.get_seq_length()
    sizes = _layer_sizes(config, cache, q_length)
    total = max(offset + length for offset, length in sizes.values())
    call = dict(batch_size=batch_size, num_heads=config.num_attention_heads, q_offset=q_offset, q_length=q_length,
                padding_mask=padding_mask(None, batch_size, q_offset + q_length, total, device), device=device)
    masks, lowered = LayerMasks(), {}
    for idx, mask in dense.items():
        key = (id(mask), config.layer_types[idx])  # layers sharing a mask share its lowering, as in build_masks
        if key not in lowered:
            kv_offset, kv_length = sizes[key[1]]
            lowered[key] = (lower(backend, user_mask(mask, row_offset=q_offset), dtype=dtype, kv_offset=kv_offset, kv_length=kv_length, **call), {})
        masks[idx] = lowered[key]
    return {layer_type: masks for layer_type in sizes}


def _lower(body, backend, mask_mod, form, intervals, layer_type, padding, dtype, call, kv_offset, kv_length):
    """One mask_mod for the layers of one type: ``(mask, extra attention kwargs)``."""
    keys = padding[:, kv_offset : kv_offset + kv_length]  # False for padding and a static cache's empty slots
    if backend in FLASH_BACKENDS:
        if form is None:
            raise ValueError(flash_error("4D attention_mask", backend))
        if form.get("documents"):
            return flash_documents(intervals, form["is_causal"], keys, call, kv_offset)
        # The window is a module attribute (set by set_mask_strategy); the rest (is_causal) travels per layer.
        extra = {k: v for k, v in form.items() if k != "sliding_window"}
        return (None if bool(keys.all()) else keys), extra
    if layer_type == "sliding_attention":
        overlay = sliding_layer_overlay(form, body.config.sliding_window)
        mask_mod = and_masks(mask_mod, overlay)
        intervals = and_intervals([intervals, overlay.intervals]) if intervals is not None else None
    elif is_bidirectional(form) and backend == "sdpa" and call["kv_positions"] is None and not _compiling():
        if bool(keys.all()):
            return None, {"is_causal": False}  # sdpa's no-mask fast path
    return lower(backend, mask_mod, dtype=dtype, intervals=intervals, kv_offset=kv_offset, kv_length=kv_length, **call), {}


def flash_documents(intervals, causal: bool, keys: torch.Tensor, call: dict, kv_offset: int):
    """Packed documents for flash-attention, as stock runs packed sequences: varlen over the flattened batch.

    A forward over whole rows (training, prefill) gets ``cu_seq_lens_q/k`` that start a sequence at every
    document, padding run and row; a decode step (one new token) gets a 2D mask of its own document's keys.
    """
    q_offset, q_length = call["q_offset"], call["q_length"]
    if intervals is None:
        raise ValueError(
            "The 'document' mask reaches flash-attention through varlen sequences, which needs each document's "
            "tokens contiguous in its row (as packed rows are). Use sdpa or flex_attention for interleaved documents."
        )
    device = keys.device
    if q_length == 1:  # decoding: the query's document is a run of keys ending at the query
        lo, hi = intervals(torch.as_tensor(q_offset, device=device).view(1, 1, 1))
        positions = torch.arange(kv_offset, kv_offset + keys.shape[1], device=device)
        return keys & (positions >= lo[:, 0]) & (positions < hi[:, 0]), {"is_causal": True}
    if not isinstance(q_offset, int) or q_offset != 0 or keys.shape[1] != q_length:
        raise ValueError(
            "flash-attention takes packed documents for whole rows (training, prefill) or one new token at a time; "
            "a forward that adds several tokens to a cache (chunked prefill) needs sdpa or flex_attention."
        )
    changes = (keys[:, 1:] != keys[:, :-1]).sum(-1)
    split = (changes > 2) | ((changes > 0) & keys[:, 0] & keys[:, -1])  # real tokens in two or more pieces
    if split.any():
        raise ValueError("flash-attention takes packed documents with padding at the ends of a row only (left or right).")
    positions = torch.arange(q_length, device=device)
    lo, _ = intervals(positions.view(1, -1, 1))
    starts = (lo[..., 0] == positions).expand(keys.shape[0], -1).clone()
    starts[:, 1:] |= keys[:, 1:] != keys[:, :-1]  # padding is a sequence of its own
    starts[:, 0] = True
    cu = torch.cat([starts.flatten().nonzero().view(-1), torch.tensor([starts.numel()], device=device)]).to(torch.int32)
    longest = int(cu.diff().max())
    return None, {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest, "is_causal": causal}


def unbounded_layers(strategy, num_layers: int) -> list[int]:
    return [idx for idx in range(num_layers) if strategy.for_layer(idx).cache_bounds() is None]


def bound_cache(body, cache: BoundedCache, padding: torch.Tensor, user_mask: bool) -> None:
    """At prefill, tells a BoundedCache which positions the strategy can still show a future query."""
    starts = torch.where(padding.any(-1), first_real_token(padding), NOT_STARTED)
    if cache.is_configured:
        cache.learn_starts(starts)  # a chunked prefill may reach a row's first real token only now
        return
    backend = body.config._attn_implementation
    strategy = body.mask_strategy
    bounds = None if user_mask else strategy.cache_bounds()
    if bounds is None or backend in FLASH_BACKENDS:
        why = (
            f"{backend} reads keys as one contiguous range" if bounds is not None
            else "a 4D attention_mask may show a query any earlier token" if user_mask
            else f"layers {unbounded_layers(strategy, len(body.layers))} use a strategy that lets a query see arbitrarily old tokens"
            if strategy.name == "layers"
            else f"the mask strategy {strategy.name!r} lets a query see arbitrarily old tokens"
        )
        raise ValueError(
            f"BoundedCache cannot be used here: {why}. Use it with a bounded strategy (sliding_window, "
            f"attention_sinks, chunked, or an 'and' composition with one) on eager, sdpa or flex_attention, "
            f"or use a DynamicCache."
        )
    first, last = bounds
    cache.set_bounds(first, last, starts=starts, num_layers=len(body.layers))
