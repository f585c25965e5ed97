"""Causal: each token sees itself and every earlier token. The default, and exactly the stock Qwen3 mask.

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ■ ■ ■ ■ ⬚
      4   ■ ■ ■ ■ ■
"""

from ..strategy.registry import register_mask


def _intervals():
    return lambda q: (q * 0, q + 1)


@register_mask("causal", flash=lambda: {}, intervals=_intervals)
def causal():
    """Each token attends to itself and all earlier tokens (stock Qwen3)."""
    from transformers.masking_utils import causal_mask_function

    return causal_mask_function
