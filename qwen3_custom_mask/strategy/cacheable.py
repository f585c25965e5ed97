"""Whether a strategy survives a KV cache, read off the strategy alone (torch, no transformers, no model): what
the CLI and the servers check before they load anything, and what continuous batching checks at start-up."""

from __future__ import annotations

import torch

from .lowering import dense_mask

# A prompt and its continuation for the start-up probe; positions past it are checked at every forward instead.
PROBE_PROMPT, PROBE_LENGTH = 48, 96


def _probe(groups, num_heads: int) -> tuple[bool, bool]:
    """(a cached token would see a later generated one, a prompt token sees a later prompt token)."""
    padding = torch.ones(1, PROBE_LENGTH, dtype=torch.bool)
    context = dict(padding_mask=padding, num_heads=num_heads, training=False, sequence_length=PROBE_LENGTH,
                   prefix_lengths=torch.tensor([PROBE_PROMPT]))  # prefix_lm's prefix: the prompt
    rows = torch.arange(PROBE_LENGTH).view(-1, 1)
    later = torch.arange(PROBE_LENGTH).view(1, -1) > rows
    generated = torch.arange(PROBE_LENGTH).view(1, -1) >= PROBE_PROMPT
    looks_ahead = whole_prompt = False
    for group, _ in groups:
        mask_mod = group.mask_mod(**context)  # each factory takes what it names (prefix_lengths: the prompt)
        seen = dense_mask(mask_mod, batch_size=1, num_heads=num_heads, q_offset=0, q_length=PROBE_LENGTH, kv_offset=0,
                          kv_length=PROBE_LENGTH, padding_mask=padding, device="cpu")
        looks_ahead |= bool((seen & later & generated).any())
        whole_prompt |= bool((seen & later & ~generated).any())
    return looks_ahead, whole_prompt


def _cannot_cache(strategy, groups, num_heads: int, continuous_batching: bool) -> str | None:
    """Why generation with a KV cache (paged or not) cannot serve ``strategy``, or None."""
    if not strategy.generates:
        return f"The mask strategy {strategy.name!r} describes one forward, not generation: it cannot be served."
    looks_ahead, whole_prompt = _probe(groups, num_heads)
    if looks_ahead:
        return (f"The mask strategy {strategy.name!r} lets a token see tokens generated after it, which a KV cache "
                f"filled earlier cannot honour. For embeddings, export it (qwen3-mask export) to an embedding runtime; "
                f"for generation, use model.generate(..., use_cache=False).")
    if whole_prompt and continuous_batching:
        return (f"The mask strategy {strategy.name!r} reads each prompt as a whole, but continuous batching splits "
                f"prompts across forwards and shares cache pages between prompts, which would change their keys and "
                f"values: use model.generate() (batched, with padding), or serve without --continuous-batching.")
    return None


def serving_refusal(strategy, num_layers: int, num_heads: int, continuous_batching: bool) -> str | None:
    """Why a server (which generates with a KV cache) cannot serve ``strategy`` (one line), or None; before any
    model is loaded (``qwen3-mask serve``)."""
    groups: dict = {}
    for idx in range(num_layers):
        groups.setdefault(strategy.for_layer(idx), []).append(idx)
    if all(group.flash_form() == {} for group in groups):
        return None
    return _cannot_cache(strategy, list(groups.items()), num_heads, continuous_batching)
