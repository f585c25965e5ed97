"""Continuous batching: the strategy in the engine's packed layout (generate_batch, init_continuous_batching,
``transformers serve --continuous-batching``).

The engine (transformers' ``generation/continuous_batching``) runs many requests in one forward: the queries of
every request in one row, each request's keys read from its cache pages and concatenated in the same order.
It hands the body its own causal/sliding masks over that layout. For any other strategy the body rebuilds them
here, once per forward and layer type, through the same lowering as every other path (`dense_mask`, then the
additive form the engine uses)::

    queries   | r0: p0 p1 p2 | r1: p7 |          keys | r0: 0 1 2 | r1: 0 .. 7 |
    mask[t, k] = request(t) == request(k)  and  mask_mod(request, head, position(t), position(k))

A request's queries sit at their absolute positions (``position_ids``); its keys are the last ``seqlen_k``
positions before its last query (``cu_seq_lens_k``: all of them on full-attention layers, the window on the
config's sliding layers). Per-request inputs come from the request itself: ``document`` sees the prompt as one
document.

`refusal` decides at manager start which strategies the engine can serve, and refuses the others in one line,
never serving them with another mask: a strategy under which a cached token would see a later one
(bidirectional), and one under which a prompt token sees later prompt tokens (prefix_lm) unless the manager
schedules whole prompts and shares no pages (scheduling.py, which init_continuous_batching sets up for them).
"""

from __future__ import annotations

import torch

from .compat import paged_layout_known
from ..strategy.lowering import FLASH_BACKENDS, dense_mask, eager_float_mask
from .masking import LayerMasks, sliding_layer_overlay
from ..strategy.cacheable import _cannot_cache, _probe, serving_refusal  # noqa: F401  (serving_refusal: 0.1.0's paged.py held it)

def refusal(body) -> str | None:
    """Why continuous batching cannot serve this body's strategy (one line), or None."""
    strategy, backend = body.mask_strategy, body.config._attn_implementation
    if not paged_layout_known() and body.has_sliding_layers:
        # An older engine on a config with sliding layers gave the plugin other tokens than stock after other
        # tests had run (order-dependent, not understood): refused rather than trusted.
        return ("This transformers' continuous-batching engine is not proven right for a config with sliding layers "
                "under the plugin: upgrade transformers, or use model.generate().")
    if body.mask_strategy_is_causal:
        return None
    if not paged_layout_known():
        return (f"This transformers' continuous-batching engine predates the packed layout the plugin builds masks for: "
                f"it serves the 'causal' strategy only. Upgrade transformers, or use model.generate() for {strategy.name!r}.")
    if backend in FLASH_BACKENDS or backend == "flex_attention":
        return (f"Continuous batching with {backend} serves the 'causal' strategy only (the engine gives it no mask); "
                f"load the model with attn_implementation='sdpa' or 'eager' to serve {strategy.name!r}.")
    # Whole-prompt strategies are served where init_continuous_batching set up whole-prompt scheduling (scheduling.py).
    return _cannot_cache(strategy, body.mask_groups, body.config.num_attention_heads,
                         continuous_batching=not getattr(body, "whole_prompt_engine", False))


def reads_whole_prompts(body) -> bool:
    """Whether the strategy lets a prompt token see later prompt tokens, and no token a later generated one."""
    if body.mask_strategy_is_causal or not paged_layout_known():
        return False
    looks_ahead, whole_prompt = _probe(body.mask_groups, body.config.num_attention_heads)
    return whole_prompt and not looks_ahead


def refuse_cached_look_back(body, mask_mods: list, past: list[int], ends: list[int], device) -> None:
    """Raises if a token some request already cached would see a key this forward adds: the start-up probe reads a
    bounded prefix, a strategy may look ahead only further on (a global token at position 500). Linear in the
    cached tokens per request, like generate()'s own check. ``mask_mods``: one per layer group, as the forward built
    them."""
    heads = body.config.num_attention_heads
    for mask_mod in mask_mods:
        for r, (cached, end) in enumerate(zip(past, ends)):
            if cached == 0:
                continue
            seen = dense_mask(lambda b, h, q, kv, r=r: mask_mod(b + r, h, q, kv), batch_size=1, num_heads=heads, q_offset=0,
                              q_length=cached, kv_offset=0, kv_length=0, device=device,
                              padding_mask=torch.ones(1, end, dtype=torch.bool, device=device),
                              kv_positions=torch.arange(cached, end, device=device)[None])
            if bool(seen.any()):
                row = int(seen.any(-1).any(1).nonzero()[0, -1])
                raise ValueError(
                    f"The mask strategy {body.mask_strategy.name!r} lets a token see tokens generated after it (cached "
                    f"position {row} sees position {cached} or later), which a KV cache filled earlier cannot honour: use "
                    f"model.generate(..., use_cache=False) for it."
                )


def paged_masks(body, engine_masks, position_ids: torch.Tensor, kwargs: dict) -> dict:
    """``{layer_type: LayerMasks}`` for one engine forward, in the engine's layout and additive dtype."""
    config = body.config
    layer_types = list(dict.fromkeys(config.layer_types))
    if not isinstance(engine_masks, dict):  # one layer type: the engine hands a single tensor
        engine_masks = {layer_types[0]: engine_masks}
    cu_k = kwargs["cu_seq_lens_k"]
    if not isinstance(cu_k, dict):
        cu_k = {layer_types[0]: cu_k}
    cu_q = kwargs["cu_seq_lens_q"].long()
    device = position_ids.device
    positions = position_ids.view(-1).long()
    q_lengths = cu_q.diff()
    requests = int((q_lengths > 0).sum())  # padding sequences (static shapes) come last, with no tokens
    q_lengths, starts = q_lengths[:requests], cu_q[:requests]
    ends = positions[starts + q_lengths - 1] + 1
    # prefix_lm (inside a composition that never looks ahead, else refused): the prompt read in this forward
    prefix = torch.where(positions[starts] == 0, q_lengths, torch.zeros_like(q_lengths))
    context = dict(padding_mask=torch.ones(requests, int(ends.max()) if requests else 1, dtype=torch.bool, device=device),
                   num_heads=config.num_attention_heads, training=False, prefix_lengths=prefix)
    q_first = cu_q[:requests].tolist()
    q_lens = q_lengths.tolist()
    mask_mods = [group.mask_mod(**context) for group, _ in body.mask_groups]  # once per forward, every layer type
    refuse_cached_look_back(body, mask_mods, positions[starts].tolist(), ends.tolist(), device)
    masks = LayerMasks()
    for layer_type in layer_types:
        template = engine_masks[layer_type]
        kv_length = template.shape[-1]
        k_lengths = cu_k[layer_type].long().diff()[:requests]
        k_first = torch.cat([k_lengths.new_zeros(1), k_lengths.cumsum(0)]).tolist()
        k_starts = (ends - k_lengths).tolist()  # each request's first key position on this layer type
        for (group, layers), mask_mod in zip(body.mask_groups, mask_mods):
            typed = [idx for idx in layers if config.layer_types[idx] == layer_type]
            if not typed:
                continue
            overlay = sliding_layer_overlay(group.flash_form(), config.sliding_window) if layer_type == "sliding_attention" else None
            # Block-diagonal, as the engine builds its own: each request's queries against its own keys only.
            dense = torch.zeros(1, 1, positions.numel(), kv_length, dtype=torch.bool, device=device)
            for r in range(requests):
                rows, cols = slice(q_first[r], q_first[r] + q_lens[r]), slice(k_first[r], k_first[r + 1])
                keys = torch.arange(k_starts[r], k_starts[r] + cols.stop - cols.start, device=device)[None]

                def one(b, h, q, kv, r=r, mask_mod=mask_mod, overlay=overlay):
                    seen = mask_mod(b + r, h, q, kv)  # the request's own row of the per-request inputs
                    return seen & overlay(b, h, q, kv) if overlay is not None else seen

                block = dense_mask(one, batch_size=1, num_heads=config.num_attention_heads, q_offset=0, q_length=q_lens[r],
                                   kv_offset=0, kv_length=0, padding_mask=torch.ones(1, k_starts[r] + keys.shape[1], dtype=torch.bool, device=device),
                                   device=device, kv_positions=keys, q_positions=positions[rows])
                if block.shape[1] > dense.shape[1]:  # a per-head mask
                    dense = dense.expand(-1, block.shape[1], -1, -1).clone()
                dense[:, :, rows, cols] = block
            lowered = eager_float_mask(dense, template.dtype)  # the engine's additive form (finfo.min: no NaN rows)
            for idx in typed:
                masks[idx] = (lowered, {})
    return {layer_type: masks for layer_type in layer_types}
