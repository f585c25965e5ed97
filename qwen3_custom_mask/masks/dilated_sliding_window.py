"""Dilated sliding window (the FlexAttention gallery's): keys at distance 0, d, 2d, ... up to ``window``.

``window=4, dilation=2`` (causal):

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ⬚ ■ ⬚ ⬚ ⬚
      2   ■ ⬚ ■ ⬚ ⬚
      3   ⬚ ■ ⬚ ■ ⬚
      4   ■ ⬚ ■ ⬚ ■

``causal=False`` gives the gallery's symmetric pattern (|q - kv| <= window), for encoder use.
"""

from ._checks import positive_int
from ..strategy.registry import register_mask


@register_mask("dilated_sliding_window")
def dilated_sliding_window(window: int = 4096, dilation: int = 2, causal: bool = True):
    """Keys at distances that are multiples of `dilation`, up to `window` away (causal by default)."""
    positive_int("dilated_sliding_window", "window", window)
    positive_int("dilated_sliding_window", "dilation", dilation)
    if not isinstance(causal, bool):
        raise ValueError(f"dilated_sliding_window: causal must be true or false, got {causal!r}.")

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        distance = (q_idx - kv_idx).abs()
        visible = (distance <= window) & (distance % dilation == 0)
        return visible & (kv_idx <= q_idx) if causal else visible

    return mask_mod
