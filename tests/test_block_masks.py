"""flex_attention block indices built from the strategies' structure, checked against create_block_mask."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask
from transformers import StaticCache

from qwen3_custom_mask import resolve_strategy
from qwen3_custom_mask.strategy.lowering import BLOCK, block_mask

STRUCTURED = [
    ("causal", {}),
    ({"name": "sliding_window", "window": 200}, {}),
    ({"name": "chunked", "chunk_size": 300}, {}),
    ({"name": "attention_sinks", "sinks": 4, "window": 256}, {}),
    ("prefix_lm", {"prefix_lengths": torch.tensor([333, 90])}),
    ("document", {"document_ids": torch.arange(700).div(130, rounding_mode="floor").expand(2, -1)}),
    ({"name": "document", "causal": False}, {"document_ids": torch.arange(700).div(250, rounding_mode="floor").expand(2, -1)}),
    ({"and": ["document", {"name": "sliding_window", "window": 150}]}, {"document_ids": torch.arange(700).div(300, rounding_mode="floor").expand(2, -1)}),
    ({"or": [{"name": "sliding_window", "window": 64}, {"name": "chunked", "chunk_size": 256}]}, {}),
    ("bidirectional", {}),
]


def dense_blocks(bm):
    """(partial, full) as bool (B, H, QB, KB) from a BlockMask's indices."""
    def dense(num, indices):
        out = torch.zeros(*indices.shape, dtype=torch.bool)
        rank = torch.arange(indices.shape[-1])
        out.scatter_(-1, indices.long(), rank < num.unsqueeze(-1))
        return out

    return dense(bm.kv_num_blocks, bm.kv_indices), dense(bm.full_kv_num_blocks, bm.full_kv_indices)


@pytest.mark.parametrize("pads", [(0, 0), (0, 37)], ids=["no-padding", "left-padding"])
@pytest.mark.parametrize("q_offset,q_length", [(0, 700), (699, 1), (300, 400)], ids=["prefill", "decode-step", "chunk"])
@pytest.mark.parametrize("spec,inputs", STRUCTURED, ids=lambda v: str(v)[:40] if not isinstance(v, dict) or "name" in v or not v else None)
def test_blocks_from_structure_equal_the_grid_evaluation(monkeypatch, spec, inputs, q_offset, q_length, pads):
    strategy = resolve_strategy(spec)
    padding = torch.ones(2, 700, dtype=torch.bool)
    for row, pad in enumerate(pads):
        padding[row, :pad] = False
    context = dict(inputs, padding_mask=padding, num_heads=4)
    mask_mod = strategy.mask_mod(**context)
    intervals = strategy.key_intervals(**context)
    assert intervals is not None  # every built-in here has a structure
    window = dict(batch_size=2, num_heads=4, q_offset=q_offset, q_length=q_length, kv_offset=0, kv_length=700,
                  padding_mask=padding, device="cpu")
    expected = block_mask(mask_mod, **window)  # create_block_mask over the whole grid
    calls = []
    monkeypatch.setattr("torch.nn.attention.flex_attention.create_block_mask",
                        lambda *a, **k: calls.append(1) or create_block_mask(*a, **k))
    ours = block_mask(mask_mod, intervals=intervals, **window)
    assert not calls  # no grid evaluation
    (partial, full), (want_partial, want_full) = dense_blocks(ours), dense_blocks(expected)
    # Full blocks skip the mask_mod: ours must be truly full; any block with a visible pair must be listed.
    assert not (full & ~want_full).any()
    assert ((partial | full) >= (want_partial | want_full)).all()
    if not isinstance(spec, dict) or "or" not in spec and spec.get("name") != "attention_sinks":
        # One interval per row: the classification is the grid's, block for block.
        assert torch.equal(full, want_full) and torch.equal(partial | full, want_partial | want_full)
    q = torch.randn(2, 4, q_length, 16)
    k, v = torch.randn(2, 4, 700, 16), torch.randn(2, 4, 700, 16)
    from torch.nn.attention.flex_attention import flex_attention

    torch.testing.assert_close(flex_attention(q, k, v, block_mask=ours), flex_attention(q, k, v, block_mask=expected), atol=1e-5, rtol=1e-5)


def test_user_masks_and_per_head_windows_keep_the_grid_path():
    assert resolve_strategy({"name": "sliding_window", "window": [1, 2, 3, 4]}).key_intervals() is None
    assert resolve_strategy({"not": "causal"}).key_intervals() is None
    assert resolve_strategy({"name": "global_tokens", "tokens": [0]}).key_intervals() is None
    interleaved = torch.tensor([[0, 0, 1, 1, 0, 0]])  # document 0 in two pieces: not intervals
    assert resolve_strategy("document").key_intervals(document_ids=interleaved, padding_mask=torch.ones(1, 6, dtype=torch.bool)) is None
    assert BLOCK == 128


@pytest.mark.parametrize("spec,inputs", [({"name": "sliding_window", "window": 5}, {}),
                                         ("document", {"document_ids": torch.tensor([[0] * 6 + [1] * 6, [0] * 4 + [1] * 8])}),
                                         ({"name": "attention_sinks", "sinks": 2, "window": 4}, {}),
                                         ("prefix_lm", {"prefix_lengths": torch.tensor([5, 7])})],
                         ids=["sliding_window", "document", "attention_sinks", "prefix_lm"])
@torch.no_grad()
def test_flex_static_cache_decode_builds_no_grid_and_compiles_once(monkeypatch, model_for, spec, inputs):
    """Static-cache generation on flex_attention gives sdpa's tokens; each decode step takes its row's blocks from
    the structure (no create_block_mask) and, the shapes of a static cache never changing, runs the kernel
    compiled at the first step: no recompilation per step."""
    from torch._dynamo.utils import counters

    from conftest import left_padded

    ids, mask, _ = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=255, **inputs)
    expected = model_for("sdpa", spec).generate(ids, **kwargs)
    model = model_for("flex_attention", spec)
    cache = lambda: StaticCache(config=model.config, max_cache_len=32)  # noqa: E731  (one shape for both runs)
    model.generate(ids, past_key_values=cache(), **dict(kwargs, max_new_tokens=2))  # compiles prefill and decode
    calls, compiled = [], counters["stats"]["unique_graphs"]
    monkeypatch.setattr("torch.nn.attention.flex_attention.create_block_mask",
                        lambda *a, **k: calls.append(1) or create_block_mask(*a, **k))
    assert torch.equal(model.generate(ids, past_key_values=cache(), **kwargs), expected)
    assert not calls
    assert counters["stats"]["unique_graphs"] == compiled
