"""Speculative decoding with draft trees: verify a whole tree in one forward, keep the accepted path.

One round, batch 1, greedy acceptance::

    cache = DynamicCache()  # full layers (a config's sliding layers get their window through the mask)
    logits = model(prompt_ids, past_key_values=cache).logits[0, -1]     # predicts the next position
    result = verify_draft_tree(model, cache, logits, draft_tokens, parents)
    # result.tokens: accepted drafts + one bonus token = what greedy decoding would produce next
    # the cache now holds the prompt + the accepted drafts; next round: logits = result.next_logits and the
    # next tree's root (parent -1) should be result.tokens[-1], the bonus token, which is not cached yet.

Each draft token is verified as it would be decoded: a draft at depth d stands where its path would put it
(prefix + d - 1 in the sequence) and sees what the model's strategy lets that position see, among the cache
and its own ancestors (``tree AND strategy``; a per-layer strategy, per layer). So on a sliding-window, sinks,
chunked, prefix-LM or document model the accepted tokens are those greedy decoding of that model produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .compat import forward_cache_kwarg
from ..strategy.lowering import dense_mask
from .masking import lower_dense_masks, sliding_layer_overlay
from ..masks.tree import ancestor_matrix, parent_indices


@dataclass
class TreeVerification:
    tokens: torch.Tensor  # (k + 1,) the k accepted drafts and the bonus token
    accepted: list[int]  # indices of the accepted draft tokens, root to leaf
    next_logits: torch.Tensor  # (vocab,) logits after the last accepted token (they chose the bonus token)


def _extend(inputs: dict, length: int) -> dict:
    """Per-call inputs over ``length`` tokens: drafts continue the last document, like generated tokens."""
    inputs = {name: torch.as_tensor(value) for name, value in inputs.items()}
    ids = inputs.get("document_ids")
    if ids is not None:
        ids = ids.view(1, -1)
        inputs["document_ids"] = torch.cat([ids, ids[:, -1:].expand(1, length - ids.shape[1])], dim=1)
    return inputs


@torch.no_grad()
def verify_draft_tree(model, past_key_values: DynamicCache, last_logits: torch.Tensor, draft_tokens, draft_tree, **mask_inputs) -> TreeVerification:
    """Runs the draft tree through ``model`` in one forward and keeps the greedy-accepted path in the cache.

    past_key_values: a `DynamicCache` holding every accepted token so far (batch 1).
    last_logits: (vocab,) logits after the last cached token.
    draft_tokens: (T,) token ids; draft_tree: (T,) parent indices (-1 = child of the cache) or a (T, T)
        ancestor matrix, parents before children.
    mask_inputs: the strategy's per-call inputs for the cached tokens (e.g. ``prefix_lengths``, ``document_ids``).
    """
    if not isinstance(past_key_values, DynamicCache) or any(type(layer) is not DynamicLayer for layer in past_key_values.layers):
        raise TypeError(
            "verify_draft_tree needs a DynamicCache with full layers to rewind into: create it as DynamicCache() "
            "(without config=, which gives a config's sliding layers their own window-trimmed cache layers); the "
            "sliding layers' window is applied through the mask."
        )
    body = model.base_model
    strategy = body.mask_strategy
    if not strategy.generates:
        raise ValueError(f"verify_draft_tree verifies drafts under the model's own strategy; {strategy.name!r} does not decode.")
    device = model.device
    draft_tokens = torch.as_tensor(draft_tokens, device=device).view(-1)
    matrix = ancestor_matrix(draft_tree)
    if matrix.shape[0] != 1:
        raise ValueError("verify_draft_tree verifies one tree (batch 1); got a batch of trees.")
    matrix = matrix[0].to(device)
    size = draft_tokens.shape[0]
    if matrix.shape[-1] != size:
        raise ValueError(f"draft_tree describes {matrix.shape[-1]} tokens but draft_tokens has {size}.")
    prefix = past_key_values.get_seq_length()
    depth = matrix.sum(-1)
    # Where each draft would sit in the sequence, and the keys it may see there: the cache, then the drafts.
    virtual = prefix + depth - 1
    length = prefix + int(depth.max())
    keys = torch.cat([torch.arange(prefix, device=device), virtual])
    tree = torch.cat([torch.ones(size, prefix, dtype=torch.bool, device=device), matrix], dim=1)
    padding = torch.ones(1, length, dtype=torch.bool, device=device)
    heads = model.config.num_attention_heads
    context = dict(_extend(mask_inputs, length), padding_mask=padding, num_heads=heads, sequence_length=length)
    positions = virtual.view(1, -1)
    if strategy.places_tokens:  # e.g. documents: positions restart per document
        positions = strategy.position_ids(**context)[:, virtual]

    def tree_mask(group_strategy, layer_type: str) -> torch.Tensor:
        visible = dense_mask(
            group_strategy.mask_mod(**context), batch_size=1, num_heads=heads, q_offset=0, q_length=size,
            kv_offset=0, kv_length=0, padding_mask=padding, device=device, kv_positions=keys, q_positions=virtual,
        )
        if layer_type == "sliding_attention":  # the config's window, from where each draft really stands
            within = sliding_layer_overlay(group_strategy.flash_form(), model.config.sliding_window)
            visible = visible & within(0, 0, virtual[:, None], keys[None, :])
        return visible & tree

    dense = {}
    for group_strategy, layers in body.mask_groups:
        by_type = {layer_type: tree_mask(group_strategy, layer_type) for layer_type in {model.config.layer_types[idx] for idx in layers}}
        dense.update({idx: by_type[model.config.layer_types[idx]] for idx in layers})
    attention_mask = lower_dense_masks(body, dense, past_key_values, model.dtype, device)
    cached = {forward_cache_kwarg(): past_key_values}  # `cache=` from transformers 5.24, `past_key_values=` before
    logits = model(draft_tokens[None], attention_mask=attention_mask, position_ids=positions, use_cache=True, **cached).logits[0]

    parents = parent_indices(matrix).tolist()
    accepted, node, current = [], -1, last_logits.view(-1)
    while True:
        want = int(current.argmax())
        child = next((i for i in range(size) if parents[i] == node and int(draft_tokens[i]) == want), None)
        if child is None:
            break
        accepted.append(child)
        node, current = child, logits[child]

    keep = torch.cat([torch.arange(prefix, device=device), prefix + torch.tensor(accepted, dtype=torch.long, device=device)])
    for layer in past_key_values.layers:
        layer.keys, layer.values = layer.keys.index_select(-2, keep), layer.values.index_select(-2, keep)
    bonus = current.argmax().view(1)
    tokens = torch.cat([draft_tokens[accepted], bonus])
    return TreeVerification(tokens=tokens, accepted=accepted, next_logits=current)
