"""Mask pictures: the ASCII drawing is the mask (same glyphs as the docstrings), the PNG has its pixels."""

import pytest
import torch
from PIL import Image

from qwen3_custom_mask.cli.draw import density, draw_ascii, draw_png, mask_matrix

from test_masks import DRAWN, drawing


@pytest.mark.parametrize("spec,inputs,module", DRAWN, ids=[m for _, _, m in DRAWN])
def test_ascii_drawing_is_the_docstring_drawing(spec, inputs, module):
    art = draw_ascii(spec, 5, **inputs)
    parsed = torch.tensor([[c == "■" for c in line.split()[1:]] for line in art.splitlines()[1:]])
    assert torch.equal(parsed, drawing(module))


def test_png_cells_follow_the_mask_with_a_title_and_labels(tmp_path):
    from qwen3_custom_mask.cli.draw import png_cell_box

    path = tmp_path / "sinks.png"
    spec = {"name": "attention_sinks", "sinks": 1, "window": 3}
    matrix = draw_png(spec, path, length=12, cell=24)
    image = Image.open(path)
    assert image.format == "PNG" and image.width >= 12 * 24 and image.height >= 12 * 24  # readable as it is
    pixels = torch.tensor(list(image.getdata()), dtype=torch.int32).view(image.height, image.width)
    title = '{"name": "attention_sinks", "sinks": 1, "window": 3}  (12 tokens)'
    for q in range(12):
        for k in range(12):
            x0, y0, x1, y1 = png_cell_box(matrix, q, k, 24, title)
            assert (pixels[(y0 + y1) // 2, (x0 + x1) // 2] < 128) == bool(matrix[q, k]), (q, k)
            assert pixels[y0, (x0 + x1) // 2] == 160  # the grid line
    x0, y0, _, _ = png_cell_box(matrix, 0, 0, 24, title)
    assert (pixels[:y0 - 2, :] < 128).any() and (pixels[y0:, : x0 - 2] < 128).any()  # title, key and query labels
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
