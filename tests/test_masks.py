"""Mask semantics: each built-in's docstring drawing is the mask it builds, and the lowering keeps it."""

import importlib

import pytest
import torch

from qwen3_custom_mask import resolve_strategy
from qwen3_custom_mask.strategy.lowering import dense_mask, eager_float_mask, reads_head
from qwen3_custom_mask.strategy.reference import reference_mask

# strategy spec, per-call inputs, module whose docstring draws that exact 5x5 mask
DRAWN = [
    ("causal", {}, "causal"),
    ("bidirectional", {}, "bidirectional"),
    ({"name": "sliding_window", "window": 3}, {}, "sliding_window"),
    ("prefix_lm", {"prefix_lengths": torch.tensor([3])}, "prefix_lm"),
    ({"name": "attention_sinks", "sinks": 1, "window": 2}, {}, "attention_sinks"),
    ({"name": "chunked", "chunk_size": 2}, {}, "chunked"),
    ({"name": "dilated_sliding_window", "window": 4, "dilation": 2}, {}, "dilated_sliding_window"),
    ({"name": "global_tokens", "tokens": [0], "window": 2}, {}, "global_tokens"),
    ("document", {"document_ids": torch.tensor([[0, 0, 1, 1, 1]])}, "document"),
    ("tree", {"draft_tree": torch.tensor([-1, 0, -1, 2])}, "tree"),
]
ONES = torch.ones(1, 5, dtype=torch.bool)


def drawing(module_name):
    """The ■/⬚ matrix in a mask module's docstring, as a bool tensor."""
    doc = importlib.import_module(f"qwen3_custom_mask.masks.{module_name}").__doc__
    rows = [line.split()[1:] for line in doc.splitlines() if "■" in line or "⬚" in line]
    return torch.tensor([[cell == "■" for cell in row] for row in rows])


def build(mask_mod, batch=1, heads=1, q_offset=0, q_length=5, kv_offset=0, kv_length=5, padding=None):
    if padding is None:
        padding = torch.ones(batch, kv_offset + kv_length, dtype=torch.bool)
    return dense_mask(
        mask_mod,
        batch_size=batch,
        num_heads=heads,
        q_offset=q_offset,
        q_length=q_length,
        kv_offset=kv_offset,
        kv_length=kv_length,
        padding_mask=padding,
        device="cpu",
    )


@pytest.mark.parametrize("spec,inputs,module", DRAWN, ids=[m for _, _, m in DRAWN])
def test_docstring_drawing_is_the_mask(spec, inputs, module):
    mask_mod = resolve_strategy(spec).mask_mod(**inputs, padding_mask=ONES)
    expected = drawing(module)
    assert expected.shape == (5, 5)
    assert torch.equal(build(mask_mod)[0, 0], expected)
    assert torch.equal(reference_mask(mask_mod, 1, 1, 5)[0, 0], expected)


@pytest.mark.parametrize("spec,inputs,module", DRAWN, ids=[m for _, _, m in DRAWN])
def test_decode_rows_are_the_matching_rows_of_the_full_mask(spec, inputs, module):
    mask_mod = resolve_strategy(spec).mask_mod(**inputs, padding_mask=ONES)
    full = build(mask_mod)
    for row in range(5):
        assert torch.equal(build(mask_mod, q_offset=row, q_length=1), full[:, :, row : row + 1])


@pytest.mark.parametrize("spec,inputs,module", DRAWN, ids=[m for _, _, m in DRAWN])
def test_left_padding_shifts_the_mask_and_nothing_else(spec, inputs, module):
    """A row behind 2 pads gets the drawing shifted by 2: sinks, chunks, prefixes count from the first real token."""
    padding = torch.tensor([[False, False, True, True, True, True, True]])
    inputs = {k: torch.cat([v[:, :1], v[:, :1], v], 1) if k == "document_ids" else v for k, v in inputs.items()}
    mask_mod = resolve_strategy(spec).mask_mod(**inputs, padding_mask=padding)
    mask = build(mask_mod, q_length=7, kv_length=7, padding=padding)[0, 0]
    assert torch.equal(mask[2:, 2:], drawing(module))
    assert not mask[:, :2].any()  # padding is seen by nobody


def test_head_dependence_is_read_off_the_mask_mod():
    per_head = lambda b, h, q, kv: (kv <= q) & (q - kv < h + 1)  # noqa: E731  window = head + 1
    assert reads_head(per_head, 4, "cpu")
    assert not reads_head(lambda b, h, q, kv: kv <= q, 4, "cpu")
    mask = build(per_head, heads=4)
    assert mask.shape == (1, 4, 5, 5)
    assert torch.equal(mask, reference_mask(per_head, 1, 4, 5))


def test_eager_mask_uses_the_dtype_minimum():
    mask = build(lambda b, h, q, kv: kv <= q)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        additive = eager_float_mask(mask, dtype)
        assert additive.dtype == dtype
        assert torch.isfinite(additive).all()
        assert set(additive.unique().tolist()) == {0.0, torch.finfo(dtype).min}
