"""Sliding window: causal, but a token sees only itself and the ``window - 1`` tokens before it.

``window=3``:

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ⬚ ■ ■ ■ ⬚
      4   ⬚ ⬚ ■ ■ ■

Same convention as Mistral / ``Qwen3Config.sliding_window`` and flash-attention's ``window_size=(w-1, 0)``.
A list gives one window per attention head (``window=[64, 64, 4096, 4096, ...]``, as many as the model has
heads): the mask_mod then reads ``head_idx`` and every backend gets a per-head mask (flash cannot).
A query sees at most ``window`` keys, so generation can run with a `BoundedCache`.
"""

from __future__ import annotations

from ._checks import positive_int
from ..strategy.registry import register_mask


def _flash(window):
    return {"sliding_window": window} if isinstance(window, int) else None


def _bounds(window):
    return (0, (window if isinstance(window, int) else max(window)) - 1)


def _intervals(window=4096, num_heads=None, padding_mask=None):
    if not isinstance(window, int):
        return None  # one window per head: the generic path
    return lambda q: (q - window + 1, q + 1)


@register_mask("sliding_window", flash=_flash, cache_bounds=_bounds, intervals=_intervals)
def sliding_window(window: int | list = 4096, num_heads: int | None = None, padding_mask=None):
    """Causal attention limited to the last `window` tokens (the query included); a list sets one per head."""
    import torch
    if isinstance(window, (list, tuple)):
        windows = [positive_int("sliding_window", "window[i]", w) for w in window]
        if num_heads is not None and len(windows) != num_heads:
            raise ValueError(
                f"sliding_window: a per-head window list needs one entry per attention head ({num_heads}), "
                f"got {len(windows)}."
            )
        per_head = torch.tensor(windows, device=padding_mask.device if padding_mask is not None else None)

        def per_head_mask(batch_idx, head_idx, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < per_head[head_idx])

        return per_head_mask
    positive_int("sliding_window", "window", window)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return mask_mod
