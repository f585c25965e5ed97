"""Compositions and per-layer specs: they resolve, save, reload and fail clearly."""

import json

import pytest
import torch

from qwen3_custom_mask import CustomQwen3ForCausalLM, resolve_strategy
from qwen3_custom_mask.cli.draw import mask_matrix

from conftest import left_padded

SPECS = [
    {"and": ["document", {"name": "sliding_window", "window": 2}]},
    {"or": [{"name": "sliding_window", "window": 2}, {"not": "causal"}]},
    {"layers": {"0": "bidirectional", "1": {"and": ["causal", {"name": "chunked", "chunk_size": 3}]}}},
]


@pytest.mark.parametrize("spec", SPECS, ids=["and", "or-not", "layers"])
def test_spec_round_trips_through_save_and_reload(checkpoint, tmp_path, spec):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=spec).eval()
    assert model.mask_strategy == resolve_strategy(spec)  # names are saved in their dict form
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mask_strategy"] == model.mask_strategy.to_dict()
    reloaded = CustomQwen3ForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.mask_strategy == model.mask_strategy
    ids, mask, _ = left_padded()
    inputs = {"document_ids": torch.zeros(2, 12, dtype=torch.long)} if "document" in json.dumps(spec) else {}
    with torch.no_grad():
        assert torch.equal(reloaded(ids, attention_mask=mask, **inputs).logits, model(ids, attention_mask=mask, **inputs).logits)


def test_composition_is_the_boolean_algebra_of_its_parts():
    window = {"name": "sliding_window", "window": 3}
    chunks = {"name": "chunked", "chunk_size": 4}
    a, b = mask_matrix(window, 9), mask_matrix(chunks, 9)
    assert torch.equal(mask_matrix({"and": [window, chunks]}, 9), a & b)
    assert torch.equal(mask_matrix({"or": [window, chunks]}, 9), a | b)
    assert torch.equal(mask_matrix({"not": window}, 9), ~a)


@pytest.mark.parametrize(
    "spec,error,match",
    [
        ({"and": "causal"}, TypeError, "list of one or more specs"),
        ({"or": []}, TypeError, "list of one or more specs"),
        ({"and": ["causal"], "or": ["causal"]}, TypeError, "exactly one key"),
        ({"and": ["nope"]}, ValueError, "Unknown mask strategy 'nope'"),
        ({"and": [{"layers": {"0-1": "causal"}}]}, TypeError, "outermost"),
        ({"layers": {"zero": "causal"}}, ValueError, "Bad layer key 'zero'"),
        ({"layers": {"3-1": "causal"}}, ValueError, "end is before the start"),
        ({"layers": []}, TypeError, "maps layer ranges to specs"),
    ],
)
def test_bad_compositions(spec, error, match):
    with pytest.raises(error, match=match):
        resolve_strategy(spec)


@pytest.mark.parametrize(
    "layers,match",
    [
        ({"0": "causal"}, r"leaves layers \[1\] without a strategy"),
        ({"0-1": "causal", "1": "bidirectional"}, "Layer 1 appears in both"),
        ({"0-2": "causal"}, r"names layers \[2\], but the model has 2"),
    ],
)
def test_layer_specs_must_cover_the_model_exactly(model_for, layers, match):
    model = model_for("sdpa")
    with pytest.raises(ValueError, match=match):
        model.set_mask_strategy({"layers": layers})
    assert model.mask_strategy.name == "causal"  # a refused spec leaves the model as it was


def test_per_layer_masks_reach_their_layers(model_for):
    """Each decoder layer's attention gets its own group's mask (seen from inside the attention module)."""
    model = model_for("eager", {"layers": {"0": {"name": "sliding_window", "window": 2}, "1": "bidirectional"}})
    seen = {}

    def spy(idx):
        def hook(module, args, kwargs):
            seen[idx] = kwargs["attention_mask"]
        return hook

    handles = [layer.self_attn.register_forward_pre_hook(spy(i), with_kwargs=True) for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(torch.arange(6)[None])
    finally:
        for h in handles:
            h.remove()
    visible = {i: (m[0, 0] == 0) for i, m in seen.items()}
    assert torch.equal(visible[0], mask_matrix({"name": "sliding_window", "window": 2}, 6))
    assert visible[1].all()
