"""Attention sinks (StreamingLLM): the first ``sinks`` tokens stay visible, plus a causal sliding window.

``sinks=1, window=2``:

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ■ ⬚ ■ ■ ⬚
      4   ■ ⬚ ⬚ ■ ■

Sinks are the first real tokens of each row (left padding is skipped). A query never sees more than
``sinks + window`` keys, so generation can run with a `BoundedCache` whose size stays at that bound.
"""

from ._checks import at_batch, first_real_token, non_negative_int, positive_int
from ..registry import register_mask


@register_mask("attention_sinks", cache_bounds=lambda sinks, window: (sinks, window - 1))
def attention_sinks(sinks: int = 4, window: int = 4096, padding_mask=None):
    """StreamingLLM: the first `sinks` tokens plus the last `window` tokens (the query included), causal."""
    non_negative_int("attention_sinks", "sinks", sinks)
    positive_int("attention_sinks", "window", window)
    start = first_real_token(padding_mask)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        is_sink = kv_idx - at_batch(start, batch_idx) < sinks
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | is_sink)

    return mask_mod
