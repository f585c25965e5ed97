"""Numerics of empty rows, dtypes, isolation between models and threads, versioned and byte-stable checkpoints."""

import json
import threading

import pytest
import torch

from qwen3_custom_mask import CustomQwen3ForCausalLM, register_mask, unregister_mask
from qwen3_custom_mask.model.masking import layer_mask
from qwen3_custom_mask.strategy.reference import reference_logits, reference_mask

from conftest import BACKENDS, left_padded

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@torch.no_grad()
def test_fully_masked_rows_stay_finite(checkpoint, backend, dtype):
    """Rows that see nothing (padding rows; a strategy that hides everything) give finite outputs, never NaN/Inf."""
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend, dtype=dtype).eval()
    ids, mask, positions = left_padded()
    for spec, inputs in (({"not": "bidirectional"}, {}), ("prefix_lm", {"prefix_lengths": torch.tensor([2, 3])}),
                         ({"name": "global_tokens", "tokens": [0], "window": 1}, {})):
        model.set_mask_strategy(spec)
        logits = model(ids, attention_mask=mask, position_ids=positions, **inputs).logits
        assert torch.isfinite(logits).all(), (spec, backend, dtype)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 0.3), (torch.float16, 0.05)], ids=["bf16", "fp16"])
@torch.no_grad()
def test_low_precision_stays_within_tolerance_of_the_reference(checkpoint, backend, dtype, atol):
    """The masked value fits the dtype (finfo.min, not -inf), and results track the float32 reference."""
    full = CustomQwen3ForCausalLM.from_pretrained(checkpoint).eval()
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend, dtype=dtype).eval()
    spec = {"or": [{"name": "attention_sinks", "sinks": 1, "window": 3}, {"name": "dilated_sliding_window", "window": 6, "dilation": 3}]}
    ids, mask, positions = left_padded()
    model.set_mask_strategy(spec)
    full.set_mask_strategy(spec)
    padding = mask.bool()
    dense = reference_mask(full.mask_strategy.mask_mod(padding_mask=padding), 2, 4, 12, padding)
    ref = reference_logits(full, ids, dense, positions)
    out = model(ids, attention_mask=mask, position_ids=positions).logits.float()
    if backend == "eager":
        built, _ = layer_mask(model.model.attention_masks(ids, mask, position_ids=positions)[0], 0)
        assert built.dtype == dtype and built.min() == torch.finfo(dtype).min
    torch.testing.assert_close(out[padding], ref[padding], atol=atol * ref.abs().max().item() / 10, rtol=0.05)


@torch.no_grad()
def test_two_models_with_different_strategies_in_two_threads(checkpoint):
    """No global state: concurrent models keep their own strategies (no patching of transformers)."""
    a = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="bidirectional").eval()
    b = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy={"name": "sliding_window", "window": 2}).eval()
    ids, mask, _ = left_padded()
    expected = {"a": a(ids, attention_mask=mask).logits, "b": b(ids, attention_mask=mask).logits}
    assert not torch.allclose(expected["a"], expected["b"])
    results, errors = {"a": [], "b": []}, []

    def work(name, model):
        try:
            for _ in range(20):
                results[name].append(model(ids, attention_mask=mask).logits)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=("a", a)), threading.Thread(target=work, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in ("a", "b"):
        assert all(torch.equal(r, expected[name]) for r in results[name])
    stock = CustomQwen3ForCausalLM.from_pretrained(checkpoint).eval()
    from transformers import Qwen3ForCausalLM

    plain = Qwen3ForCausalLM.from_pretrained(checkpoint).eval()
    assert torch.equal(plain(ids, attention_mask=mask).logits, stock(ids, attention_mask=mask).logits)


@torch.no_grad()
def test_unregistering_or_replacing_a_strategy_does_not_change_a_built_model(checkpoint):
    @register_mask("reliability_window")
    def window(size: int = 2):
        return lambda b, h, q, kv: (kv <= q) & (q - kv < size)

    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="reliability_window").eval()
    ids, mask, _ = left_padded()
    before = model(ids, attention_mask=mask).logits
    try:
        register_mask("reliability_window", replace=True)(lambda size=2: (lambda b, h, q, kv: kv >= 0))
        assert torch.equal(model(ids, attention_mask=mask).logits, before)
        unregister_mask("reliability_window")
        assert torch.equal(model(ids, attention_mask=mask).logits, before)
    finally:
        from qwen3_custom_mask.strategy.registry import _MASKS

        _MASKS.pop("reliability_window", None)


def test_config_from_a_newer_version_is_refused_with_the_fix(checkpoint, tmp_path):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="prefix_lm")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["mask_spec_version"] == 1
    config["mask_spec_version"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer qwen3-custom-mask.*pip install -U qwen3-custom-mask"):
        CustomQwen3ForCausalLM.from_pretrained(tmp_path)
    # every load path clients take refuses it the same way (they used to load it silently)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    for load in (AutoConfig.from_pretrained, AutoModelForCausalLM.from_pretrained, AutoModel.from_pretrained,
                 AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(ValueError, match="newer qwen3-custom-mask.*pip install -U qwen3-custom-mask"):
            load(tmp_path)
    from qwen3_custom_mask import CustomQwen3Config

    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    for build in (lambda: CustomQwen3Config(**fields), lambda: AutoConfig.for_model("qwen3_custom_mask", **fields)):
        with pytest.raises(ValueError, match="newer qwen3-custom-mask"):
            build()


@pytest.mark.parametrize("spec", ["causal", {"layers": {"0": "prefix_lm", "1": {"and": ["causal", {"name": "chunked", "chunk_size": 4}]}}}])
def test_save_load_save_is_byte_identical(checkpoint, tmp_path, spec):
    first, second = tmp_path / "first", tmp_path / "second"
    CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=spec).save_pretrained(first)
    CustomQwen3ForCausalLM.from_pretrained(first).save_pretrained(second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_a_plain_qwen3_config_keeps_its_attention_backend():
    """CustomQwen3ForCausalLM(Qwen3Config) converts the config without losing attn_implementation."""
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    for backend in ("eager", "sdpa", "flex_attention"):
        config = tiny_qwen3_config()
        config._attn_implementation = backend
        assert CustomQwen3ForCausalLM(config).config._attn_implementation == backend


@torch.no_grad()
def test_8192_token_forward_builds_one_mask_for_all_layers(checkpoint, monkeypatch):
    """A long CPU forward with a custom strategy lowers the mask once and hands the same object to every layer."""
    import qwen3_custom_mask.model.masking as modeling

    model = CustomQwen3ForCausalLM.from_pretrained(
        checkpoint, attn_implementation="sdpa", mask_strategy={"name": "sliding_window", "window": 1024}, max_position_embeddings=8192
    ).eval()
    calls, seen = [], []
    real_lower = modeling.lower
    monkeypatch.setattr(modeling, "lower", lambda *a, **k: calls.append(1) or real_lower(*a, **k))
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a, k: seen.append(k["attention_mask"]), with_kwargs=True)
             for layer in model.model.layers]
    try:
        out = model(torch.randint(0, 250, (1, 8192)), logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    assert torch.isfinite(out.logits).all()
    assert len(calls) == 1  # one lowering per forward, not per layer
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0].shape == (1, 1, 8192, 8192)
