"""Sliding window: causal, but a token sees only itself and the ``window - 1`` tokens before it.

``window=3``:

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ⬚ ■ ■ ■ ⬚
      4   ⬚ ⬚ ■ ■ ■

Same convention as Mistral / ``Qwen3Config.sliding_window`` and flash-attention's ``window_size=(w-1, 0)``.
"""

from ._checks import positive_int
from ..registry import register_mask


@register_mask("sliding_window", flash=lambda window: {"sliding_window": window})
def sliding_window(window: int = 4096):
    """Causal attention limited to the last `window` tokens (the query included)."""
    positive_int("sliding_window", "window", window)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return mask_mod
