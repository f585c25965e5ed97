"""Every strategy x backend x (full forward | prefill + cached decode) against the brute-force reference."""

import pytest
import torch
from transformers import DynamicCache

from qwen3_custom_mask.reference import reference_logits, reference_mask

from conftest import BACKENDS, left_padded
from strategies import CACHEABLE, CASES, step_inputs

ATOL = 1e-4  # tiny model, 12 tokens: far below the ~1e-3 CPU noise seen at 1k tokens


def expected_logits(model, ids, mask, positions, inputs):
    """The reference over the whole sequence, asking each layer's mask_mod element by element.

    Strategies that place tokens themselves (documents) get their own positions, as the model does when
    it is given no position_ids.
    """
    padding = mask.bool()
    strategy = model.mask_strategy
    heads = model.config.num_attention_heads
    context = dict(inputs, padding_mask=padding, num_heads=heads)
    dense = {}
    for layer in range(model.config.num_hidden_layers):
        s = strategy.for_layer(layer)
        if s not in dense:
            dense[s] = reference_mask(s.mask_mod(**context), ids.shape[0], heads, ids.shape[1], padding)
    if strategy.places_tokens:
        positions = strategy.position_ids(**context)
    layer_masks = [dense[strategy.for_layer(layer)] for layer in range(model.config.num_hidden_layers)]
    return reference_logits(model, ids, layer_masks, positions)


def given_positions(model, positions):
    """The position_ids a test passes: none for strategies that place tokens themselves."""
    return None if model.mask_strategy.places_tokens else positions


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_full_forward_matches_reference(model_for, backend, case):
    spec, inputs = CASES[case]
    model = model_for(backend, spec)
    ids, mask, positions = left_padded()
    out = model(ids, attention_mask=mask, position_ids=given_positions(model, positions), **inputs).logits
    ref = expected_logits(model, ids, mask, positions, inputs)
    real = mask.bool()  # padded query rows are unspecified (finite) and skipped
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CACHEABLE)
@torch.no_grad()
def test_prefill_then_cached_decode_matches_reference(model_for, backend, case):
    spec, inputs = CASES[case]
    model = model_for(backend, spec)
    ids, mask, positions = left_padded()
    prefill = 9  # covers every prefix (sample 0: 3 pads + 4), so the cache may hold the prefix
    cache = DynamicCache(config=model.config)
    positions_in = given_positions(model, positions)
    pieces = [
        model(
            ids[:, :prefill],
            attention_mask=mask[:, :prefill],
            position_ids=None if positions_in is None else positions_in[:, :prefill],
            past_key_values=cache,
            use_cache=True,
            **step_inputs(inputs, prefill),
        ).logits
    ]
    for t in range(prefill, ids.shape[1]):
        step = model(
            ids[:, t : t + 1],
            attention_mask=mask[:, : t + 1],
            position_ids=None if positions_in is None else positions_in[:, t : t + 1],
            past_key_values=cache,
            use_cache=True,
            **step_inputs(inputs, t + 1),
        )
        pieces.append(step.logits)
    out = torch.cat(pieces, dim=1)
    ref = expected_logits(model, ids, mask, positions, inputs)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c != "causal"])
@torch.no_grad()
def test_reference_tells_strategies_apart(model_for, case):
    """Guards the tests above: the reference under the causal mask differs from every other strategy's."""
    spec, inputs = CASES[case]
    model = model_for("eager", spec)
    ids, mask, positions = left_padded()
    ref = expected_logits(model, ids, mask, positions, inputs)
    causal = reference_mask(lambda b, h, q, kv: kv <= q, 2, model.config.num_attention_heads, ids.shape[1], mask.bool())
    assert (ref - reference_logits(model, ids, causal, positions))[mask.bool()].abs().max() > 1e-3


def test_every_registered_strategy_has_a_reference_case():
    from qwen3_custom_mask import available_masks

    covered = {name for spec, _ in CASES.values() for name in _names(spec)}
    assert set(available_masks()) - {"tree"} <= covered  # tree has its own tests (test_tree.py)


def _names(spec):
    if isinstance(spec, str):
        return {spec}
    if "name" in spec:
        return {spec["name"]}
    (op, arg), = spec.items()
    subs = arg.values() if op == "layers" else [arg] if op == "not" else arg
    return set().union(*(_names(sub) for sub in subs))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heads", [1, 4], ids=["shared", "per-head"])
@torch.no_grad()
def test_4d_user_mask_matches_reference(model_for, backend, heads):
    """A bool (B, 1|H, L, L) attention_mask replaces the strategy, full forward and cached decode alike."""
    from test_generate import random_prompt_mask

    model = model_for(backend, "bidirectional")  # ignored: the 4D mask decides
    ids, mask, positions = left_padded()
    user = random_prompt_mask(heads)
    full = model(ids, attention_mask=user, position_ids=positions).logits
    ref = reference_logits(model, ids, user.expand(2, 4, 12, 12), positions)
    real = mask.bool()
    torch.testing.assert_close(full[real], ref[real], atol=ATOL, rtol=1e-4)

    # Cached decoding needs rows that never look ahead: keep the random pattern below the diagonal.
    user = user & torch.ones(12, 12, dtype=torch.bool).tril()
    ref = reference_logits(model, ids, user.expand(2, 4, 12, 12), positions)
    cache = DynamicCache(config=model.config)
    prefill = 10
    pieces = [
        model(
            ids[:, :prefill],
            attention_mask=user[:, :, :prefill, :prefill],
            position_ids=positions[:, :prefill],
            past_key_values=cache,
        ).logits
    ]
    for t in range(prefill, 12):  # stock convention: rows of the new tokens against every key so far
        rows = user[:, :, t : t + 1, : t + 1]
        pieces.append(model(ids[:, t : t + 1], attention_mask=rows, position_ids=positions[:, t : t + 1], past_key_values=cache).logits)
    cached = torch.cat(pieces, dim=1)
    torch.testing.assert_close(cached[real], ref[real], atol=ATOL, rtol=1e-4)
