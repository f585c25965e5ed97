"""Bad input: each mistake gets an exception that names the problem and the fix."""

import pytest
import torch
from transformers import StaticCache

from qwen3_custom_mask import CustomQwen3ForCausalLM, register_mask, resolve_strategy
from qwen3_custom_mask.model.masking import layer_mask

from conftest import left_padded
from test_registry import scratch_names  # noqa: F401  (fixture)


def test_unknown_strategy_lists_the_known_ones(checkpoint):
    with pytest.raises(KeyError, match=r"Unknown mask strategy 'slidng_window'. Did you mean 'sliding_window'\? Known strategies: .*sliding_window"):
        CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy="slidng_window")


def test_a_preset_name_without_its_suffix_is_pointed_to_the_file():
    from qwen3_custom_mask import resolve_strategy

    with pytest.raises(KeyError, match=r"A shipped preset has that name: pass 'sliding_window_4k.yaml'"):
        resolve_strategy("sliding_window_4k")
    assert resolve_strategy("sliding_window_4k.yaml").name == "sliding_window"


@pytest.mark.parametrize(
    "spec,error,match",
    [
        ({"name": "sliding_window", "windw": 3}, TypeError, r"Unknown parameter\(s\) \['windw'\].*it takes: window"),
        ({"name": "causal", "window": 3}, TypeError, "it takes no parameters"),
        ({"name": "prefix_lm", "prefix_lengths": [3]}, TypeError, "per-call inputs: pass them to forward"),
        ({"name": "sliding_window", "window": 0}, ValueError, "window must be a positive integer, got 0"),
        ({"name": "sliding_window", "window": -4}, ValueError, "positive integer"),
        ({"name": "sliding_window", "window": 2.5}, ValueError, "positive integer"),
        ({"name": "sliding_window", "window": True}, ValueError, "positive integer"),
        ({"name": "document", "causal": "yes"}, ValueError, "document: causal must be true or false, got 'yes'"),
        ({"name": "sliding_window", "window": 10**30}, ValueError, r"window=10{30} is larger than 2147483647"),
        ({"name": "attention_sinks", "sinks": 2**40, "window": 4}, ValueError, r"sinks=\d+ is larger than"),
        ({"and": ["causal", {"name": "document", "causal": 1}]}, ValueError, "causal must be true or false"),
        ({"window": 3}, TypeError, "spec is a name such as 'prefix_lm', a dict"),
        (42, TypeError, "spec is a name"),
    ],
)
def test_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        resolve_strategy(spec)


def test_missing_required_parameter(scratch_names):  # noqa: F811
    register_mask("needs_k")(lambda k: (lambda b, h, q, kv: kv <= q))
    with pytest.raises(TypeError, match=r"'needs_k' needs parameter\(s\) \['k'\]"):
        resolve_strategy("needs_k")


@pytest.mark.parametrize(
    "make_mask,error,match",
    [
        (lambda: torch.ones(2, 1, 12, 11, dtype=torch.bool), ValueError, r"expected \(batch, 1 or heads, queries, keys\) = \(2, 1 or 4, 12, 12\)"),
        (lambda: torch.ones(2, 3, 12, 12, dtype=torch.bool), ValueError, r"shape \(2, 3, 12, 12\)"),
        (lambda: torch.ones(3, 1, 12, 12, dtype=torch.bool), ValueError, "expected"),
        (lambda: torch.full((2, 1, 12, 12), 2), ValueError, r"4D integer attention_mask holds 1 \(attend\) and 0"),
        (lambda: torch.ones(2, 11, dtype=torch.long), ValueError, r"expected \(batch, past \+ new tokens\) = \(2, 12\)"),
        (lambda: torch.ones(2, 12, 12, dtype=torch.bool), ValueError, "2D attention_mask has shape"),
        (lambda: torch.full((2, 12), -1e9), TypeError, "other than 0 and 1"),
    ],
    ids=["4d-keys", "4d-heads", "4d-batch", "4d-int", "2d-length", "3d", "2d-float"],
)
def test_bad_attention_masks(model_for, make_mask, error, match):
    model = model_for("sdpa", "bidirectional")
    ids, _, _ = left_padded()
    with pytest.raises(error, match=match):
        model(ids, attention_mask=make_mask())


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex_attention"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_nan_in_an_additive_4d_mask_is_refused(model_for, backend, bad):
    model = model_for(backend, "causal")
    ids, _, _ = left_padded()
    mask = torch.zeros(2, 1, 12, 12)
    mask[1, 0, 5, 3] = bad
    with pytest.raises(ValueError, match=r"holds NaN or \+inf \(first at index \[1, 0, 5, 3\]\).*finfo"):
        model(ids, attention_mask=mask)


def test_bad_4d_mask_in_generate(model_for):
    model = model_for("sdpa")
    ids, _, _ = left_padded()
    with pytest.raises(ValueError, match=r"\(2, 1 or 4, 12, 12\)"):
        model.generate(ids, attention_mask=torch.ones(2, 1, 12, 13, dtype=torch.bool), max_new_tokens=2)


@pytest.mark.parametrize(
    "lengths,error,match",
    [
        (None, ValueError, "needs `prefix_lengths`"),
        (torch.tensor([4, 13]), ValueError, r"exceed the number of tokens in each sample \[9, 12\]"),
        (torch.tensor([10, 2]), ValueError, "exceed"),  # sample 0 has 3 pads: 9 real tokens
        (torch.tensor([1, 2, 3]), ValueError, r"shape \(batch,\) = \(2,\)"),
        (torch.tensor([[1, 2]]), ValueError, r"shape \(batch,\)"),
        (torch.tensor([-1, 2]), ValueError, ">= 0"),
        (torch.tensor([1.5, 2.0]), TypeError, "must hold integers"),
    ],
)
def test_bad_prefix_lengths(model_for, lengths, error, match):
    model = model_for("sdpa", "prefix_lm")
    ids, mask, _ = left_padded()
    with pytest.raises(error, match=match):
        model(ids, attention_mask=mask, prefix_lengths=lengths)


def test_mask_inputs_the_strategy_does_not_use_are_rejected(model_for):
    model = model_for("sdpa", "causal")
    ids, mask, _ = left_padded()
    with pytest.raises(ValueError, match=r"\['prefix_lengths'\] given, but the active mask strategy 'causal'"):
        model(ids, attention_mask=mask, prefix_lengths=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="does not use them"):
        model.generate(ids, attention_mask=mask, prefix_lengths=torch.tensor([1, 2]), max_new_tokens=2)


def test_4d_mask_and_strategy_inputs_together_are_rejected(model_for):
    model = model_for("sdpa", "prefix_lm")
    ids, _, _ = left_padded()
    with pytest.raises(ValueError, match="4D attention mask replaces the mask strategy"):
        model(ids, attention_mask=torch.ones(2, 1, 12, 12, dtype=torch.bool), prefix_lengths=torch.tensor([1, 2]))


@pytest.fixture
def flash_model(checkpoint):
    """A model that believes it runs flash-attention: enough to test the lowering without the kernel."""
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    model.config._attn_implementation = "flash_attention_2"
    return model


def test_flash_refuses_what_it_cannot_express(flash_model):
    with pytest.raises(ValueError, match="'prefix_lm' mask cannot be expressed by flash_attention_2.*'sdpa' or 'flex_attention'"):
        flash_model.set_mask_strategy("prefix_lm")
    ids, _, _ = left_padded()
    with pytest.raises(ValueError, match="4D attention_mask mask cannot be expressed by flash_attention_2"):
        flash_model.model.attention_masks(ids, torch.ones(2, 1, 12, 12, dtype=torch.bool))


@pytest.mark.parametrize(
    "spec,name",
    [
        ({"name": "attention_sinks", "sinks": 1, "window": 4}, "attention_sinks"),
        ({"name": "chunked", "chunk_size": 4}, "chunked"),
        ({"and": ["document", {"name": "sliding_window", "window": 3}]}, "and"),
        ("tree", "tree"),
        ({"name": "sliding_window", "window": [2, 2, 3, 3]}, "sliding_window"),
        ({"and": ["causal", "bidirectional"]}, "and"),
        ({"layers": {"0": "causal", "1": "prefix_lm"}}, "prefix_lm"),
    ],
)
def test_flash_refuses_every_mask_it_cannot_express(flash_model, spec, name):
    with pytest.raises(ValueError, match=f"'{name}' mask cannot be expressed by flash_attention_2"):
        flash_model.set_mask_strategy(spec)


def test_flash_takes_per_layer_windows_and_directions(flash_model):
    ids, _, _ = left_padded()
    flash_model.set_mask_strategy({"layers": {"0": {"name": "sliding_window", "window": 5}, "1": "bidirectional"}})
    assert [layer.self_attn.sliding_window for layer in flash_model.model.layers] == [5, None]
    masks, _ = flash_model.model.attention_masks(ids)
    assert layer_mask(masks, 0) == (None, {}) and layer_mask(masks, 1) == (None, {"is_causal": False})


def test_flash_gets_padding_and_kwargs_for_what_it_can_express(flash_model):
    ids, mask, _ = left_padded()
    flash_model.set_mask_strategy("bidirectional")
    masks, _ = flash_model.model.attention_masks(ids, mask)
    padding, kwargs = layer_mask(masks, 0)
    assert kwargs == {"is_causal": False}
    assert torch.equal(padding, mask.bool())
    flash_model.set_mask_strategy({"name": "sliding_window", "window": 3})
    masks, _ = flash_model.model.attention_masks(ids)
    assert layer_mask(masks, 0) == (None, {}) and layer_mask(masks, 1) == (None, {})
    assert all(layer.self_attn.sliding_window == 3 for layer in flash_model.model.layers)
    flash_model.set_mask_strategy("causal")
    assert all(layer.self_attn.sliding_window is None for layer in flash_model.model.layers)


def test_unsupported_backend_is_named(model_for, monkeypatch):
    model = model_for("sdpa", "prefix_lm")
    monkeypatch.setattr(model.config, "_attn_implementation", "paged|sdpa")
    ids, mask, _ = left_padded()
    with pytest.raises(ValueError, match="cannot lower a custom mask to attn_implementation='paged|sdpa'"):
        model(ids, attention_mask=mask, prefix_lengths=torch.tensor([1, 2]))


@pytest.mark.parametrize(
    "inputs,error,match",
    [
        ({"document_ids": torch.zeros(2, 12)}, TypeError, "document_ids must hold integers"),
        ({"document_ids": torch.zeros(3, 12, dtype=torch.long)}, ValueError, r"shape \(batch, past \+ new tokens\) = \(2, 12\)"),
        ({"document_ids": torch.zeros(2, 13, dtype=torch.long)}, ValueError, r"got \(2, 13\)"),
        ({"document_ids": torch.zeros(2, 11, dtype=torch.long)}, ValueError, r"= \(2, 12\), got \(2, 11\)"),
        ({"draft_tree": torch.tensor([-1, 0])}, ValueError, "does not use them"),
    ],
)
def test_bad_document_inputs(model_for, inputs, error, match):
    model = model_for("sdpa", "document")
    ids, mask, _ = left_padded()
    with pytest.raises(error, match=match):
        model(ids, attention_mask=mask, **inputs)


def test_documents_from_restarting_position_ids_even_with_a_cache_and_all_ones_mask(model_for):
    """Stock packed-sequence detection turns off with a cache or an all-ones mask; the strategy does not."""
    from transformers import DynamicCache

    model = model_for("sdpa", "document")
    ids = torch.randint(0, 250, (1, 10), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
    with torch.no_grad():
        packed = model(ids, attention_mask=torch.ones(1, 10), position_ids=positions, past_key_values=DynamicCache()).logits
        explicit = model(ids, document_ids=torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]])).logits
        alone = model(ids[:, 4:7], document_ids=torch.zeros(1, 3, dtype=torch.long)).logits
    torch.testing.assert_close(packed, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 4:7], alone, atol=1e-5, rtol=1e-5)


def test_flash_runs_packed_documents_through_varlen(flash_model):
    """What reaches flash-attention for packed documents: cu_seq_lens that start at every document, padding run
    and row (over the flattened batch), as stock transformers feeds packed sequences; a decode step gets a 2D
    mask of its own document's keys."""
    from transformers import DynamicCache

    flash_model.set_mask_strategy("document")
    ids = torch.randint(0, 250, (2, 8))
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1, -1, -1]])
    padding = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    masks, _ = flash_model.model.attention_masks(ids, padding, document_ids=docs)
    mask, kwargs = layer_mask(masks, 0)
    assert mask is None and kwargs["is_causal"] is True
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 8, 10, 14, 16]  # row 1: docs at 8, 10; padding at 14
    assert kwargs["cu_seq_lens_k"] is kwargs["cu_seq_lens_q"] and kwargs["max_length_q"] == 4 == kwargs["max_length_k"]

    flash_model.set_mask_strategy({"name": "document", "causal": False})
    masks, _ = flash_model.model.attention_masks(ids[:1], None, document_ids=docs[:1])
    assert layer_mask(masks, 1)[1]["is_causal"] is False

    flash_model.set_mask_strategy("document")  # decoding: the new token's document only
    cache = DynamicCache(config=flash_model.config)
    for layer in range(2):
        cache.update(torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 8, 16), layer)
    step = torch.cat([docs[:1], docs[:1, -1:]], 1)
    masks, _ = flash_model.model.attention_masks(ids[:1, :1], torch.ones(1, 9, dtype=torch.long), cache, document_ids=step)
    mask, kwargs = layer_mask(masks, 0)
    assert mask.tolist() == [[False] * 5 + [True] * 4] and kwargs == {"is_causal": True}


@pytest.mark.parametrize(
    "docs,padding,match",
    [
        (torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2]]), torch.ones(1, 8, dtype=torch.long), "contiguous"),
        (torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]), torch.tensor([[1, 1, 0, 1, 1, 1, 1, 1]]), "padding at the ends"),
    ],
)
def test_flash_refuses_documents_it_cannot_run_as_varlen(flash_model, docs, padding, match):
    flash_model.set_mask_strategy("document")
    with pytest.raises(ValueError, match=match):
        flash_model.model.attention_masks(torch.randint(0, 250, (1, 8)), padding, document_ids=docs)


def test_static_cache_too_small_names_the_cache_and_the_fix(model_for):
    model = model_for("sdpa", {"name": "sliding_window", "window": 4})
    ids, mask, _ = left_padded()
    with pytest.raises(ValueError, match=r"covers 13 positions .* room for 12 .* larger max_cache_len"):
        model.generate(ids, attention_mask=mask, past_key_values=StaticCache(config=model.config, max_cache_len=12), max_new_tokens=5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_with_a_prefix_longer_than_the_prompt_says_so(model_for, use_cache):
    """Not the cache-consistency advice (use_cache=False would not help): the prefix must lie in each row's prompt."""
    model = model_for("sdpa", "prefix_lm")
    ids, mask, _ = left_padded()  # row 0: 9 real tokens
    with pytest.raises(ValueError, match=r"prefix_lengths \[10, 6\] exceed the number of tokens in each sample \[9, 12\]"):
        model.generate(ids, attention_mask=mask, prefix_lengths=torch.tensor([10, 6]), max_new_tokens=2, use_cache=use_cache)


def test_a_prefix_past_a_rows_first_chunk_counts_its_real_tokens(model_for):
    """prefill_chunk_size + left padding, a row whose first chunk is all padding: the counts are its real tokens
    read so far (not the probed next slot), and the message says the prefix must fit the first chunk."""
    model = model_for("sdpa", "prefix_lm")
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    with pytest.raises(ValueError, match=r"exceed the number of tokens in each sample \[4, 0\].*inside the first chunk"):
        model.generate(ids, attention_mask=mask, prefix_lengths=torch.tensor([3, 3]), max_new_tokens=2, prefill_chunk_size=4, pad_token_id=255)


def test_a_training_forward_without_document_boundaries_raises(model_for):
    """The guard against a collator (or Trainer's column removal) that dropped document_ids."""
    model = model_for("sdpa", "document")
    ids, mask, _ = left_padded()
    model.train()
    try:
        with pytest.raises(ValueError, match="needs document boundaries in training: pass document_ids.*drop the column"):
            model(ids, attention_mask=mask, labels=ids)
    finally:
        model.eval()
