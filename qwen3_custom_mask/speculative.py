"""Speculative decoding with draft trees: verify a whole tree in one forward, keep the accepted path.

One round, batch 1, greedy acceptance::

    cache = DynamicCache(config=model.config)
    logits = model(prompt_ids, past_key_values=cache).logits[0, -1]     # predicts the next position
    result = verify_draft_tree(model, cache, logits, draft_tokens, parents)
    # result.tokens: accepted drafts + one bonus token = what greedy decoding would produce next
    # the cache now holds the prompt + the accepted drafts; next round: logits = result.next_logits and the
    # next tree's root (parent -1) should be result.tokens[-1], the bonus token, which is not cached yet.

The forward uses the ``tree`` mask (each draft token sees the cache and its ancestors) through a 4D mask, so
it works on every dense backend whatever the model's own strategy, with positions prefix + depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .masks.tree import ancestor_matrix, parent_indices


@dataclass
class TreeVerification:
    tokens: torch.Tensor  # (k + 1,) the k accepted drafts and the bonus token
    accepted: list[int]  # indices of the accepted draft tokens, root to leaf
    next_logits: torch.Tensor  # (vocab,) logits after the last accepted token (they chose the bonus token)


@torch.no_grad()
def verify_draft_tree(model, past_key_values: DynamicCache, last_logits: torch.Tensor, draft_tokens, draft_tree) -> TreeVerification:
    """Runs the draft tree through ``model`` in one forward and keeps the greedy-accepted path in the cache.

    past_key_values: a `DynamicCache` holding every accepted token so far (batch 1).
    last_logits: (vocab,) logits after the last cached token.
    draft_tokens: (T,) token ids; draft_tree: (T,) parent indices (-1 = child of the cache) or a (T, T)
        ancestor matrix, parents before children.
    """
    if not isinstance(past_key_values, DynamicCache) or any(type(layer) is not DynamicLayer for layer in past_key_values.layers):
        raise TypeError("verify_draft_tree needs a DynamicCache with full (non-sliding) layers to rewind into.")
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
    mask = torch.ones(1, 1, size, prefix + size, dtype=torch.bool, device=device)
    mask[0, 0, :, prefix:] = matrix
    positions = (prefix + matrix.sum(-1) - 1).view(1, -1)
    logits = model(
        draft_tokens[None], attention_mask=mask, position_ids=positions, past_key_values=past_key_values, use_cache=True
    ).logits[0]

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

