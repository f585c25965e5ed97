"""The default causal strategy is exactly stock Qwen3ForCausalLM, fast paths included."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3ForCausalLM

from qwen3_custom_mask import CustomQwen3ForCausalLM

from conftest import left_padded


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
