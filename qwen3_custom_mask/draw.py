"""Pictures of masks: ASCII for the terminal, PNG for docs.

    >>> print(draw_ascii({"name": "sliding_window", "window": 3}, length=5))
    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ■ ■ ■ ⬚ ⬚
      3   ⬚ ■ ■ ■ ⬚
      4   ⬚ ⬚ ■ ■ ■

The matrix is the mask a full forward of ``length`` real tokens gets (batch row 0), built by the same
lowering the model uses; per-call inputs (``prefix_lengths``, ``document_ids``, ``draft_tree``) are passed
as keyword arguments.
"""

from __future__ import annotations

from typing import Any

import torch

from .lowering import dense_mask
from .strategy import Strategy, resolve_strategy

VISIBLE, HIDDEN = "■", "⬚"


def mask_matrix(spec: Any, length: int = 16, *, head: int = 0, layer: int = 0, num_heads: int | None = None, **inputs) -> torch.Tensor:
    """Bool (length, length) mask of ``spec`` for one sequence, True = attend."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}.")
    strategy: Strategy = resolve_strategy(spec).for_layer(layer)
    padding = torch.ones(1, length, dtype=torch.bool)
    heads = num_heads if num_heads is not None else head + 1
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    mask_mod = strategy.mask_mod(**tensors, padding_mask=padding, num_heads=num_heads)
    mask = dense_mask(
        mask_mod,
        batch_size=1,
        num_heads=heads,
        q_offset=0,
        q_length=length,
        kv_offset=0,
        kv_length=length,
        padding_mask=padding,
        device="cpu",
    )
    return mask[0, head if mask.shape[1] > 1 else 0]


def density(matrix: torch.Tensor) -> float:
    """Fraction of (query, key) pairs attended."""
    return matrix.float().mean().item()


def to_ascii(matrix: torch.Tensor) -> str:
    """The ■/⬚ grid used in the mask modules' docstrings (indices shown modulo 10 past 10 columns)."""
    length = matrix.shape[-1]
    header = "q\\kv " + " ".join(str(i % 10) for i in range(length))
    rows = [f"{q:>3}   " + " ".join(VISIBLE if v else HIDDEN for v in matrix[q].tolist()) for q in range(matrix.shape[0])]
    return "\n".join([header, *rows])


def draw_ascii(spec: Any, length: int = 16, **kwargs) -> str:
    return to_ascii(mask_matrix(spec, length, **kwargs))


def save_png(matrix: torch.Tensor, path, cell: int = 8) -> None:
    """Writes the mask as a PNG: dark cells attended, light cells masked, one ``cell``-pixel square per pair."""
    try:
        from PIL import Image
    except ImportError as err:  # optional dependency
        raise ImportError("PNG drawing needs Pillow: pip install 'qwen3-custom-mask[draw]' (or pip install pillow).") from err
    pixels = torch.where(matrix, 40, 235).to(torch.uint8)
    pixels = pixels.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    Image.fromarray(pixels.numpy()).save(path, format="PNG")


def draw_png(spec: Any, path, length: int = 64, cell: int = 8, **kwargs) -> torch.Tensor:
    """Draws ``spec`` to a PNG file and returns the matrix drawn."""
    matrix = mask_matrix(spec, length, **kwargs)
    save_png(matrix, path, cell=cell)
    return matrix
