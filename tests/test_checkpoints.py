"""from_pretrained / save_pretrained: official layout, shards, dtypes, Auto classes, strategy round trips."""

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.model.masking import layer_mask

from conftest import left_padded

SLIDING = {"name": "sliding_window", "window": 3}


@torch.no_grad()
def test_official_layout_loads_as_causal_without_warnings(checkpoint, caplog):
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "qwen3"
    with caplog.at_level(logging.WARNING):
        model = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    assert not [r for r in caplog.records if "model of type" in r.getMessage()]
    assert model.mask_strategy.to_dict() == {"name": "causal"}


@torch.no_grad()
def test_sharded_checkpoint_loads_the_same_weights(checkpoint, sharded_checkpoint):
    assert (sharded_checkpoint / "model.safetensors.index.json").exists()
    assert len(list(sharded_checkpoint.glob("*.safetensors"))) > 1
    single = CustomQwen3ForCausalLM.from_pretrained(checkpoint).eval()
    sharded = CustomQwen3ForCausalLM.from_pretrained(sharded_checkpoint).eval()
    ids, mask, _ = left_padded()
    assert torch.equal(single(ids, attention_mask=mask).logits, sharded(ids, attention_mask=mask).logits)


@torch.no_grad()
def test_strategy_round_trips_through_config_json(checkpoint, tmp_path):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=SLIDING).eval()
    assert model.mask_strategy.to_dict() == SLIDING
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mask_strategy"] == SLIDING
    assert saved["model_type"] == "qwen3_custom_mask"

    ids, mask, _ = left_padded()
    expected = model(ids, attention_mask=mask).logits
    for loader in (CustomQwen3ForCausalLM, AutoModelForCausalLM):
        reloaded = loader.from_pretrained(tmp_path).eval()
        assert type(reloaded) is CustomQwen3ForCausalLM
        assert reloaded.mask_strategy.to_dict() == SLIDING
        assert torch.equal(reloaded(ids, attention_mask=mask).logits, expected)


@torch.no_grad()
def test_set_mask_strategy_is_saved(checkpoint, tmp_path):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    model.set_mask_strategy("prefix_lm")
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).mask_strategy.name == "prefix_lm"


@torch.no_grad()
def test_saved_custom_checkpoint_still_loads_in_stock_class(checkpoint, tmp_path):
    custom = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=SLIDING).eval()
    custom.save_pretrained(tmp_path)
    stock = Qwen3ForCausalLM.from_pretrained(tmp_path).eval()
    custom.set_mask_strategy("causal")
    ids, mask, _ = left_padded()
    assert torch.equal(stock(ids, attention_mask=mask).logits, custom(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_low_precision_with_device_map(checkpoint, dtype, backend):
    """Masks fit the dtype (eager: finfo(dtype).min, never -inf) and results track float32."""
    model = CustomQwen3ForCausalLM.from_pretrained(
        checkpoint, dtype=dtype, device_map="cpu", attn_implementation=backend, mask_strategy="prefix_lm"
    ).eval()
    assert model.dtype == dtype
    full = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend, mask_strategy="prefix_lm").eval()
    ids, mask, _ = left_padded()
    lengths = torch.tensor([4, 6])
    low = model(ids, attention_mask=mask, prefix_lengths=lengths).logits
    assert torch.isfinite(low).all()
    ref = full(ids, attention_mask=mask, prefix_lengths=lengths).logits
    real = mask.bool()
    torch.testing.assert_close(low[real].float(), ref[real], atol=0.25, rtol=0.05)
    if backend == "eager":
        masks, _ = model.model.attention_masks(ids, mask, prefix_lengths=lengths)
        built, _ = layer_mask(masks, 0)
        assert built.dtype == dtype
        assert built.min() == torch.finfo(dtype).min


def test_unknown_saved_strategy_names_the_missing_plugin(checkpoint, tmp_path):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mask_strategy"] = {"name": "from_a_plugin", "k": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(KeyError, match="from_a_plugin.*Known strategies: .*causal.*import that module before from_pretrained.*entry point"):
        CustomQwen3ForCausalLM.from_pretrained(tmp_path)
