"""Bidirectional: every token sees every other token (LLM2Vec-style encoders, embeddings).

    q\\kv 0 1 2 3 4
      0   ■ ■ ■ ■ ■
      1   ■ ■ ■ ■ ■
      2   ■ ■ ■ ■ ■
      3   ■ ■ ■ ■ ■
      4   ■ ■ ■ ■ ■

Earlier tokens see later ones, so a KV cache built at prefill cannot honour it: generate() refuses it
unless ``use_cache=False``.
"""

from ..strategy.registry import register_mask


EVERY_KEY = 2**62


def _intervals():
    return lambda q: (q * 0, q * 0 + EVERY_KEY)


@register_mask("bidirectional", flash=lambda: {"is_causal": False}, intervals=_intervals)
def bidirectional():
    """Every token attends to every non-padding token (encoder / embedding use)."""
    from transformers.masking_utils import bidirectional_mask_function

    return bidirectional_mask_function
