"""Lowering: one mask_mod becomes the mask each attention backend wants.

All builders take the same window of absolute positions: queries ``q_offset .. q_offset + q_length - 1``
against keys ``kv_offset .. kv_offset + kv_length - 1`` (during cached decoding ``q_length`` is the number of
new tokens, so only the new rows are built), and a 2D ``padding_mask`` (batch, >= kv_offset + kv_length),
True for real tokens, that is ANDed on the key axis. A cache that keeps only some keys (`BoundedCache`)
passes ``kv_positions`` instead: the absolute position of each key, in cache order, (K,) or one row per sample
(B, K) with -1 for an empty slot.

| backend            | what it gets                                                     |
|--------------------|------------------------------------------------------------------|
| eager              | float (B, 1|H, Q, K) in the model dtype: 0 or ``finfo(dtype).min`` |
| sdpa               | bool (B, 1|H, Q, K), True = attend                               |
| flex_attention     | a ``BlockMask`` over (B, 1|H, Q, K), built once per forward       |
| flash_attention_*  | the 2D padding mask plus kwargs (``is_causal``, ``sliding_window``) |

The head axis is 1 unless the mask_mod reads ``head_idx``: the index grids broadcast, so a mask_mod that
ignores the head returns a tensor whose head axis is 1, and only per-head masks pay for H copies.
"""

from __future__ import annotations

import torch

from .registry import MaskMod

FLASH_BACKENDS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
DENSE_BACKENDS = ("eager", "sdpa")


def key_positions(kv_offset: int, kv_length: int, kv_positions: torch.Tensor | None, device) -> torch.Tensor:
    """(1 or B, K) absolute position of every key: ``kv_positions`` if given (one row for the batch, or one per
    sample; -1 marks an empty slot), else the contiguous window."""
    if kv_positions is not None:
        return kv_positions.to(device).view(-1 if kv_positions.dim() == 2 else 1, kv_positions.shape[-1])
    return torch.arange(kv_offset, kv_offset + kv_length, device=device)[None]


def key_is_real(padding_mask: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, K) whether each key is a real token: not padding, not an empty slot (-1)."""
    keys = keys.expand(padding_mask.shape[0], -1)
    return padding_mask.gather(1, keys.clamp(min=0)) & (keys >= 0)


def _grids(batch_size: int, num_heads: int, q_offset, q_length: int, device, keys: torch.Tensor, q_positions=None):
    """Index tensors shaped to broadcast to (B, H, Q, K); ``keys`` from `key_positions`."""
    b = torch.arange(batch_size, device=device).view(-1, 1, 1, 1)
    h = torch.arange(num_heads, device=device).view(1, -1, 1, 1)
    q = q_positions.to(device) if q_positions is not None else torch.arange(q_length, device=device) + q_offset
    return b, h, q.view(1, 1, -1, 1), keys.view(keys.shape[0], 1, 1, -1)


def reads_head(mask_mod: MaskMod, num_heads: int, device) -> bool:
    """Whether the mask depends on ``head_idx``, read off the broadcast shape of a 1x1 probe."""
    if num_heads == 1:
        return False
    out = mask_mod(*_grids(1, num_heads, 0, 1, device, torch.zeros(1, 1, dtype=torch.long, device=device)))
    return out.dim() == 4 and out.shape[1] > 1


def bool_mask(mask_mod: MaskMod, b, h, q, kv) -> torch.Tensor:
    """``mask_mod`` called on index tensors (any broadcastable shapes), checked to be a bool tensor."""
    mask = torch.as_tensor(mask_mod(b, h, q, kv), device=kv.device)
    if mask.dtype != torch.bool:
        raise TypeError(f"A mask_mod must return a bool tensor, got dtype {mask.dtype} from {mask_mod}.")
    return mask


def dense_mask(
    mask_mod: MaskMod,
    *,
    batch_size: int,
    num_heads: int,
    q_offset,
    q_length: int,
    kv_offset: int,
    kv_length: int,
    padding_mask: torch.Tensor,
    device,
    kv_positions: torch.Tensor | None = None,
    q_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool (B, 1|H, Q, K): ``mask_mod`` evaluated element by element through broadcasting, AND padding.

    Queries sit at ``q_offset ..`` (or at ``q_positions``, e.g. a draft tree's depths).
    """
    keys = key_positions(kv_offset, kv_length, kv_positions, device)
    grids = _grids(batch_size, num_heads, q_offset, q_length, device, keys, q_positions)
    q_length, kv_length = grids[2].shape[2], keys.shape[-1]
    mask = bool_mask(mask_mod, *grids)
    heads = num_heads if mask.dim() == 4 and mask.shape[1] > 1 else 1
    real = key_is_real(padding_mask, keys).view(batch_size, 1, 1, kv_length)
    return mask.expand(batch_size, heads, q_length, kv_length) & real


def eager_float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for eager attention: 0 where attended, ``finfo(dtype).min`` elsewhere.

    The dtype's minimum rather than -inf keeps a fully masked row finite (softmax of equal values), never NaN.
    """
    return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)


BLOCK = 128  # flex_attention's default block size, for queries and keys


def blocks_from_intervals(intervals, *, q, keys_real, kv_offset: int, kv_length: int):
    """(partial, full) int8 (B, 1, Q blocks, KV blocks) read off the key intervals of every query row.

    A block is full when every row of its query block sees all of its keys (each inside one interval, all real),
    empty when no row sees any of them, partial otherwise: the same classification create_block_mask makes
    from the whole (Q, K) grid, for O(Q x K / 128 x intervals) work instead of O(Q x K) mask_mod calls. Where
    a row's keys are covered only by several intervals together, the block counts as partial (still exact,
    the kernel then applies the mask_mod).
    """
    lo, hi = intervals(q.view(1, -1, 1))
    batch = max(lo.shape[0], hi.shape[0], keys_real.shape[0])
    lo, hi = torch.broadcast_tensors(lo, hi)
    kv_blocks = -(-kv_length // BLOCK)
    k0 = kv_offset + torch.arange(kv_blocks, device=q.device) * BLOCK  # (KB,)
    k1 = torch.clamp(k0 + BLOCK, max=kv_offset + kv_length)
    lo, hi = lo.unsqueeze(-2), hi.unsqueeze(-2)  # (B, Q, 1, n)
    covers = ((lo <= k0[:, None]) & (hi >= (k0 + BLOCK)[:, None])).any(-1)  # (B, Q, KB); a short last block is never full
    touches = ((lo < k1[:, None]) & (hi > k0[:, None])).any(-1)
    # Whole query blocks: rows past the end neither see nor block anything, except that a short block is never full.
    rows = q.shape[0]
    pad = -rows % BLOCK
    covers = torch.nn.functional.pad(covers, (0, 0, 0, pad), value=False).view(covers.shape[0], -1, BLOCK, kv_blocks).all(2)
    touches = torch.nn.functional.pad(touches, (0, 0, 0, pad), value=False).view(touches.shape[0], -1, BLOCK, kv_blocks).any(2)
    real = torch.nn.functional.pad(keys_real, (0, kv_blocks * BLOCK - keys_real.shape[-1]), value=False).view(keys_real.shape[0], kv_blocks, BLOCK)
    full = covers & real.all(-1)[:, None] & (k1 - k0 == BLOCK)
    partial = touches & real.any(-1)[:, None] & ~full
    return partial.expand(batch, -1, -1)[:, None].to(torch.int8), full.expand(batch, -1, -1)[:, None].to(torch.int8)


def block_mask(
    mask_mod: MaskMod,
    *,
    batch_size: int,
    num_heads: int,
    q_offset: int,
    q_length: int,
    kv_offset: int,
    kv_length: int,
    padding_mask: torch.Tensor,
    device,
    kv_positions: torch.Tensor | None = None,
    intervals=None,
):
    """A flex_attention ``BlockMask``; blocks with no visible key are skipped by the kernel.

    With the strategy's ``intervals`` (built-in masks with known structure) the block indices come from
    `blocks_from_intervals`; otherwise create_block_mask evaluates the mask_mod over the (Q, K) grid.
    """
    from torch.nn.attention.flex_attention import _create_sparse_block_from_block_mask, create_block_mask

    # Offsets travel as tensors, not Python ints: a compiled flex_attention guards on the value of every int it
    # sees, so int offsets would recompile at every decode step.
    q_base = torch.as_tensor(q_offset, device=device)
    keys = key_positions(kv_offset, kv_length, kv_positions, device).expand(batch_size, -1)
    kv_length = keys.shape[-1]
    real = key_is_real(padding_mask, keys)  # (B, K): same shape at every step of a bounded cache

    def shifted(b, h, q_idx, kv_idx):
        # BlockMask indices start at 0; ours are absolute positions.
        return mask_mod(b, h, q_idx + q_base, keys[b, kv_idx]) & real[b, kv_idx]

    heads = num_heads if reads_head(mask_mod, num_heads, device) else None
    if intervals is not None and kv_positions is None and heads is None:
        q = torch.arange(q_length, device=device) + q_base
        blocks = blocks_from_intervals(intervals, q=q, keys_real=real, kv_offset=kv_offset, kv_length=kv_length)
        return _create_sparse_block_from_block_mask(blocks, shifted, (q_length, kv_length), BLOCK, BLOCK)
    return create_block_mask(
        shifted,
        B=batch_size,
        H=heads,
        Q_LEN=q_length,
        KV_LEN=kv_length,
        device=device,
        # Compiling the builder avoids materialising (B, H, Q, K) on GPU; on CPU it would only add compile time.
        _compile=torch.device(device).type == "cuda",
    )


def lower(backend: str, mask_mod: MaskMod, *, dtype: torch.dtype, intervals=None, **window) -> torch.Tensor:
    """The mask for ``backend`` (see the table above); ``window`` holds the sizes, padding and device;
    ``intervals`` the strategy's structure, when it has one (flex_attention's block indices)."""
    if backend == "flex_attention":
        return block_mask(mask_mod, intervals=intervals, **window)
    if backend not in DENSE_BACKENDS:
        raise ValueError(
            f"qwen3_custom_mask cannot lower a custom mask to attn_implementation={backend!r}; "
            f"supported: eager, sdpa, flex_attention, and {', '.join(FLASH_BACKENDS)} for the masks flash can express."
        )
    mask = dense_mask(mask_mod, **window)
    return eager_float_mask(mask, dtype) if backend == "eager" else mask
