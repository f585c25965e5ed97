"""User masks: a (B, 1|H, Q, K) tensor passed as ``attention_mask`` turned into a mask_mod.

Row ``r`` of the tensor is the query at absolute position ``row_offset + r``; column ``c`` is key ``c``.
Outside the tensor (tokens that generate() adds after the prompt) the mask is causal, so each generated
token sees every earlier non-padding token and itself:

    prompt rows: the user's ■/⬚      generated rows: causal
      0   ■ ⬚ ■ ⬚ | ⬚ ⬚
      1   ⬚ ■ ⬚ ■ | ⬚ ⬚
      2   ■ ⬚ ■ ⬚ | ⬚ ⬚
      3   ⬚ ■ ⬚ ■ | ⬚ ⬚
          --------+----
      4   ■ ■ ■ ■ | ■ ⬚
      5   ■ ■ ■ ■ | ■ ■
"""

import torch


def check_user_mask(mask: torch.Tensor, *, batch_size: int, num_heads: int, q_length: int, kv_lengths) -> None:
    """Raises a ValueError/TypeError that states the expected shape and dtype.

    kv_lengths: the key widths accepted (past + new tokens; a static cache's full length).
    """
    widths = sorted({int(k) for k in (kv_lengths if isinstance(kv_lengths, (tuple, list)) else (kv_lengths,))})
    keys = " or ".join(str(w) for w in widths)
    expected = f"(batch, 1 or heads, queries, keys) = ({batch_size}, 1 or {num_heads}, {q_length}, {keys})"
    if mask.dtype.is_complex:
        raise TypeError(f"A 4D attention_mask is bool (True = attend), 0/1 integer, or additive float; got dtype {mask.dtype}.")
    if mask.dim() != 4 or mask.shape[0] != batch_size or mask.shape[1] not in (1, num_heads) or mask.shape[2] != q_length or mask.shape[3] not in widths:
        raise ValueError(f"4D attention_mask has shape {tuple(mask.shape)}; expected {expected}.")


def user_mask(mask: torch.Tensor, row_offset=0):
    """The mask_mod of a boolean (B, 1|H, Q, K) tensor (see the module docstring)."""
    rows, cols = mask.shape[-2:]
    per_head = mask.shape[1] > 1

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        r = q_idx - row_offset
        inside = (r >= 0) & (r < rows) & (kv_idx < cols)
        value = mask[batch_idx, head_idx if per_head else 0, r.clamp(0, rows - 1), kv_idx.clamp(0, cols - 1)]
        return torch.where(inside, value, kv_idx <= q_idx)

    return mask_mod
