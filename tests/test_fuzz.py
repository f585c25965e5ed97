"""Property-based fuzzing against the brute-force reference (hypothesis), along the paths users take.

Each case draws a random strategy (every built-in, random parameters, and/or/not compositions) and a random
left/right-padded batch, then one of four paths:

* forward: config (plain | a sliding layer) x input_ids | inputs_embeds x no cache | dynamic | static |
  bounded cache (prefill + token-by-token decode), compared logit by logit with the reference;
* generate: cache (dynamic | static | bounded) x greedy | beams | assisted (assistant model, prompt lookup)
  x a generation_config with or without a use_cache key x input_ids | inputs_embeds: the tokens of the
  reference's greedy decoding (beams: of recomputing every step), or a refusal exactly when the strategy
  lets a token see a later one (or the cache cannot hold the strategy);
* verify_draft_tree: a random chain or tree holding the greedy path, under a cacheable strategy (config with
  or without a sliding layer): the greedy
  tokens are accepted and the cache continues like plain decoding;
* Trainer: one step with Trainer's default arguments (remove_unused_columns=True): loss and every gradient
  equal the reference's;
* flex blocks: a structured strategy's BlockMask built from its intervals (lengths up to 400, padding, any
  query window) against create_block_mask over the grid: never a block wrongly skipped or wrongly full;
* padding-free packing (TRL's bfd, DataCollatorWithFlattening: restarting position_ids, no mask, no cache):
  each document against the reference on that document alone (a per-row input is refused; bidirectional
  keeps stock's is_causal: false result over the whole row);
* cached decoding after a packed prefill (document strategies): token by token, continuing the last document
  or starting a new one, against the reference over the whole sequence;
* Trainer options that change the loss (label smoothing, gradient accumulation's num_items_in_batch,
  average_tokens_across_devices): the loss of the reference's logits through Trainer's own formula;
* continuous batching (generate_batch under a small engine: split prefills, few pages): each request gets the
  tokens generate() gives it alone; a strategy is refused only if some token of it sees a later one.

The default profile is bounded and derandomized for CI; QWEN3_MASK_FUZZ=long runs 1000 cases over eager,
sdpa and flex_attention (QWEN3_MASK_FUZZ_CASES overrides the count):

    QWEN3_MASK_FUZZ=long python -m pytest -q tests/test_fuzz.py -s
"""

import os
import time

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from transformers import DynamicCache, GenerationConfig, StaticCache, Trainer, TrainingArguments, default_data_collator

from qwen3_custom_mask import BoundedCache, resolve_strategy, verify_draft_tree
from qwen3_custom_mask.strategy.reference import reference_mask

from strategies import expected_logits

LONG = os.environ.get("QWEN3_MASK_FUZZ") == "long"
TOTAL = int(os.environ.get("QWEN3_MASK_FUZZ_CASES", 1000 if LONG else 60))
# Share of the cases per path (forward is cheapest and has the most dimensions).
SHARES = {"forward": 0.4, "generate": 0.3, "verify": 0.1, "trainer": 0.1, "blocks": 0.1,
          "packed": 0.2, "packed_decode": 0.1, "trainer_options": 0.05, "continuous_batching": 0.03}
CASES = {path: max(1, round(TOTAL * share)) for path, share in SHARES.items()}
BACKENDS = ["eager", "sdpa", "flex_attention"] if LONG else ["eager", "sdpa"]
COUNTER = {"cases": 0, "start": time.perf_counter()}
HEADS = 4
if LONG:  # flex compiles per shape on CPU (static shapes); past the limit dynamo would fall back to the math path,
    torch._dynamo.config.recompile_limit = 4096  # which ignores the BlockMask's block indices

small = st.integers(1, 6)
LEAVES = st.one_of(
    st.just("causal"),
    st.just("bidirectional"),
    st.builds(lambda w: {"name": "sliding_window", "window": w}, small),
    st.builds(lambda w: {"name": "sliding_window", "window": w}, st.lists(small, min_size=4, max_size=4)),
    st.builds(lambda s, w: {"name": "attention_sinks", "sinks": s, "window": w}, st.integers(0, 3), small),
    st.builds(lambda c: {"name": "chunked", "chunk_size": c}, small),
    st.builds(lambda w, d, c: {"name": "dilated_sliding_window", "window": w, "dilation": d, "causal": c}, small, st.integers(1, 3), st.booleans()),
    st.builds(lambda t, w, c: {"name": "global_tokens", "tokens": t, "window": w, "causal": c},
              st.lists(st.integers(0, 14), max_size=2), small, st.booleans()),
    st.just("prefix_lm"),
    st.builds(lambda c: {"name": "document", "causal": c}, st.booleans()),
)
SPECS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"and": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"or": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=4,
)
USE_CACHE = st.sampled_from(["default", True, False])  # "default": as users call it (eval: the config's True)
PROFILE = dict(deadline=None, derandomize=not LONG, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def batches(draw, max_batch=3, sides=("left", "right")):
    batch = draw(st.integers(1, max_batch))
    length = draw(st.integers(3, 12))
    side = draw(st.sampled_from(sides))
    pads = [draw(st.integers(0, length - 2)) for _ in range(batch)]
    ids = torch.tensor([[draw(st.integers(0, 249)) for _ in range(length)] for _ in range(batch)])
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate(pads):
        if side == "left":
            mask[row, :pad] = 0
        else:
            mask[row, length - pad :] = 0
    prefix = torch.tensor([draw(st.integers(0, length - pad)) for pad in pads])
    docs = torch.tensor([sorted(draw(st.integers(0, 3)) for _ in range(length)) for _ in range(batch)])
    return ids, mask, side, prefix, docs


def inputs_for(strategy, prefix, docs) -> dict:
    inputs = {"prefix_lengths": prefix, "document_ids": docs}
    return {k: v for k, v in inputs.items() if k in strategy.inputs}


def extended(inputs: dict, length: int) -> dict:
    """Inputs over ``length`` tokens: generated tokens continue the last document."""
    ids = inputs.get("document_ids")
    if ids is None or ids.shape[1] >= length:
        return {k: (v[:, :length] if k == "document_ids" else v) for k, v in inputs.items()}
    return dict(inputs, document_ids=torch.cat([ids, ids[:, -1:].expand(-1, length - ids.shape[1])], 1))


def positions_of(strategy, mask, inputs):
    padding = mask.bool()
    if strategy.places_tokens:
        return strategy.position_ids(**inputs, padding_mask=padding)
    return (mask.cumsum(-1) - 1).clamp(min=0)


def visible(strategy, mask, inputs) -> torch.Tensor:
    """(B, H, L, L) the strategy's mask element by element (every layer group), AND padding."""
    padding = mask.bool()
    batch, length = mask.shape
    dense = torch.zeros(batch, HEADS, length, length, dtype=torch.bool)
    for layer in range(2):
        mask_mod = strategy.for_layer(layer).mask_mod(**inputs, padding_mask=padding, num_heads=HEADS)
        dense |= reference_mask(mask_mod, batch, HEADS, length, padding)
    return dense


def has_empty_real_rows(strategy, mask, inputs) -> bool:
    """A real query row that sees nothing has no defined value (see test_reliability): kept out of here."""
    dense, padding = visible(strategy, mask, inputs), mask.bool()
    return not bool(dense.any(-1)[padding[:, None, :].expand_as(dense[..., 0])].all())


def looks_ahead(strategy, mask, inputs, prompt: int) -> bool:
    """Whether some real token sees a key generated after it (keys past the prompt)."""
    dense, padding = visible(strategy, mask, inputs), mask.bool()
    length = mask.shape[1]
    later = torch.ones(length, length, dtype=torch.bool).triu(1)
    later[:, :prompt] = False
    return bool((dense & later & padding[:, None, :, None]).any())


def counted():
    COUNTER["cases"] += 1


# ----------------------------------------------------------------------------------------------- forward
@settings(max_examples=CASES["forward"], **PROFILE)
@given(spec=SPECS, data=batches(), backend=st.sampled_from(BACKENDS), split=st.integers(1, 11),
       config=st.sampled_from(["plain", "sliding-layers"]), embeds=st.booleans(),
       cache_kind=st.sampled_from(["none", "dynamic", "static", "bounded"]), mode=st.sampled_from(["eval", "train"]),
       use_cache=USE_CACHE)
@torch.no_grad()
def test_forward_paths_match_the_reference(model_for, spec, data, backend, split, config, embeds, cache_kind, mode, use_cache):
    """Without a cache of its own, a whole forward runs in eval and train mode with use_cache left at its
    default (eval: the body makes a cache) or forced on or off."""
    ids, mask, side, prefix, docs = data
    strategy = resolve_strategy(spec)
    inputs = inputs_for(strategy, prefix, docs)
    assume(not has_empty_real_rows(strategy, mask, inputs))
    model = model_for(backend, strategy, config)
    positions = positions_of(strategy, mask, inputs)
    given_positions = None if strategy.places_tokens else positions
    ref = expected_logits(model, ids, mask, positions, inputs)
    padding = mask.bool()
    embed = model.get_input_embeddings()

    def call(start, end, cache):
        tokens = {"inputs_embeds": embed(ids[:, start:end])} if embeds else {"input_ids": ids[:, start:end]}
        pos = None if given_positions is None else given_positions[:, start:end]
        caching = {"use_cache": True} if cache is not None else {} if use_cache == "default" else {"use_cache": use_cache}
        return model(**tokens, attention_mask=mask[:, :end], position_ids=pos, past_key_values=cache,
                     **caching, **extended(inputs, end)).logits

    length = ids.shape[1]
    if "prefix_lengths" in inputs:  # a cached prefix must lie inside the prefill (documented contract)
        split = max(split, int((length - mask.sum(-1) + prefix).max()))
    split = min(split, length)
    if cache_kind == "none" or side == "right" or looks_ahead(strategy, mask, inputs, split):
        model.train(mode == "train")
        try:
            torch.testing.assert_close(call(0, length, None)[padding], ref[padding], atol=1e-4, rtol=1e-4)
        finally:
            model.eval()
    else:
        cache = {"dynamic": lambda: DynamicCache(config=model.config), "static": lambda: StaticCache(config=model.config, max_cache_len=16),
                 "bounded": BoundedCache}[cache_kind]()
        if cache_kind == "bounded" and (strategy.cache_bounds() is None or strategy.for_layer(0) != strategy.for_layer(1)):
            with pytest.raises(ValueError, match="BoundedCache cannot be used"):
                call(0, split, cache)
        else:
            pieces = [call(start, end, cache) for start, end in [(0, split)] + [(t, t + 1) for t in range(split, length)]]
            torch.testing.assert_close(torch.cat(pieces, 1)[padding], ref[padding], atol=1e-4, rtol=1e-4)
    counted()


# ---------------------------------------------------------------------------------------------- generate
def reference_greedy(model, ids, mask, inputs, new_tokens):
    """Greedy decoding that recomputes the reference over the whole sequence at every step."""
    strategy = model.mask_strategy
    for _ in range(new_tokens):
        inputs_now = extended(inputs, ids.shape[1])
        logits = expected_logits(model, ids, mask, positions_of(strategy, mask, inputs_now), inputs_now)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], 1)
    return ids


def until_eos(row: list[int], eos: int = 255) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


@settings(max_examples=CASES["generate"], **PROFILE)
@given(spec=SPECS, data=batches(sides=("left",)), backend=st.sampled_from(BACKENDS),
       config=st.sampled_from(["plain", "sliding-layers"]), decoding=st.sampled_from(["greedy", "beams", "assistant_model", "prompt_lookup"]),
       cache_kind=st.sampled_from(["dynamic", "static", "bounded"]), use_cache_key=st.booleans(), embeds=st.booleans(),
       new_tokens=st.integers(1, 5))
@torch.no_grad()
def test_generation_paths_match_the_reference(model_for, spec, data, backend, config, decoding, cache_kind, use_cache_key, embeds, new_tokens):
    ids, mask, _, prefix, docs = data
    if decoding in ("assistant_model", "prompt_lookup"):  # assisted decoding is batch 1 in transformers
        ids, mask, prefix, docs = ids[:1], mask[:1], prefix[:1], docs[:1]
        cache_kind, embeds = "dynamic", False
    strategy = resolve_strategy(spec)
    inputs = inputs_for(strategy, prefix, docs)
    prompt = ids.shape[1]
    model = model_for(backend, strategy, config)
    total_mask = torch.cat([mask, torch.ones(mask.shape[0], new_tokens, dtype=mask.dtype)], 1)
    assume(not has_empty_real_rows(strategy, total_mask, extended(inputs, prompt + new_tokens)))
    saved = model.generation_config
    model.generation_config = GenerationConfig(bos_token_id=254, eos_token_id=255, pad_token_id=0, **({"use_cache": True} if use_cache_key else {}))
    try:
        options = dict(max_new_tokens=new_tokens, do_sample=False, attention_mask=mask, **inputs)
        if decoding == "beams":
            options["num_beams"] = 2
        elif decoding == "assistant_model":
            options["assistant_model"] = model
        elif decoding == "prompt_lookup":
            options["prompt_lookup_num_tokens"] = 2
        if cache_kind == "static":
            options["cache_implementation"] = "static"
        elif cache_kind == "bounded":
            options["past_key_values"] = BoundedCache()
        given_ = {"inputs_embeds": model.get_input_embeddings()(ids)} if embeds else {"input_ids": ids}
        ahead = looks_ahead(strategy, total_mask, extended(inputs, prompt + new_tokens), prompt)
        unbounded = cache_kind == "bounded" and (strategy.cache_bounds() is None or strategy.for_layer(0) != strategy.for_layer(1))
        if ahead or unbounded:
            with pytest.raises(ValueError, match="attend to tokens generated after it|BoundedCache cannot be used"):
                model.generate(**given_, **options)
        else:
            out = model.generate(**given_, **options)
            out = out if embeds else out[:, prompt:]
            if decoding == "beams":
                recompute = {k: v for k, v in options.items() if k not in ("past_key_values", "cache_implementation")}
                expected = model.generate(ids, **recompute, use_cache=False)[:, prompt:]
            else:
                expected = reference_greedy(model, ids, mask, inputs, new_tokens)[:, prompt:]
            for row in range(ids.shape[0]):
                got, want = until_eos(out[row].tolist()), until_eos(expected[row].tolist())
                assert got == want[: len(got)] and len(got) == len(want), (got, want)
    finally:
        model.generation_config = saved
    counted()


# ------------------------------------------------------------------------------------- verify_draft_tree
CACHEABLE_LEAVES = st.one_of(
    st.just("causal"),
    st.builds(lambda w: {"name": "sliding_window", "window": w}, small),
    st.builds(lambda s, w: {"name": "attention_sinks", "sinks": s, "window": w}, st.integers(0, 3), small),
    st.builds(lambda c: {"name": "chunked", "chunk_size": c}, small),
    st.builds(lambda w, d: {"name": "dilated_sliding_window", "window": w, "dilation": d}, small, st.integers(1, 3)),
    st.just("prefix_lm"),
    st.just("document"),
)
CACHEABLE_SPECS = st.one_of(CACHEABLE_LEAVES, st.builds(lambda xs: {"and": xs}, st.lists(CACHEABLE_LEAVES, min_size=2, max_size=3)))


@settings(max_examples=CASES["verify"], **PROFILE)
@given(spec=CACHEABLE_SPECS, backend=st.sampled_from(BACKENDS), length=st.integers(3, 10), seed=st.integers(0, 2**16),
       chain=st.booleans(), depth=st.integers(1, 4), config=st.sampled_from(["plain", "sliding-layers"]))
@torch.no_grad()
def test_draft_tree_verification_accepts_the_greedy_path(model_for, spec, backend, length, seed, chain, depth, config):
    strategy = resolve_strategy(spec)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (1, length), generator=g)
    mask = torch.ones(1, length, dtype=torch.long)
    inputs = inputs_for(strategy, torch.tensor([int(torch.randint(0, length + 1, (1,), generator=g))]),
                        torch.randint(0, 3, (1, length), generator=g).sort(-1).values)
    model = model_for(backend, strategy, config)
    greedy = reference_greedy(model, ids, mask, inputs, depth + 1)[0, length:].tolist()
    cache = DynamicCache()
    logits = model(ids, past_key_values=cache, **inputs).logits[0, -1]
    # The greedy path as a chain, or hidden in a tree among wrong siblings.
    tokens, parents, last = [], [], -1
    for step in range(depth):
        if not chain:  # a wrong sibling before each greedy token
            tokens.append((greedy[step] + 1) % 250)
            parents.append(last)
        tokens.append(greedy[step])
        parents.append(last)
        last = len(tokens) - 1
    result = verify_draft_tree(model, cache, logits, tokens, parents, **inputs)
    assert result.tokens.tolist() == greedy[: depth + 1]
    assert cache.get_seq_length() == length + depth
    step = model(result.tokens[-1:][None], past_key_values=cache, **extended(inputs, length + depth + 1)).logits[0, -1]
    want = reference_greedy(model, ids, mask, inputs, depth + 2)[0, -1]
    assert int(step.argmax()) == int(want)
    counted()


# --------------------------------------------------------------------------------------------- Trainer
@settings(max_examples=CASES["trainer"], **PROFILE)
@given(spec=SPECS, data=batches(max_batch=2, sides=("right",)), backend=st.sampled_from(["eager", "sdpa"]))
def test_a_trainer_step_matches_the_reference(model_for, tmp_path_factory, spec, data, backend):
    """Trainer's default arguments, a datasets.Dataset of the strategy's columns: loss and gradients."""
    from datasets import Dataset

    ids, mask, _, prefix, docs = data
    strategy = resolve_strategy(spec)
    inputs = inputs_for(strategy, prefix, docs)
    assume(not has_empty_real_rows(strategy, mask, inputs))
    model = model_for(backend, strategy)
    labels = torch.where(mask.bool(), ids, -100)
    columns = {"input_ids": ids, "attention_mask": mask, "labels": labels, **inputs}
    if not strategy.places_tokens:
        columns["position_ids"] = positions_of(strategy, mask, inputs)
    dataset = Dataset.from_dict({k: v.tolist() for k, v in columns.items()})
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("trainer")), per_device_train_batch_size=ids.shape[0],
                             max_steps=1, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(columns) <= set(batch), sorted(set(columns) - set(batch))
    model.train()
    try:
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad()
        ref_logits = expected_logits(model, ids, mask, positions_of(strategy, mask, inputs), inputs)
        expected = model.loss_function(logits=ref_logits, labels=labels, vocab_size=model.config.vocab_size)
        expected.backward()
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    finally:
        model.zero_grad()
        model.eval()
    counted()


STRUCTURED = st.one_of(
    st.just("causal"),
    st.just("bidirectional"),
    st.builds(lambda w: {"name": "sliding_window", "window": w}, st.integers(1, 300)),
    st.builds(lambda c: {"name": "chunked", "chunk_size": c}, st.integers(1, 300)),
    st.builds(lambda s, w: {"name": "attention_sinks", "sinks": s, "window": w}, st.integers(0, 200), st.integers(1, 300)),
    st.just("prefix_lm"),
    st.builds(lambda c: {"name": "document", "causal": c}, st.booleans()),
)
STRUCTURED_SPECS = st.recursive(STRUCTURED, lambda inner: st.one_of(
    st.builds(lambda xs: {"and": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda xs: {"or": xs}, st.lists(inner, min_size=1, max_size=3))), max_leaves=3)


@settings(max_examples=CASES["blocks"], **PROFILE)
@given(spec=STRUCTURED_SPECS, data=st.data())
def test_fuzz_flex_blocks_from_structure(spec, data):
    from qwen3_custom_mask.strategy.lowering import block_mask

    from test_block_masks import dense_blocks

    batch, length = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 400))
    padding = torch.ones(batch, length, dtype=torch.bool)
    for row in range(batch):
        pad = data.draw(st.integers(0, length - 1))
        if data.draw(st.booleans()):
            padding[row, :pad] = False
        else:
            padding[row, length - pad:] = False
    starts = [sorted(data.draw(st.lists(st.integers(1, length), max_size=4))) for _ in range(batch)]
    docs = torch.stack([torch.bucketize(torch.arange(length), torch.tensor(s, dtype=torch.long), right=True) for s in starts])
    prefix = torch.tensor([data.draw(st.integers(0, int(real))) for real in padding.sum(-1)])  # inside each row
    q_offset = data.draw(st.integers(0, length - 1))
    q_length = data.draw(st.integers(1, length - q_offset))
    strategy = resolve_strategy(spec)
    context = dict(inputs_for(strategy, prefix, docs), padding_mask=padding, num_heads=HEADS)
    mask_mod, intervals = strategy.mask_mod(**context), strategy.key_intervals(**context)
    assert intervals is not None
    window = dict(batch_size=batch, num_heads=HEADS, q_offset=q_offset, q_length=q_length, kv_offset=0,
                  kv_length=length, padding_mask=padding, device="cpu")
    (partial, full), (want_partial, want_full) = dense_blocks(block_mask(mask_mod, intervals=intervals, **window)), \
        dense_blocks(block_mask(mask_mod, **window))
    assert not (full & ~want_full).any(), "a block marked full has masked pairs"
    assert ((partial | full) >= (want_partial | want_full)).all(), "a block with visible pairs was skipped"
    counted()


def teardown_module(module):
    minutes = (time.perf_counter() - COUNTER["start"]) / 60
    print(f"\nfuzz profile {'long' if LONG else 'bounded'}: {COUNTER['cases']} cases compared with the reference "
          f"({CASES}), {minutes:.1f} min, backends {BACKENDS}")


# ------------------------------------------------------------------------------------- padding-free packing
def packed_row(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (1, sum(lengths)), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    documents = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    return ids, positions, documents


def each_document_alone(model, ids, lengths, strategy):
    """The reference run on each document of a packed row alone, at its own positions, concatenated; None where
    some real row of a document sees nothing (no defined value)."""
    pieces, start = [], 0
    for n in lengths:
        alone = ids[:, start : start + n]
        alone_inputs = {"document_ids": torch.zeros_like(alone)} if "document_ids" in strategy.inputs else {}
        if has_empty_real_rows(strategy, torch.ones_like(alone), alone_inputs):
            return None
        pieces.append(expected_logits(model, alone, torch.ones_like(alone), torch.arange(n)[None], alone_inputs))
        start += n
    return torch.cat(pieces, 1)


DOCUMENT_SPECS = st.one_of(
    st.just("document"),
    st.builds(lambda w: {"and": ["document", {"name": "sliding_window", "window": w}]}, small),
    st.builds(lambda s, w: {"and": ["document", {"name": "attention_sinks", "sinks": s, "window": w}]}, st.integers(0, 2), small),
    st.builds(lambda c: {"and": ["document", {"name": "chunked", "chunk_size": c}]}, small),
    st.builds(lambda t, w: {"and": ["document", {"name": "global_tokens", "tokens": t, "window": w}]}, st.lists(st.integers(0, 3), max_size=2), small),
)


@settings(max_examples=CASES["packed"], **PROFILE)
@given(spec=st.one_of(SPECS, DOCUMENT_SPECS), lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4), backend=st.sampled_from(BACKENDS),
       config=st.sampled_from(["plain", "sliding-layers"]), seed=st.integers(0, 2**16), mode=st.sampled_from(["eval", "train"]),
       use_cache=USE_CACHE, ones_mask=st.booleans(), pads=st.integers(0, 2), pad_position=st.sampled_from([0, 1]))
@example(spec={"and": ["document", {"name": "attention_sinks", "sinks": 1, "window": 2}]}, lengths=[5, 6], backend="sdpa",
         config="plain", seed=0, mode="eval", use_cache="default", ones_mask=False, pads=0, pad_position=0)  # fifth review
@example(spec={"and": ["document", {"name": "chunked", "chunk_size": 2}]}, lengths=[6], backend="sdpa", config="plain", seed=0,
         mode="eval", use_cache="default", ones_mask=True, pads=1, pad_position=0)  # generate()'s left padding, one prompt
@torch.no_grad()
def test_padding_free_packed_rows_match_each_document_alone(model_for, spec, lengths, backend, config, seed, mode, use_cache,
                                                            ones_mask, pads, pad_position):
    """Restarting position_ids in train and eval mode, use_cache left at its default or forced, with or without an
    attention_mask (all ones, or left padding at generate()'s positions). Each document alone where stock's packed
    detection applies (no cache, no mask) and, for a strategy with `document`, always; otherwise stock's meaning:
    the whole row."""
    strategy = resolve_strategy(spec)
    ids, positions, documents = packed_row(lengths, seed)
    ids, positions = (torch.cat([torch.full((1, pads), fill), t], 1) for fill, t in ((255, ids), (pad_position, positions)))
    documents = torch.cat([torch.zeros(1, pads, dtype=torch.long), documents], 1)
    ones = torch.ones_like(ids)
    ones[:, :pads] = 0
    ones_mask = ones_mask or pads > 0
    model = model_for(backend, strategy, config)
    extra = {"prefix_lengths": torch.tensor([1])} if "prefix_lengths" in strategy.inputs else {}
    call = dict(input_ids=ids, position_ids=positions, **extra)
    if use_cache != "default":
        call["use_cache"] = use_cache
    if ones_mask:
        call["attention_mask"] = ones
    detected = not ones_mask and (use_cache is False or (use_cache == "default" and not model.config.use_cache))
    per_row_input = bool(set(strategy.inputs) - {"document_ids"})
    documents_declared = "document_ids" in strategy.inputs and not per_row_input
    model.train(mode == "train")
    try:
        if per_row_input and detected and len(lengths) > 1:  # a per-row input cannot be read per document
            with pytest.raises(ValueError, match="position_ids restart inside a row"):
                model(**call)
            counted()
            return
        inputs = {**extra, **({"document_ids": documents} if "document_ids" in strategy.inputs else {})}
        whole_row = strategy.flash_form() == {"is_causal": False} or not (detected or documents_declared) or \
            (len(lengths) == 1 and not pads)
        if whole_row:  # bidirectional keeps stock's whole-row result; so does a cache or mask without `document`
            if "document_ids" in strategy.inputs and len(lengths) > 1:
                inputs = {**extra, "document_ids": torch.zeros_like(documents)}  # one row, read as one document
            assume(not has_empty_real_rows(strategy, ones, inputs))
            ref = expected_logits(model, ids, ones, positions, inputs)
        else:
            ref = each_document_alone(model, ids[:, pads:], lengths, strategy)
            assume(ref is not None)
        got = model(**call).logits
        real = ones.bool()[0]
        torch.testing.assert_close(got[:, real], ref if whole_row is False else ref[:, real], atol=1e-4, rtol=1e-4)
    finally:
        model.eval()
    counted()




@settings(max_examples=CASES["packed_decode"], **PROFILE)
@given(spec=DOCUMENT_SPECS, lengths=st.lists(st.integers(1, 5), min_size=2, max_size=4), backend=st.sampled_from(BACKENDS),
       split=st.integers(1, 19), cache_kind=st.sampled_from(["default", "dynamic", "static"]), seed=st.integers(0, 2**16))
@example(spec={"and": ["document", {"name": "chunked", "chunk_size": 2}]}, lengths=[5, 6], backend="sdpa", split=11,
         cache_kind="default", seed=0)
@torch.no_grad()
def test_cached_decoding_after_a_packed_prefill_keeps_the_documents(model_for, spec, lengths, backend, split, cache_kind, seed):
    """Prefill part of a packed row with restarting positions (into the cache an eval forward makes by default, or
    a given one), then one token at a time with its own position (continuing a document, or 0: a new one); every
    step against each document alone."""
    strategy = resolve_strategy(spec)
    ids, positions, documents = packed_row(lengths, seed)
    length = ids.shape[1]
    split = min(split, length - 1)
    model = model_for(backend, strategy)
    if cache_kind == "default":  # use_cache left alone: the body makes the cache and returns it
        out = model(ids[:, :split], position_ids=positions[:, :split])
        cache = out.get("cache", out.get("past_key_values"))
        assert cache is not None, (model.config.use_cache, model.generation_config)
        pieces = [out.logits]
    else:
        cache = DynamicCache(config=model.config) if cache_kind == "dynamic" else StaticCache(config=model.config, max_cache_len=24)
        pieces = [model(ids[:, :split], position_ids=positions[:, :split], cache=cache, use_cache=True).logits]
    for t in range(split, length):
        pieces.append(model(ids[:, t : t + 1], position_ids=positions[:, t : t + 1], cache=cache, use_cache=True).logits)
    ref = each_document_alone(model, ids, lengths, strategy)  # every part counts from its document's start
    assume(ref is not None)
    torch.testing.assert_close(torch.cat(pieces, 1), ref, atol=1e-4, rtol=1e-4)
    counted()


# ------------------------------------------------------------------------------------ Trainer loss options
@settings(max_examples=CASES["trainer_options"], **PROFILE)
@given(spec=SPECS, data=batches(max_batch=2, sides=("right",)),
       option=st.sampled_from(["label_smoothing", "gradient_accumulation", "average_tokens"]))
def test_trainer_loss_options_match_the_reference(model_for, tmp_path_factory, spec, data, option):
    from datasets import Dataset
    from transformers.trainer_pt_utils import LabelSmoother

    ids, mask, _, prefix, docs = data
    strategy = resolve_strategy(spec)
    inputs = inputs_for(strategy, prefix, docs)
    assume(not has_empty_real_rows(strategy, mask, inputs))
    model = model_for("sdpa", strategy)
    labels = torch.where(mask.bool(), ids, -100)
    assume(bool((labels[:, 1:] != -100).any()))
    columns = {"input_ids": ids, "attention_mask": mask, "labels": labels, **inputs}
    if not strategy.places_tokens:
        columns["position_ids"] = positions_of(strategy, mask, inputs)
    settings_for = {"label_smoothing": dict(label_smoothing_factor=0.1), "gradient_accumulation": dict(gradient_accumulation_steps=2),
                    "average_tokens": dict(average_tokens_across_devices=True)}[option]
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("options")), per_device_train_batch_size=ids.shape[0],
                             max_steps=1, report_to="none", use_cpu=True, **settings_for)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({k: v.tolist() for k, v in columns.items()}),
                      data_collator=default_data_collator)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    try:
        with torch.no_grad():
            ref_logits = expected_logits(model, ids, mask, positions_of(strategy, mask, inputs), inputs)
            counted_tokens = int((labels[:, 1:] != -100).sum())
            if option == "label_smoothing":
                loss = trainer.compute_loss(model, batch)
                expected = LabelSmoother(epsilon=0.1)({"logits": ref_logits}, labels, shift_labels=True)
            else:  # num_items_in_batch as Trainer counts it over the accumulated batches (twice this one)
                items = torch.tensor(2 * counted_tokens if option == "gradient_accumulation" else counted_tokens)
                loss = trainer.compute_loss(model, batch, num_items_in_batch=items)
                expected = model.loss_function(logits=ref_logits, labels=labels, vocab_size=model.config.vocab_size, num_items_in_batch=items)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    finally:
        model.eval()
    counted()


# ------------------------------------------------------------------------------------ continuous batching
@settings(max_examples=CASES["continuous_batching"], **PROFILE)
@given(spec=st.one_of(st.just("causal"), SPECS), lengths=st.lists(st.integers(1, 10), min_size=1, max_size=4), budget=st.sampled_from([4, 8, 16]),
       seed=st.integers(0, 2**16))
@torch.no_grad()
def test_continuous_batching_serves_causal_and_refuses_the_rest(model_for, spec, lengths, budget, seed):
    import inspect

    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    strategy = resolve_strategy(spec)
    model = model_for("sdpa", strategy)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 250, (n,), generator=g).tolist() for n in lengths]
    size = {"page_size": 16} if "page_size" in inspect.signature(ContinuousBatchingConfig).parameters else {"block_size": 16}
    engine = ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=budget, **size)
    config = GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    run = lambda: model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=engine, warmup=False)
    probe = torch.ones(1, 12, dtype=torch.long)
    probe_inputs = inputs_for(strategy, torch.tensor([6]), torch.zeros(1, 12, dtype=torch.long))
    assume(not has_empty_real_rows(strategy, probe, probe_inputs))  # a row that sees nothing has no defined value
    sees_later = bool((visible(strategy, probe, probe_inputs) & torch.ones(12, 12, dtype=torch.bool).triu(1)).any())
    try:
        out = run()
    except ValueError as err:  # refused: only a strategy under which some token sees a later one
        assert "continuous batching" in str(err) and sees_later, err
    else:
        assert not sees_later or "prefix_lengths" not in strategy.inputs
        got = [out[key].generated_tokens for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]
        for prompt, tokens in zip(prompts, got):
            row = torch.tensor([prompt])  # an explicit mask: a token equal to the pad id is no padding here
            alone = model.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=3, do_sample=False,
                                   eos_token_id=None, pad_token_id=0, **inputs_for(strategy, torch.tensor([len(prompt)]), torch.zeros_like(row)))
            assert alone[0, len(prompt):].tolist() == tokens, (spec, prompt)
    counted()
