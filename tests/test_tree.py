"""Tree attention: the strategy against the reference, and speculative verification against greedy decoding."""

import pytest
import torch
from transformers import DynamicCache

from qwen3_custom_mask import verify_draft_tree
from qwen3_custom_mask.masks.tree import ancestor_matrix
from qwen3_custom_mask.strategy.reference import reference_logits, reference_mask

from conftest import BACKENDS, left_padded
from strategies import CASES

PARENTS = torch.tensor([-1, 0, -1, 2, 1, 1])  # two roots; node 1 has two children


def test_parents_and_ancestor_matrix_agree():
    matrix = ancestor_matrix(PARENTS)[0]
    assert matrix[4].tolist() == [True, True, False, False, True, False]  # 4 -> 1 -> 0
    assert matrix[3].tolist() == [False, False, True, True, False, False]  # 3 -> 2
    assert torch.equal(ancestor_matrix(matrix)[0], matrix)


@pytest.mark.parametrize(
    "tree,match",
    [
        (torch.tensor([-1, 1]), "earlier draft token"),  # its own parent
        (torch.tensor([-1, 2, 0]), "earlier draft token"),  # a child before its parent
        (torch.tensor([-2]), "earlier draft token"),
        (torch.tensor([[True, True], [False, True]]), "not a tree"),  # an ancestor after its descendant
        (torch.tensor([[False]]), "not a tree"),  # no self
        (torch.tensor([[1, 0], [0, 1]]).bool()[:, :1], "shape"),
        (torch.tensor([[True, False, False], [True, True, False], [False, True, True]]), "not a tree"),  # not closed
        (torch.tensor([0.0]), "dtype"),
    ],
)
def test_a_tree_that_is_not_a_tree_is_refused(tree, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ancestor_matrix(tree)


@pytest.mark.parametrize("backend", BACKENDS)
@torch.no_grad()
def test_tree_strategy_matches_reference_in_one_forward_and_after_a_prefill(model_for, backend):
    model = model_for(backend, "tree")
    g = torch.Generator().manual_seed(3)
    prefix, size = 6, PARENTS.shape[0]
    ids = torch.randint(0, 250, (1, prefix + size), generator=g)
    context = dict(draft_tree=PARENTS, padding_mask=torch.ones(1, prefix + size, dtype=torch.bool))
    strategy = model.mask_strategy
    dense = reference_mask(strategy.mask_mod(**context), 1, 4, prefix + size)
    positions = strategy.position_ids(**context)
    assert positions[0].tolist() == list(range(6)) + [6, 7, 6, 7, 8, 8]  # prefix + depth
    ref = reference_logits(model, ids, dense, positions)

    full = model(ids, draft_tree=PARENTS).logits
    torch.testing.assert_close(full, ref, atol=1e-4, rtol=1e-4)

    cache = DynamicCache(config=model.config)
    model.set_mask_strategy("causal")
    first = model(ids[:, :prefix], past_key_values=cache).logits
    model.set_mask_strategy("tree")
    drafts = model(ids[:, prefix:], draft_tree=PARENTS, past_key_values=cache).logits
    torch.testing.assert_close(torch.cat([first, drafts], 1), ref, atol=1e-4, rtol=1e-4)


VERIFIED = ["causal", "sliding_window", "attention_sinks", "chunked", "prefix_lm", "document", "and", "per_head_window", "layers_cacheable"]
# flex_attention on CPU compiles once per shape (~25 s a case here): two cases cover its single- and per-layer paths.
VERIFIED_ON = [(case, backend, "plain") for case in VERIFIED for backend in BACKENDS
               if backend != "flex_attention" or case in ("sliding_window", "layers_cacheable")]
# A config with a sliding layer (window 4): its window is measured from where each draft really stands.
VERIFIED_ON += [(case, backend, "sliding-layers") for case in ("causal", "attention_sinks", "layers_cacheable") for backend in ("eager", "sdpa")]


def one_row(inputs: dict, length: int) -> dict:
    """The strategy inputs of the conftest batch's second row (no padding), over ``length`` tokens."""
    out = {}
    for name, value in inputs.items():
        value = value[1:2]
        if name == "document_ids":  # tokens past the row continue its last document
            value = torch.cat([value, value[:, -1:].expand(1, max(0, length - value.shape[1]))], 1)[:, :length]
        out[name] = value
    return out


@pytest.mark.parametrize("case,backend,config", VERIFIED_ON)
@torch.no_grad()
def test_verified_tokens_equal_greedy_decoding_under_the_model_strategy(model_for, backend, case, config):
    """The drafts are verified under the model's own mask (tree AND strategy): what greedy decoding of this
    model produces is accepted, and the bonus token is its next token."""
    spec, inputs = CASES[case]
    model = model_for(backend, spec, config)
    prompt = left_padded()[0][1:2]  # 12 tokens, no padding
    greedy = model.generate(prompt, max_new_tokens=8, do_sample=False, **one_row(inputs, 12))[0, 12:]
    wrong = lambda t: (int(t) + 1) % 250  # noqa: E731  a token greedy decoding does not pick here

    cache = DynamicCache()  # full layers to rewind (with config=, sliding layers would trim themselves)
    logits = model(prompt, past_key_values=cache, **one_row(inputs, 12)).logits[0, -1]
    # Round 1: the greedy path g0 -> g1 -> g2 hidden among wrong branches.
    g = greedy.tolist()
    tokens = [wrong(g[0]), g[0], wrong(g[1]), g[1], g[2], wrong(g[2])]
    result = verify_draft_tree(model, cache, logits, tokens, [-1, -1, 1, 1, 3, 3], **one_row(inputs, 12))
    assert result.accepted == [1, 3, 4]
    assert result.tokens.tolist() == g[:4]  # three drafts + the bonus token
    assert cache.get_seq_length() == 12 + 3  # rejected branches are gone from the cache

    # Round 2: the bonus token is the root; its second child is wrong, so only g3 and g4 are accepted.
    result = verify_draft_tree(model, cache, result.next_logits, [g[3], g[4], wrong(g[5])], [-1, 0, 1], **one_row(inputs, 15))
    assert result.tokens.tolist() == g[3:6]
    assert result.accepted == [0, 1]

    # The trimmed cache continues exactly like plain decoding.
    step = model(result.tokens[-1:][None], past_key_values=cache, **one_row(inputs, 18)).logits[0, -1]
    assert int(step.argmax()) == g[6]


def test_tree_is_not_for_generate(model_for):
    model = model_for("sdpa", "tree")
    with pytest.raises(ValueError, match="verify_draft_tree"):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2)


def test_verification_refuses_a_cache_with_sliding_layers(model_for):
    model = model_for("sdpa", "causal", "sliding-layers")
    cache = DynamicCache(config=model.config)
    logits = model(torch.tensor([[1, 2, 3]]), past_key_values=cache).logits[0, -1]
    with pytest.raises(TypeError, match=r"DynamicCache\(\) \(without config="):
        verify_draft_tree(model, cache, logits, [4], [-1])
