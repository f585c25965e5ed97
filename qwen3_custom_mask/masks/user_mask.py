"""User masks: a boolean (B, 1|H, Q, K) tensor passed as ``attention_mask`` turned into a mask_mod.

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


def check_user_mask(mask: torch.Tensor, *, batch_size: int, num_heads: int, q_length: int, kv_length: int) -> None:
    """Raises a ValueError/TypeError that states the expected shape and dtype."""
    expected = f"(batch, 1 or heads, queries, keys) = ({batch_size}, 1 or {num_heads}, {q_length}, {kv_length})"
    if mask.dtype != torch.bool:
        raise TypeError(
            f"A 4D attention_mask must be boolean (True = attend), got dtype {mask.dtype}. "
            f"Convert an additive float mask with `mask == 0`, a 0/1 mask with `mask.bool()`."
        )
    if mask.dim() != 4 or mask.shape[0] != batch_size or mask.shape[1] not in (1, num_heads) or tuple(
        mask.shape[2:]
    ) != (q_length, kv_length):
        raise ValueError(f"4D attention_mask has shape {tuple(mask.shape)}; expected {expected}.")


def user_mask(mask: torch.Tensor, row_offset: int = 0):
    """The mask_mod of a boolean (B, 1|H, Q, K) tensor (see the module docstring)."""
    rows, cols = mask.shape[-2:]
    per_head = mask.shape[1] > 1

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        r = q_idx - row_offset
        inside = (r >= 0) & (r < rows) & (kv_idx < cols)
        value = mask[batch_idx, head_idx if per_head else 0, r.clamp(0, rows - 1), kv_idx.clamp(0, cols - 1)]
        return torch.where(inside, value, kv_idx <= q_idx)

    return mask_mod
