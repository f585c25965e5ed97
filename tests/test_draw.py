"""Mask pictures: the ASCII drawing is the mask (same glyphs as the docstrings), the PNG has its pixels."""

import pytest
import torch
from PIL import Image

from qwen3_custom_mask.draw import density, draw_ascii, draw_png, mask_matrix

from test_masks import DRAWN, drawing


@pytest.mark.parametrize("spec,inputs,module", DRAWN, ids=[m for _, _, m in DRAWN])
def test_ascii_drawing_is_the_docstring_drawing(spec, inputs, module):
    art = draw_ascii(spec, 5, **inputs)
    parsed = torch.tensor([[c == "■" for c in line.split()[1:]] for line in art.splitlines()[1:]])
    assert torch.equal(parsed, drawing(module))


def test_png_pixels_follow_the_mask(tmp_path):
    path = tmp_path / "sinks.png"
    matrix = draw_png({"name": "attention_sinks", "sinks": 1, "window": 3}, path, length=12, cell=4)
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (48, 48)
    pixels = torch.tensor(list(image.getdata()), dtype=torch.int32).view(48, 48)
    dark = pixels[2::4, 2::4] < 128  # centre of every cell
    assert torch.equal(dark, matrix)
    assert matrix[11, 0] and not matrix[11, 1]  # the sink stays, the middle is gone


def test_per_head_and_per_layer_pictures():
    spec = {"name": "sliding_window", "window": [1, 4]}
    assert density(mask_matrix(spec, 6, head=0, num_heads=2)) == pytest.approx(6 / 36)
    assert mask_matrix(spec, 6, head=1, num_heads=2)[5, 2]
    layered = {"layers": {"0": "causal", "1": "bidirectional"}}
    assert not mask_matrix(layered, 4, layer=0)[0, 3]
    assert mask_matrix(layered, 4, layer=1).all()


def test_bad_length_is_named():
    with pytest.raises(ValueError, match="length must be a positive integer"):
        mask_matrix("causal", 0)
