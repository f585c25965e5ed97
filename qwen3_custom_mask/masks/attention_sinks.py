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

from ._checks import at_batch, first_real_token, non_negative_int, positive_int, row_starts
from ..strategy.registry import register_mask


def _intervals(sinks=4, window=4096, padding_mask=None):
    import torch

    start = row_starts(padding_mask)

    def intervals(q):  # the sinks (up to the query), and the window
        sink_lo = q * 0 + start
        sink_hi = torch.minimum(sink_lo + sinks, q + 1)
        lo = torch.cat(torch.broadcast_tensors(sink_lo, q - window + 1), -1)
        hi = torch.cat(torch.broadcast_tensors(sink_hi, q + 1), -1)
        return lo, hi

    return intervals


@register_mask("attention_sinks", cache_bounds=lambda sinks, window: (sinks, window - 1), intervals=_intervals)
def attention_sinks(sinks: int = 4, window: int = 4096, padding_mask=None):
    """StreamingLLM: the first `sinks` tokens plus the last `window` tokens (the query included), causal."""
    non_negative_int("attention_sinks", "sinks", sinks)
    positive_int("attention_sinks", "window", window)
    start = first_real_token(padding_mask)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        is_sink = kv_idx - at_batch(start, batch_idx) < sinks
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | is_sink)

    return mask_mod
