"""Prefix-LM: bidirectional inside a per-sample prefix, causal after it (T5/UniLM-style, prompt-then-answer).

``prefix_lengths=[3]``:

    q\\kv 0 1 2 3 4
      0   ■ ■ ■ ⬚ ⬚
      1   ■ ■ ■ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ■ ■ ■ ■ ⬚
      4   ■ ■ ■ ■ ■

``prefix_lengths`` (batch,) counts real tokens: with left padding the prefix starts at the first real token.
Cache-consistent as long as the prefix lies inside the prompt, so generate() honours it.
"""

from __future__ import annotations

from ._checks import checking_values, per_sample_lengths
from ..strategy.registry import register_mask


def _prefix_end(prefix_lengths, padding_mask):
    """(batch,) absolute end of each sample's prefix, checked against the sample's real tokens."""
    lengths = per_sample_lengths("prefix_lm", "prefix_lengths", prefix_lengths)
    if padding_mask is None:
        return lengths
    lengths = lengths.to(padding_mask.device)
    if lengths.shape[0] != padding_mask.shape[0]:
        raise ValueError(
            f"prefix_lm: prefix_lengths must have shape (batch,) = ({padding_mask.shape[0]},), "
            f"got {tuple(lengths.shape)}."
        )
    real_tokens = padding_mask.sum(-1)
    if checking_values() and (lengths > real_tokens).any():
        raise ValueError(
            f"prefix_lm: prefix_lengths {lengths.tolist()} exceed the number of tokens in each sample "
            f"{real_tokens.tolist()}; a prefix must lie inside its sequence."
        )
    return padding_mask.int().argmax(-1) + lengths  # left padding shifts where each sample starts


def _intervals(prefix_lengths=None, padding_mask=None):
    import torch

    end = _prefix_end(prefix_lengths, padding_mask).view(-1, 1, 1)
    return lambda q: (q * 0, torch.where(q < end, end, q + 1))  # inside the prefix: all of it


@register_mask("prefix_lm", inputs=("prefix_lengths",), intervals=_intervals)
def prefix_lm(prefix_lengths=None, padding_mask: torch.Tensor | None = None):
    """Bidirectional within the first `prefix_lengths[b]` tokens of each sample, causal after them."""
    prefix_end = _prefix_end(prefix_lengths, padding_mask)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        end = prefix_end[batch_idx]
        return (kv_idx <= q_idx) | ((q_idx < end) & (kv_idx < end))

    return mask_mod
