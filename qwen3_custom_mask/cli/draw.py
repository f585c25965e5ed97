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

from ..strategy.lowering import dense_mask
from ..strategy import Strategy, resolve_strategy

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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable default font
    except TypeError:
        return ImageFont.load_default()


def save_png(matrix: torch.Tensor, path, cell: int = 24, title: str | None = None) -> None:
    """Writes the mask as a readable PNG: one ``cell``-pixel square per (query, key) pair, dark = attend, with a
    grid, query indices down the left, key indices along the top (every one up to 32 tokens, then every 8th or
    16th) and ``title`` (e.g. the spec) above. Cell (q, k) spans ``png_cell_box(matrix, q, k, cell)``."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as err:  # optional dependency
        raise ImportError("PNG drawing needs Pillow: pip install 'qwen3-custom-mask[draw]' (or pip install pillow).") from err
    rows, cols = matrix.shape
    left, top = _margins(matrix, cell, title)
    font, small = _font(_title_size(cell)), _font(max(10, min(cell - 4, 14)))
    title_width = int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(title, font=font)) + 12 if title else 0
    image = Image.new("L", (max(left + cols * cell + 8, title_width), top + rows * cell + 8), 255)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((6, 6), title, fill=0, font=font)
    draw.text((left, top - 2 * small.size - 8), "key", fill=90, font=small)
    draw.text((4, top - small.size - 4), "query", fill=90, font=small)
    step = _label_step(max(rows, cols))
    for q in range(rows):
        for k in range(cols):
            x0, y0, x1, y1 = png_cell_box(matrix, q, k, cell, title)
            draw.rectangle((x0, y0, x1, y1), fill=40 if matrix[q, k] else 235, outline=160 if cell >= 6 else None)
    for i in range(0, max(rows, cols), step):
        if i < cols:
            draw.text((left + i * cell + 2, top - small.size - 4), str(i), fill=0, font=small)
        if i < rows:
            draw.text((left - 8 - draw.textlength(str(i), font=small), top + i * cell + (cell - small.size) // 2), str(i), fill=0, font=small)
    image.save(path, format="PNG")


def _label_step(length: int) -> int:
    return 1 if length <= 32 else 8 if length <= 128 else 16 * ((length + 255) // 256)


def _title_size(cell: int) -> int:
    return max(16, cell * 3 // 4)  # readable where a page shows the picture smaller than its pixels


def _margins(matrix: torch.Tensor, cell: int, title: str | None) -> tuple[int, int]:
    small = max(10, min(cell - 4, 14))
    left = 16 + max(len("query") * small * 3 // 5, len(str(matrix.shape[0] - 1)) * small)
    top = (_title_size(cell) + 12 if title else 6) + 2 * small + 12
    return left, top


def png_cell_box(matrix: torch.Tensor, q: int, k: int, cell: int = 24, title: str | None = None) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of cell (query q, key k) in the PNG that `save_png` writes."""
    left, top = _margins(matrix, cell, title)
    return left + k * cell, top + q * cell, left + (k + 1) * cell - 1, top + (q + 1) * cell - 1


def draw_png(spec: Any, path, length: int = 16, cell: int = 24, **kwargs) -> torch.Tensor:
    """Draws ``spec`` to a PNG file (its JSON spec as the title) and returns the matrix drawn."""
    import json

    matrix = mask_matrix(spec, length, **kwargs)
    save_png(matrix, path, cell=cell, title=f"{json.dumps(resolve_strategy(spec).to_dict())}  ({length} tokens)")
    return matrix
