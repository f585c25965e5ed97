"""Chunked attention (Llama 4's local layers): causal inside fixed chunks, nothing across them.

``chunk_size=2``:

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ⬚ ⬚ ■ ⬚ ⬚
      3   ⬚ ⬚ ■ ■ ⬚
      4   ⬚ ⬚ ⬚ ⬚ ■

Chunks are counted from each row's first real token, so left padding does not move the boundaries.
"""

from ._checks import at_batch, first_real_token, positive_int, row_starts
from ..strategy.registry import register_mask


def _intervals(chunk_size=8192, padding_mask=None):
    start = row_starts(padding_mask)
    return lambda q: (start + (q - start).div(chunk_size, rounding_mode="floor") * chunk_size, q + 1)


@register_mask("chunked", cache_bounds=lambda chunk_size: (0, chunk_size - 1), intervals=_intervals)
def chunked(chunk_size: int = 8192, padding_mask=None):
    """Causal attention within consecutive chunks of `chunk_size` tokens (Llama-4 style)."""
    positive_int("chunked", "chunk_size", chunk_size)
    start = first_real_token(padding_mask)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        offset = at_batch(start, batch_idx)
        same_chunk = (q_idx - offset) // chunk_size == (kv_idx - offset) // chunk_size
        return (kv_idx <= q_idx) & same_chunk

    return mask_mod
