"""The default causal strategy is exactly stock Qwen3ForCausalLM, fast paths included."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3ForCausalLM

from qwen3_custom_mask import CustomQwen3ForCausalLM

from qwen3_custom_mask.cli.tiny import save_tiny_checkpoint

from conftest import BACKENDS, left_padded


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "left-padding"])
@torch.no_grad()
def test_default_strategy_equals_stock_exactly(checkpoint, backend, padded):
    stock = Qwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend).eval()
    custom = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend).eval()
    assert custom.mask_strategy.name == "causal"
    ids, mask, positions = left_padded(pads=(3, 0) if padded else (0, 0))
    assert torch.equal(custom(ids, attention_mask=mask).logits, stock(ids, attention_mask=mask).logits)

    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=255)
    assert torch.equal(custom.generate(ids, **kwargs), stock.generate(ids, **kwargs))
    beams = dict(kwargs, num_beams=3)
    assert torch.equal(custom.generate(ids, **beams), stock.generate(ids, **beams))


@torch.no_grad()
def test_sdpa_keeps_is_causal_fast_path(model_for, monkeypatch):
    """No padding, causal: sdpa gets no mask tensor at all and is_causal=True (flash kernels stay eligible)."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = model_for("sdpa", "causal")
    ids, _, _ = left_padded(pads=(0, 0))
    model(ids)
    assert calls and all(mask is None and is_causal for mask, is_causal in calls)

    calls.clear()  # bidirectional without padding: also no mask, is_causal=False
    model.set_mask_strategy("bidirectional")
    model(ids)
    assert calls and all(mask is None and is_causal is False for mask, is_causal in calls)

    calls.clear()  # a custom strategy: one bool mask shared by every layer
    model.set_mask_strategy({"name": "sliding_window", "window": 3})
    model(ids)
    masks = [mask for mask, _ in calls]
    assert len(masks) == model.config.num_hidden_layers
    assert all(m is masks[0] for m in masks) and masks[0].dtype == torch.bool
    assert masks[0].shape == (2, 1, ids.shape[1], ids.shape[1])


@torch.no_grad()
def test_decode_step_builds_only_new_rows(model_for, monkeypatch):
    """During cached decoding the sdpa mask is (B, 1, 1, past + 1): linear in the cache, not quadratic."""
    shapes = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F,
        "scaled_dot_product_attention",
        lambda *a, **k: shapes.append(tuple(k["attn_mask"].shape)) or real_sdpa(*a, **k),
    )
    model = model_for("sdpa", {"name": "sliding_window", "window": 3})
    ids, mask, _ = left_padded()
    model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    layers = model.config.num_hidden_layers
    assert shapes == [(2, 1, 12, 12)] * layers + [(2, 1, 1, 13)] * layers + [(2, 1, 1, 14)] * layers


# transformers 5.25 added packed-sequence detection to the sliding (and chunked, bidirectional) builders: restarting
# position_ids without an attention_mask isolate each document. The default strategy must keep equalling stock on
# it, with and without sliding layers, and a stock `is_causal: false` config must keep stock's bidirectional result.
PACKED = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
STOCK_CONFIGS = {
    "plain": {},
    "sliding-layers": dict(use_sliding_window=True, sliding_window=3, max_window_layers=1),
    "layer_types": dict(layer_types=["sliding_attention", "full_attention"], use_sliding_window=True, sliding_window=3),
    "is_causal-false": dict(is_causal=False),
    "is_causal-false-sliding": dict(is_causal=False, use_sliding_window=True, sliding_window=3, max_window_layers=1),
}


@pytest.fixture(scope="module")
def stock_config_dirs(tmp_path_factory):
    return {name: save_tiny_checkpoint(tmp_path_factory.mktemp(name), **over) for name, over in STOCK_CONFIGS.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(STOCK_CONFIGS))
@torch.no_grad()
def test_stock_configs_equal_stock_on_packed_position_ids(stock_config_dirs, config, backend):
    path = stock_config_dirs[config]
    stock = Qwen3ForCausalLM.from_pretrained(path, attn_implementation=backend).eval()
    custom = CustomQwen3ForCausalLM.from_pretrained(path, attn_implementation=backend).eval()
    assert custom.mask_strategy.name == ("bidirectional" if "false" in config else "causal")
    ids = torch.randint(0, 250, PACKED.shape, generator=torch.Generator().manual_seed(1))
    for positions in (PACKED, None):
        for use_cache in (False, True):  # detection runs without a cache only (training, use_cache=False)
            expected = stock(ids, position_ids=positions, use_cache=use_cache).logits
            assert torch.equal(custom(ids, position_ids=positions, use_cache=use_cache).logits, expected), (config, backend, positions)
    if "false" not in config:  # stock isolates each packed document (the detection this test pins)
        alone = stock(ids[:1, 4:7]).logits
        torch.testing.assert_close(stock(ids, position_ids=PACKED, use_cache=False).logits[:1, 4:7], alone, atol=1e-5, rtol=1e-5)
