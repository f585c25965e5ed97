"""Continuous batching: the strategy in the engine's packed layout (generate_batch, init_continuous_batching,
``transformers serve --continuous-batching``).

The engine (transformers' ``generation/continuous_batching``) runs many requests in one forward: the queries of
every request in one row, each request's keys read from its cache pages and concatenated in the same order.
It hands the body its own causal/sliding masks over that layout. For any other strategy the body rebuilds them
here, once per forward and layer type, as the additive masks the engine uses (0 or finfo.min on a request's own
keys, -inf on other requests': no NaN rows)::

    queries   | r0: p0 p1 p2 | r1: p7 |          keys | r0: 0 1 2 | r1: 0 .. 7 |
    mask[t, k] = request(t) == request(k)  and  mask_mod(request, head, position(t), position(k))

A request's queries sit at their absolute positions (``position_ids``); its keys are the last ``seqlen_k``
positions before its last query (``cu_seq_lens_k``: all of them on full-attention layers, the window on the
config's sliding layers). Per-request inputs come from the request itself: ``document`` sees the prompt as one
document. The mask_mod is called once for all requests, over a gathered grid (row t: query t against its own
request's keys, padded to the longest request), so the work is the requests' blocks, not all queries x all keys;
`test_paged_masks_equal_the_mask_mod_asked_element_by_element` checks it against one scalar call per element.

`refusal` decides at manager start which strategies the engine can serve, and refuses the others in one line,
never serving them with another mask: a strategy under which a cached token would see a later one
(bidirectional), and one under which a prompt token sees later prompt tokens (prefix_lm) unless the manager
schedules whole prompts and shares no pages (scheduling.py, which init_continuous_batching sets up for them).
"""

from __future__ import annotations

import torch

from .compat import paged_layout_known
from ..strategy.lowering import FLASH_BACKENDS, bool_mask
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


def _never_looks_ahead(group) -> bool:
    """Whether a layer group's strategy is causal by construction (a flash form: causal, a window, documents)."""
    form = group.flash_form()
    return form is not None and form.get("is_causal", True) is True


def refuse_cached_look_back(body, mask_mods: list, past: list[int], ends: list[int], device) -> None:
    """Raises if a token some request already cached would see a key this forward adds: the start-up probe reads a
    bounded prefix, a strategy may look ahead only further on (a global token at position 500). Linear in the
    cached tokens per request, like generate()'s own check, and one mask_mod call for all requests: every new key
    is a column, every cached position of its request a row. ``mask_mods``: one per layer group, as the forward
    built them; groups causal by construction are skipped."""
    checked = [(group, mask_mod) for (group, _), mask_mod in zip(body.mask_groups, mask_mods) if not _never_looks_ahead(group)]
    past_t, ends_t = torch.tensor(past, device=device), torch.tensor(ends, device=device)
    new = torch.where(past_t > 0, ends_t - past_t, torch.zeros_like(past_t))  # requests with nothing cached add none
    if not checked or int(new.sum()) == 0:
        return
    owner = torch.repeat_interleave(torch.arange(len(past), device=device), new)  # each new key's request
    first = torch.cumsum(new, 0) - new
    keys = past_t[owner] + torch.arange(owner.numel(), device=device) - first[owner]
    rows = torch.arange(int(past_t.max()), device=device).view(1, 1, -1, 1)
    cached = rows < past_t[owner].view(1, 1, 1, -1)
    heads = torch.arange(body.config.num_attention_heads, device=device).view(1, -1, 1, 1)
    for _, mask_mod in checked:
        seen = bool_mask(mask_mod, owner.view(1, 1, 1, -1), heads, rows, keys.view(1, 1, 1, -1)) & cached
        if bool(seen.any()):
            column = int(seen.any(2).any(1)[0].nonzero()[0])
            row = int(seen[0, :, :, column].any(0).nonzero()[-1])
            raise ValueError(
                f"The mask strategy {body.mask_strategy.name!r} lets a token see tokens generated after it (cached "
                f"position {row} sees position {int(keys[column])}), which a KV cache filled earlier cannot honour: "
                f"use model.generate(..., use_cache=False) for it."
            )


def paged_masks(body, engine_masks, position_ids: torch.Tensor, kwargs: dict) -> dict:
    """``{layer_type: LayerMasks}`` for one engine forward, in the engine's layout and additive dtype.

    One mask_mod call per layer group and type for all requests, over a gathered grid: row t holds query t's
    request's own keys (``kv`` varies per row), so the work is the sum of the requests' blocks, not the whole
    (queries x all keys) rectangle; the result is scattered into the engine's block-diagonal layout. A causal
    group reuses the engine's own mask (it is stock's, exactly).
    """
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
    mask_mods = [group.mask_mod(**context) for group, _ in body.mask_groups]  # once per forward, every layer type
    refuse_cached_look_back(body, mask_mods, positions[starts].tolist(), ends.tolist(), device)
    owner = torch.repeat_interleave(torch.arange(requests, device=device), q_lengths)  # each real query's request
    real = owner.numel()  # queries past it pad a static shape: fully masked rows (finfo.min, no NaN)
    b, q = owner.view(1, 1, -1, 1), positions[:real].view(1, 1, -1, 1)
    h = torch.arange(config.num_attention_heads, device=device).view(1, -1, 1, 1)
    masks = LayerMasks()
    for layer_type in layer_types:
        template = engine_masks[layer_type]
        kv_length = template.shape[-1]
        k_lengths = cu_k[layer_type].long().diff()[:requests]
        k_first = torch.cumsum(k_lengths, 0) - k_lengths  # each request's first column
        k_starts = ends - k_lengths  # each request's first key position on this layer type
        j = torch.arange(int(k_lengths.max()) if requests else 0, device=device).view(1, -1)
        in_request = (j < k_lengths[owner].view(-1, 1)).view(1, 1, real, -1)  # the row's own keys
        # Past a request's keys the slot is not attended; clamp its position so per-request inputs stay in range.
        kv = torch.minimum(k_starts[owner].view(-1, 1) + j, ends[owner].view(-1, 1) - 1).view(1, 1, real, -1)
        # Slots past a request's keys land (mod kv_length) in other requests' columns, which the row never sees.
        columns = ((k_first[owner].view(-1, 1) + j) % max(kv_length, 1)).view(1, 1, real, -1)
        blocked = torch.finfo(template.dtype).min
        for (group, layers), mask_mod in zip(body.mask_groups, mask_mods):
            typed = [idx for idx in layers if config.layer_types[idx] == layer_type]
            if not typed:
                continue
            if group.flash_form() == {}:  # plain causal: the engine's mask is stock's (its window on sliding layers)
                for idx in typed:
                    masks[idx] = (template, {})
                continue
            seen = bool_mask(mask_mod, b, h, q, kv) & in_request
            if layer_type == "sliding_attention":
                seen = seen & sliding_layer_overlay(group.flash_form(), config.sliding_window)(b, h, q, kv)
            heads = seen.shape[1]
            lowered = torch.empty((1, heads, positions.numel(), kv_length), dtype=template.dtype, device=device)
            # Other requests' keys: -inf, so that a row that sees none of its own keys (a mask_mod may allow that)
            # spreads over its own keys only, as generate() alone does, never over a batch-mate's. Every real row has
            # its own keys at finfo.min or 0 (finite: no NaN); padding rows are finfo.min throughout.
            lowered[:, :, :real].fill_(float("-inf"))
            lowered[:, :, real:].fill_(blocked)
            values = torch.where(seen, 0.0, torch.where(in_request, blocked, float("-inf"))).to(template.dtype)
            lowered[:, :, :real].scatter_(-1, columns.expand(1, heads, -1, -1), values.expand(1, heads, -1, -1))
            for idx in typed:
                masks[idx] = (lowered, {})
    return {layer_type: masks for layer_type in layer_types}
