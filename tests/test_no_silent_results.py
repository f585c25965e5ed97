"""Regressions of results that were silently wrong: each is now right, or refused loudly before a token is made."""

import json

import pytest
import torch
from transformers import GenerationConfig

from qwen3_custom_mask import BoundedCache, CustomQwen3ForCausalLM

from conftest import left_padded

GREEDY = dict(do_sample=False)


@pytest.fixture
def no_use_cache_checkpoint(checkpoint, tmp_path):
    """An official-style checkpoint: its generation_config.json has no use_cache key (as Qwen/Qwen3-*'s)."""
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    model.generation_config = GenerationConfig(bos_token_id=254, eos_token_id=255, do_sample=False)
    model.save_pretrained(tmp_path)
    assert "use_cache" not in json.loads((tmp_path / "generation_config.json").read_text())
    return tmp_path


@pytest.mark.parametrize("given", ["input_ids", "inputs_embeds"])
def test_cache_check_runs_when_generation_config_has_no_use_cache(no_use_cache_checkpoint, given):
    model = CustomQwen3ForCausalLM.from_pretrained(no_use_cache_checkpoint, mask_strategy="bidirectional").eval()
    ids, mask, _ = left_padded()
    inputs = {"input_ids": ids} if given == "input_ids" else {"inputs_embeds": model.get_input_embeddings()(ids)}
    forwards = []
    hook = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    fix = "pass input_ids with use_cache=False" if given == "inputs_embeds" else "Pass use_cache=False"
    try:
        for extra in ({}, {"use_cache": False} if given == "inputs_embeds" else {}):  # embeds: generate() caches anyway
            with pytest.raises(ValueError, match=fix):
                model.generate(**inputs, attention_mask=mask, max_new_tokens=4, **extra, **GREEDY)
    finally:
        hook.remove()
    assert not forwards  # refused before the first token
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4, use_cache=False, **GREEDY)
    assert out.shape[-1] == 16


def test_look_ahead_check_is_exact_at_any_length(model_for):
    """A global token at index 30 that sees every token (causal=False) is first seen when generation reaches
    it; cached decoding must stop there, not diverge from use_cache=False."""
    model = model_for("sdpa", {"name": "global_tokens", "tokens": [30], "window": 1, "causal": False})
    ids, mask, _ = left_padded(pads=(0, 0))
    with pytest.raises(ValueError, match="attend to tokens generated after it"):
        model.generate(ids, attention_mask=mask, max_new_tokens=25, **GREEDY)
    recomputed = model.generate(ids, attention_mask=mask, max_new_tokens=25, use_cache=False, **GREEDY)
    assert recomputed.shape == (2, 37)
    # Before the global token is reached, cached and recomputed decoding agree.
    early = model.generate(ids, attention_mask=mask, max_new_tokens=18, **GREEDY)
    assert torch.equal(early, recomputed[:, :30])


def test_per_head_windows_of_the_wrong_length_are_refused_at_set_time(model_for):
    model = model_for("sdpa", {"name": "sliding_window", "window": 3})
    with pytest.raises(ValueError, match=r"one entry per attention head \(4\), got 2"):
        model.set_mask_strategy({"name": "sliding_window", "window": [2, 3]})
    assert model.config.mask_strategy == {"name": "sliding_window", "window": 3}  # nothing half-set
    with pytest.raises(ValueError, match="one entry per attention head"):
        model.set_mask_strategy({"and": ["causal", {"name": "sliding_window", "window": [2, 3, 4]}]})


@pytest.mark.parametrize("assisted", ["assistant_model", "prompt_lookup_num_tokens"])
def test_bounded_cache_refuses_assisted_decoding_before_the_first_token(model_for, assisted):
    model = model_for("sdpa", {"name": "sliding_window", "window": 4})
    ids, mask, _ = left_padded(pads=(0, 0))
    option = {"assistant_model": model} if assisted == "assistant_model" else {"prompt_lookup_num_tokens": 2}
    forwards = []
    hook = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(ValueError, match="BoundedCache cannot be used for assisted decoding"):
            model.generate(ids[:1], max_new_tokens=4, past_key_values=BoundedCache(), **option, **GREEDY)
    finally:
        hook.remove()
    assert not forwards


def test_bounded_cache_stores_no_left_padding(model_for):
    """sinks 2 + window 4 - 1 = 5 positions per layer, however much left padding a row has."""
    spec = {"name": "attention_sinks", "sinks": 2, "window": 4}
    ids, mask, _ = left_padded(pads=(9, 0))
    unbounded = model_for("sdpa", spec).generate(ids, attention_mask=mask, max_new_tokens=20, **GREEDY)
    cache = BoundedCache()
    out = model_for("sdpa", spec).generate(ids, attention_mask=mask, max_new_tokens=20, past_key_values=cache, **GREEDY)
    assert torch.equal(out, unbounded)
    assert cache.stored_tokens() == 5
    assert all(layer.keys.shape[-2] == 5 for layer in cache.layers)


def test_bounded_cache_follows_beam_search(model_for):
    spec = {"name": "sliding_window", "window": 3}
    ids, mask, _ = left_padded()
    beams = dict(max_new_tokens=8, num_beams=3, **GREEDY)
    expected = model_for("sdpa", spec).generate(ids, attention_mask=mask, **beams)
    assert torch.equal(model_for("sdpa", spec).generate(ids, attention_mask=mask, past_key_values=BoundedCache(), **beams), expected)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex_attention"])
@torch.no_grad()
def test_document_cached_step_keeps_the_prefills_boundaries(model_for, backend):
    """Prefill [doc A (4) | doc B (3)] with restarting position_ids, then one cached step at position 3: it continues
    doc B and must not see doc A (read alone, the step's positions made the row one document: off by 0.27)."""
    from transformers import DynamicCache

    model = model_for(backend, "document")
    ids = torch.randint(0, 250, (1, 8), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    model(ids[:, :7], position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), cache=cache, use_cache=True)
    step = model(ids[:, 7:], position_ids=torch.tensor([[3]]), cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, model(ids[:, 4:8]).logits[:, -1], atol=1e-4, rtol=1e-4)
    # a position that does not follow starts a new document; no positions at all continue the last one
    cache = DynamicCache(config=model.config)
    model(ids[:, :7], position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), cache=cache, use_cache=True)
    fresh = model(ids[:, 7:], position_ids=torch.tensor([[0]]), cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(fresh, model(ids[:, 7:]).logits[:, -1], atol=1e-4, rtol=1e-4)
    cache = DynamicCache(config=model.config)
    model(ids[:, :7], position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), cache=cache, use_cache=True)
    implicit = model(ids[:, 7:], cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(implicit, step, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_document_cached_step_on_a_cache_it_did_not_fill_is_refused(model_for):
    from transformers import DynamicCache

    model = model_for("sdpa", "document")
    ids = torch.randint(0, 250, (1, 8), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    model.set_mask_strategy("causal")
    model(ids[:, :7], cache=cache, use_cache=True)
    model.set_mask_strategy("document")
    with pytest.raises(ValueError, match="cannot tell which document this cached step continues.*document_ids"):
        model(ids[:, 7:], position_ids=torch.tensor([[3]]), cache=cache, use_cache=True)
    ids_given = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    model(ids[:, 7:], position_ids=torch.tensor([[3]]), cache=cache, use_cache=True, document_ids=ids_given)  # the fix


@pytest.mark.parametrize("draft_strategy", [None, "causal", "prefix_lm"], ids=["stock-draft", "plugin-causal-draft", "plugin-prefix-draft"])
@torch.no_grad()
def test_prefix_lm_assisted_decoding_with_any_draft(checkpoint, draft_strategy):
    """generate() fills prefix_lengths in (the prompt is the prefix); a draft that does not take it drafts without it
    (it failed with "model_kwargs are not used by the model: ['prefix_lengths']", an argument nobody passed)."""
    from transformers import Qwen3ForCausalLM

    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint).eval()
    model.set_mask_strategy("prefix_lm")
    if draft_strategy is None:
        draft = Qwen3ForCausalLM.from_pretrained(checkpoint).eval()
    else:
        draft = CustomQwen3ForCausalLM.from_pretrained(checkpoint).eval()
        draft.set_mask_strategy(draft_strategy)
    ids = torch.randint(0, 250, (1, 8), generator=torch.Generator().manual_seed(0))
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert not torch.equal(expected, Qwen3ForCausalLM.from_pretrained(checkpoint).eval().generate(ids, max_new_tokens=6, do_sample=False))
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False, assistant_model=draft), expected)
