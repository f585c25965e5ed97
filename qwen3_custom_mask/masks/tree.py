"""Tree attention for speculative decoding: verify a whole draft tree in one forward.

The draft tokens are the last ``T`` tokens of the row; each sees every earlier (cached) token, itself and
its ancestors in the tree, never its siblings or cousins. ``draft_tree`` is either a parent index per
draft token (``-1``: child of the last accepted token; parents come before children), or a boolean
ancestor matrix (T, T) with ``[i, j]`` True when j is i or an ancestor of i. Batched trees add a leading
batch axis. Positions are prefix length + depth, so siblings share a position as they would in sequence.

One prefix token P, then ``draft_tree=[-1, 0, -1, 2]`` (two chains: 1→2 and 3→4):

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ■ ⬚ ⬚ ■ ⬚
      4   ■ ⬚ ⬚ ■ ■

See `qwen3_custom_mask.verify_draft_tree` (model/speculative.py) for the verification step with a KV cache.
"""

from __future__ import annotations

from ..strategy.registry import register_mask


def parent_indices(matrix: torch.Tensor) -> torch.Tensor:
    """Parents (..., T) read off an ancestor-or-self matrix (..., T, T): each token's nearest (latest) strict
    ancestor, or -1 for a child of the prefix."""
    import torch
    size = matrix.shape[-1]
    strict = matrix & ~torch.eye(size, dtype=torch.bool, device=matrix.device)
    index = torch.arange(size, device=matrix.device)
    return torch.where(strict.any(-1), (strict * (index + 1)).amax(-1) - 1, -1)


def ancestor_matrix(draft_tree) -> torch.Tensor:
    """(batch, T, T) bool ancestor-or-self matrix from parents or from a matrix, checked to be a tree."""
    import torch
    tree = torch.as_tensor(draft_tree)
    if tree.dtype == torch.bool:
        matrix = tree if tree.dim() == 3 else tree[None]
        if matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2]:
            raise ValueError(f"tree: an ancestor matrix must have shape (T, T) or (batch, T, T), got {tuple(tree.shape)}.")
        # Rebuild parents (the nearest ancestor) and check that they imply exactly this matrix.
        rebuilt = ancestor_matrix(parent_indices(matrix))
        if not torch.equal(rebuilt, matrix):
            raise ValueError(
                "tree: draft_tree is not a tree ancestor matrix: it needs True on the diagonal, ancestors before "
                "descendants (lower triangular), and each token's ancestors = its parent and the parent's ancestors."
            )
        return matrix
    if tree.dtype.is_floating_point:
        raise TypeError(f"tree: draft_tree holds parent indices (int) or an ancestor matrix (bool), got dtype {tree.dtype}.")
    parents = tree if tree.dim() == 2 else tree[None]
    if parents.dim() != 2 or parents.shape[-1] == 0:
        raise ValueError(f"tree: parent indices must have shape (T,) or (batch, T) with T >= 1, got {tuple(tree.shape)}.")
    size = parents.shape[-1]
    index = torch.arange(size, device=parents.device)
    if ((parents < -1) | (parents >= index)).any():
        raise ValueError(
            f"tree: draft_tree is not a tree: parent indices must be -1 (child of the prefix) or the index of an "
            f"earlier draft token, got {parents.tolist()}."
        )
    matrix = torch.eye(size, dtype=torch.bool, device=parents.device).expand(parents.shape[0], size, size).clone()
    for i in range(size):  # parents come first, so row p is complete when row i copies it
        p = parents[:, i]
        has = p >= 0
        if has.any():
            matrix[has, i] |= matrix[has, p[has]]
    return matrix


def tree_positions(draft_tree=None, padding_mask=None):
    """Prefix tokens at their usual positions; a draft token at (real prefix tokens) + depth."""
    matrix = ancestor_matrix(draft_tree).to(padding_mask.device)
    size = matrix.shape[-1]
    batch, total = padding_mask.shape
    positions = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)
    prefix = padding_mask[:, : total - size].sum(-1, keepdim=True)
    positions[:, total - size :] = prefix + matrix.sum(-1) - 1
    return positions


@register_mask("tree", inputs=("draft_tree",), positions=tree_positions, generates=False)
def tree(draft_tree=None, padding_mask=None):
    """Speculative-decoding tree: draft tokens see the prefix and their ancestors only."""
    import torch
    if draft_tree is None:
        raise ValueError(
            "The 'tree' strategy needs draft_tree: parent indices (T,) (-1 = child of the prefix) or an ancestor "
            "matrix (T, T), e.g. model(ids, draft_tree=torch.tensor([-1, 0, -1, 2]))."
        )
    matrix = ancestor_matrix(draft_tree)
    size = matrix.shape[-1]
    if padding_mask is not None:
        matrix = matrix.to(padding_mask.device)
        batch, total = padding_mask.shape
        if matrix.shape[0] not in (1, batch) or size > total:
            raise ValueError(
                f"tree: draft_tree describes {matrix.shape[0]} tree(s) of {size} tokens, but the batch has {batch} "
                f"row(s) of {total} tokens; the draft tokens are the last tokens of each row."
            )
        matrix = matrix.expand(batch, size, size)
    else:
        total = size
    start = total - size

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        in_tree = matrix[batch_idx, (q_idx - start).clamp(min=0), (kv_idx - start).clamp(min=0)]
        draft_row = torch.where(kv_idx < start, True, in_tree)
        return torch.where(q_idx >= start, draft_row, kv_idx <= q_idx)

    return mask_mod
