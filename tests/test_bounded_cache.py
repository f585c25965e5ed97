"""BoundedCache: generation far past the window keeps memory at the bound and produces the same tokens."""

import pytest
import torch
from transformers import DynamicCache

from qwen3_custom_mask import BoundedCache

from conftest import BACKENDS, left_padded

BOUNDED = {
    "sliding_window": {"name": "sliding_window", "window": 4},
    "attention_sinks": {"name": "attention_sinks", "sinks": 2, "window": 4},
    "chunked": {"name": "chunked", "chunk_size": 5},
    "and": {"and": ["causal", {"name": "sliding_window", "window": 3}]},
    # Every group bounded: the cache keeps the loosest bounds (here sinks 1 + window 5), each layer its own mask.
    "layers": {"layers": {"0": {"name": "sliding_window", "window": 3}, "1": {"name": "attention_sinks", "sinks": 1, "window": 5}}},
}
NEW_TOKENS = 40  # ten times the window


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BOUNDED))
@torch.no_grad()
def test_bounded_generation_equals_unbounded(model_for, backend, case):
    ids, mask, _ = left_padded(pads=(3, 0))
    reference = model_for("sdpa", BOUNDED[case]).generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, past_key_values=DynamicCache()
    )
    model = model_for(backend, BOUNDED[case])
    cache = BoundedCache()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, past_key_values=cache)
    assert torch.equal(out, reference)
    first, last = model.mask_strategy.cache_bounds()
    assert cache.get_seq_length() == 12 + NEW_TOKENS - 1  # every token but the last one was cached...
    assert cache.stored_tokens() == first + last  # ...yet only the bound is stored, left padding never
    assert all(layer.keys.shape[-2] == cache.stored_tokens() for layer in cache.layers)
    assert (cache.layers[0].positions[0] >= 3).all()  # the row with 3 left pads keeps real tokens only


def test_bounded_cache_refuses_unbounded_strategies(model_for):
    model = model_for("sdpa", "prefix_lm")
    with pytest.raises(ValueError, match="BoundedCache cannot be used here.*arbitrarily old tokens"):
        model.generate(torch.tensor([[1, 2, 3]]), prefix_lengths=[2], max_new_tokens=2, past_key_values=BoundedCache())
    model.set_mask_strategy({"layers": {"0": {"name": "sliding_window", "window": 3}, "1": "causal"}})
    with pytest.raises(ValueError, match=r"BoundedCache cannot be used here: layers \[1\] use a strategy that lets a query see arbitrarily old"):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, past_key_values=BoundedCache())


def test_bounded_cache_cannot_be_cropped(model_for):
    model = model_for("sdpa", BOUNDED["sliding_window"])
    cache = BoundedCache()
    model(torch.tensor([[1, 2, 3, 4, 5, 6]]), past_key_values=cache)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(-1)


@pytest.mark.parametrize("case", ["attention_sinks", "chunked"])
@torch.no_grad()
def test_chunked_prefill_whose_first_chunk_is_all_padding(model_for, case):
    """A row's sinks (chunks) count from its first real token even when the first prefill chunk holds only
    its left padding: the cache learns the row's start when the token comes, and stores no padding."""
    ids, mask, _ = left_padded(length=9, pads=(4, 0))
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=255)
    model = model_for("sdpa", BOUNDED[case])
    expected = model.generate(ids, past_key_values=DynamicCache(), **kwargs)
    cache = BoundedCache()
    assert torch.equal(model.generate(ids, past_key_values=cache, prefill_chunk_size=4, **kwargs), expected)
    assert cache.layers[0].starts.tolist() == [4, 0]
    kept = cache.layers[0].positions[0]
    assert (kept[kept >= 0] >= 4).all()  # no padding slot
