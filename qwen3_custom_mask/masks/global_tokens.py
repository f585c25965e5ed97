"""Global tokens (Longformer): a local sliding window, plus chosen tokens that see and are seen by all.

``tokens=[0], window=2`` (causal):

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ■ ⬚ ■ ■ ⬚
      4   ■ ⬚ ⬚ ■ ■

``tokens`` are indices of real tokens (left padding is skipped), e.g. ``[0]`` for a CLS/BOS token. With
``causal=False`` the window is symmetric and global tokens also see later tokens (encoder use; a KV
cache cannot honour it, so generate() asks for use_cache=False).
"""

from __future__ import annotations

from ._checks import at_batch, first_real_token, non_negative_int, positive_int
from ..strategy.registry import register_mask


@register_mask("global_tokens")
def global_tokens(tokens: list = (0,), window: int = 512, causal: bool = True, padding_mask=None):
    """Longformer-style: local `window` attention plus `tokens` that attend and are attended globally."""
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
        raise ValueError(f"global_tokens: tokens must be a list of token indices, got {tokens!r}.")
    tokens = [non_negative_int("global_tokens", "tokens[i]", t) for t in tokens]
    positive_int("global_tokens", "window", window)
    if not isinstance(causal, bool):
        raise ValueError(f"global_tokens: causal must be true or false, got {causal!r}.")
    globals_ = sorted(set(tokens))
    start = first_real_token(padding_mask)

    def is_global(idx, batch_idx):
        # One comparison per global token, OR-ed: pointwise only (a reduction such as .any() inside a mask_mod is
        # what torch 2.11's inductor cannot lower for flex_attention).
        index = idx - at_batch(start, batch_idx)
        hit = index != index  # all False, of index's shape (pointwise, no new buffer)
        for token in globals_:
            hit = hit | (index == token)
        return hit

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        local = (q_idx - kv_idx).abs() < window
        visible = local | is_global(kv_idx, batch_idx) | is_global(q_idx, batch_idx)
        return visible & (kv_idx <= q_idx) if causal else visible

    return mask_mod
