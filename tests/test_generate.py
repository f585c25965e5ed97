"""generate(): cached == recomputed, batching == alone, 4D prompt masks, strategies a cache cannot honour."""

import pytest
import torch

from qwen3_custom_mask.strategy.reference import reference_logits, reference_mask
from qwen3_custom_mask.masks.user_mask import user_mask

from conftest import left_padded
from strategies import CACHEABLE, CASES

GREEDY = dict(max_new_tokens=8, do_sample=False)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CACHEABLE)
def test_cached_generation_equals_full_recompute(model_for, backend, case):
    spec, inputs = CASES[case]
    model = model_for(backend, spec)
    ids, mask, _ = left_padded()
    cached = model.generate(ids, attention_mask=mask, **GREEDY, **inputs)
    recomputed = model.generate(ids, attention_mask=mask, use_cache=False, **GREEDY, **inputs)
    assert cached.shape == (2, 20)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("case", CACHEABLE)
def test_batched_left_padded_equals_each_prompt_alone(model_for, case):
    spec, inputs = CASES[case]
    model = model_for("sdpa", spec)
    ids, mask, _ = left_padded(pads=(3, 0))
    batched = model.generate(ids, attention_mask=mask, **GREEDY, **inputs)
    for row, pad in enumerate((3, 0)):
        alone_inputs = {k: v[row : row + 1, pad:] if k == "document_ids" else v[row : row + 1] for k, v in inputs.items()}
        alone = model.generate(ids[row : row + 1, pad:], **GREEDY, **alone_inputs)
        assert torch.equal(batched[row, 12:], alone[0, 12 - pad :])


@pytest.mark.parametrize("case", CACHEABLE)
def test_beam_search_and_sampling_run_with_every_cacheable_strategy(model_for, case):
    spec, inputs = CASES[case]
    model = model_for("sdpa", spec)
    ids, mask, _ = left_padded()
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=3, do_sample=False, **inputs)
    recomputed = model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=3, use_cache=False, **inputs)
    assert torch.equal(beams, recomputed)
    torch.manual_seed(0)
    sampled = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=True, top_k=20, **inputs)
    torch.manual_seed(0)
    resampled = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=True, top_k=20, use_cache=False, **inputs)
    assert torch.equal(sampled, resampled)


def test_bidirectional_generation_needs_use_cache_false(model_for):
    model = model_for("sdpa", "bidirectional")
    ids, mask, _ = left_padded()
    with pytest.raises(ValueError, match="use_cache=False.*prefix_lm"):
        model.generate(ids, attention_mask=mask, **GREEDY)
    out = model.generate(ids, attention_mask=mask, use_cache=False, **GREEDY)
    assert out.shape == (2, 20)


def test_prefix_longer_than_prompt_is_refused_in_cached_generation(model_for):
    """A prefix reaching past the prompt would need generated tokens to be seen by prompt rows: refused, naming
    the prefix (not the cache: without one it is refused as well)."""
    model = model_for("sdpa", "prefix_lm")
    ids, _, _ = left_padded(pads=(0, 0))
    whole_prompt = model.generate(ids, prefix_lengths=torch.tensor([12, 12]), **GREEDY)
    assert whole_prompt.shape == (2, 20)
    with pytest.raises(ValueError, match="exceed the number of tokens"):
        model.generate(ids, prefix_lengths=torch.tensor([12, 13]), **GREEDY)
    with pytest.raises(ValueError, match="exceed the number of tokens"):
        model.generate(ids, prefix_lengths=torch.tensor([12, 14]), **GREEDY)


def random_prompt_mask(heads, pads=(3, 0), length=12, seed=0):
    """A bool (B, heads, L, L) mask: random visibility, every real token sees itself, padding seen by nobody."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(pads), heads, length, length, generator=g) > 0.5
    mask |= torch.eye(length, dtype=torch.bool)
    for row, pad in enumerate(pads):
        mask[row, :, :pad, :] = False
        mask[row, :, :, :pad] = False
    return mask


@pytest.mark.parametrize("heads", [1, 4], ids=["shared", "per-head"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "recomputed"])
@torch.no_grad()
def test_4d_prompt_mask_in_generate(model_for, heads, use_cache):
    """The prompt keeps the user mask; generated tokens attend causally to every earlier real token."""
    model = model_for("sdpa")
    ids, mask_2d, _ = left_padded(pads=(3, 0))
    prompt_mask = random_prompt_mask(heads)
    out = model.generate(ids, attention_mask=prompt_mask, use_cache=use_cache, **GREEDY)

    total = out.shape[1]
    padding = torch.cat([mask_2d, torch.ones(2, total - 12, dtype=torch.long)], dim=1)
    positions = (padding.cumsum(-1) - 1).clamp(min=0)
    dense = reference_mask(user_mask(prompt_mask), 2, model.config.num_attention_heads, total, padding.bool())
    ref = reference_logits(model, out, dense, positions)
    for row in range(2):  # after EOS a finished row is padded, not predicted
        new = out[row, 12:].tolist()
        upto = new.index(255) + 1 if 255 in new else len(new)
        assert new[:upto] == ref[row, 11 : 11 + upto].argmax(-1).tolist()
    # The user mask matters: plain causal generation differs.
    assert not torch.equal(out, model.generate(ids, attention_mask=mask_2d, **GREEDY))
