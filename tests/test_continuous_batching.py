"""transformers' continuous batching (generate_batch, init_continuous_batching: the engine behind `transformers serve
--continuous-batching`). The default strategy runs through it exactly as stock does; every cacheable strategy gets
its own masks in the engine's packed layout and gives each request the tokens generate() gives it alone, under a
small engine (prefills split across forwards, few pages, requests arriving while others decode); a strategy the
paged cache cannot honour is refused in one line, never served with the engine's causal masks."""

import inspect

import pytest
import torch
from transformers import GenerationConfig, Qwen3ForCausalLM

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.model.compat import paged_layout_known
from qwen3_custom_mask.cli.tiny import save_tiny_checkpoint

if not hasattr(Qwen3ForCausalLM, "generate_batch"):
    pytest.skip("this transformers has no continuous batching", allow_module_level=True)

SLIDING = dict(layer_types=["sliding_attention", "full_attention"], use_sliding_window=True, sliding_window=3)
PROMPTS = [[5, 17, 33, 2, 9], [61, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 40], [3, 4], [100, 101, 102, 103, 104, 105]]


def small_engine(budget=8):
    """Few cache pages and a token budget that splits prefills: the scheduler's real conditions, and fast on CPU."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    fields = inspect.signature(ContinuousBatchingConfig).parameters
    size = {"page_size": 16} if "page_size" in fields else {"block_size": 16}
    return ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=budget, **size)


def run_batch(model, max_new_tokens=5, budget=8):
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate_batch(inputs=PROMPTS, generation_config=config, continuous_batching_config=small_engine(budget), warmup=False)
    return [out[key].generated_tokens for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]


@pytest.fixture(scope="module", params=["plain", "sliding-layers"])
def engine_checkpoint(request, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp(request.param), **({} if request.param == "plain" else SLIDING))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_causal_continuous_batching_equals_stock_and_generate(engine_checkpoint, backend):
    """Every request failed before ('PagedAttentionCache' object has no attribute 'get_seq_length') and
    generate_batch returned empty token lists."""
    stock = Qwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation=backend).eval()
    custom = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation=backend).eval()
    if not paged_layout_known() and custom.model.has_sliding_layers:
        with pytest.raises(ValueError, match="not proven right for a config with sliding layers"):
            run_batch(custom)
        return
    tokens, expected = run_batch(custom), run_batch(stock)
    if not paged_layout_known() and expected != run_batch(stock):  # an older engine: stock's own tokens vary by schedule
        pytest.skip("this transformers' engine gives stock different tokens from run to run (upstream)")
    assert tokens == expected
    assert all(len(t) == 5 for t in tokens)
    if paged_layout_known():  # older engines' split prefills differ from generate() for stock too (upstream)
        assert tokens == [alone(custom, prompt) for prompt in PROMPTS]


needs_layout = pytest.mark.skipif(not paged_layout_known(), reason="an older engine: the 'causal' strategy only (tested below)")

CACHEABLE = [
    {"name": "sliding_window", "window": 2},
    {"name": "sliding_window", "window": [1, 2, 3, 4]},
    {"name": "attention_sinks", "sinks": 1, "window": 2},
    {"name": "chunked", "chunk_size": 3},
    {"name": "dilated_sliding_window", "window": 4, "dilation": 2},
    {"name": "global_tokens", "tokens": [1], "window": 2},
    "document",
    {"and": ["prefix_lm", {"name": "sliding_window", "window": 3}]},  # causal inside the window: nothing looks ahead
    {"or": [{"name": "sliding_window", "window": 2}, {"name": "chunked", "chunk_size": 4}]},
    {"layers": {"0": "causal", "1": {"name": "attention_sinks", "sinks": 1, "window": 2}}},
]


def alone(model, prompt, max_new_tokens=5):
    row = torch.tensor([prompt])  # an explicit mask: a token equal to the pad id is no padding here
    out = model.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@needs_layout
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("spec", CACHEABLE, ids=lambda s: str(s)[:50])
@torch.no_grad()
def test_every_cacheable_strategy_gives_each_request_its_generate_tokens(engine_checkpoint, backend, spec):
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation=backend).eval()
    model.set_mask_strategy(spec)
    tokens = run_batch(model, budget=8)
    assert tokens == [alone(model, prompt) for prompt in PROMPTS]
    if spec != "document":  # a prompt is one document: causal's tokens, by definition
        model.set_mask_strategy("causal")
        assert tokens != run_batch(model, budget=8), "the strategy changed the tokens (the test can fail)"


SHARED_BEGINNINGS = [[5, 17, 33, 2, 9], [5, 17, 33, 2, 9, 4, 4], [9, 10, 11, 12, 13, 14, 15, 16], [3, 4], [5, 17, 33]]


@needs_layout
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("spec", ["prefix_lm", {"layers": {"0": "prefix_lm", "1": "causal"}}], ids=["prefix_lm", "per-layer"])
@torch.no_grad()
def test_a_strategy_that_reads_the_prompt_as_a_whole_is_served_whole(engine_checkpoint, backend, spec):
    """prefix_lm (the prompt is the prefix, as generate() takes it): each prompt scheduled whole, in one forward,
    with no pages shared between prompts that begin alike, under a budget that would split them."""
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation=backend).eval()
    model.set_mask_strategy(spec)
    config = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate_batch(inputs=SHARED_BEGINNINGS, generation_config=config, continuous_batching_config=small_engine(9),
                               warmup=False)
    tokens = [out[key].generated_tokens for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]
    assert tokens == [alone(model, prompt) for prompt in SHARED_BEGINNINGS]
    model.set_mask_strategy("causal")
    assert tokens != [alone(model, prompt) for prompt in SHARED_BEGINNINGS], "prefix_lm changed nothing (the test can fail)"


@needs_layout
@torch.no_grad()
def test_a_whole_prompt_longer_than_the_budget_fails_alone(engine_checkpoint):
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy("prefix_lm")
    config = GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    prompts = [PROMPTS[0], list(range(1, 21)), PROMPTS[1]]
    out = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small_engine(8), warmup=False)
    results = [out[key] for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]
    assert "This prompt has 20 tokens" in results[1].error and "max_batch_tokens" in results[1].error
    assert "\n" not in results[1].error
    assert [results[0].generated_tokens, results[2].generated_tokens] == [alone(model, PROMPTS[0], 3), alone(model, PROMPTS[1], 3)]


@needs_layout
def test_only_whole_prompt_strategies_change_the_engine_settings(engine_checkpoint):
    from qwen3_custom_mask.model.scheduling import WHOLE_PROMPT

    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    for spec, scheduler in (("causal", "fifo"), ({"name": "sliding_window", "window": 2}, "fifo"), ("prefix_lm", WHOLE_PROMPT)):
        model.set_mask_strategy(spec)
        manager = model.init_continuous_batching(continuous_batching_config=small_engine())
        assert manager.continuous_batching_config.scheduler_type == scheduler
        assert manager.continuous_batching_config.allow_block_sharing is (scheduler == "fifo")


@needs_layout
@pytest.mark.parametrize("spec", [{"name": "attention_sinks", "sinks": 1, "window": 2}, "prefix_lm"], ids=["sinks", "prefix_lm"])
@torch.no_grad()
def test_requests_arriving_while_others_decode(engine_checkpoint, spec):
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy(spec)
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=small_engine(12 if spec == "prefix_lm" else 8))
    manager.start()
    try:
        first = manager.add_request(PROMPTS[2], max_new_tokens=6, streaming=True)
        next(iter(manager.request_id_iter(first)))  # the first request has started decoding
        later = [manager.add_request(prompt, max_new_tokens=6) for prompt in PROMPTS[:2]]
        results = {}
        while len(results) < 3:
            result = manager.get_result(timeout=30)
            assert result is not None, "the engine stopped"
            if result.is_finished():
                results[result.request_id] = result.generated_tokens
    finally:
        manager.stop(block=True, timeout=30)
    assert results[first] == alone(model, PROMPTS[2], 6)
    for request_id, prompt in zip(later, PROMPTS[:2]):
        assert results[request_id] == alone(model, prompt, 6)


@needs_layout
@torch.no_grad()
def test_a_look_ahead_past_the_start_up_probe_is_refused_at_the_step_that_meets_it(engine_checkpoint):
    """A non-causal global token at position 100 sees every later token: generate_batch must not serve it with
    the cache (it served other tokens than use_cache=False)."""
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy({"name": "global_tokens", "tokens": [100], "window": 1, "causal": False})
    config = GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate_batch(inputs=[list(range(1, 106))], generation_config=config,
                               continuous_batching_config=small_engine(budget=128), warmup=False)
    assert all(out[key].generated_tokens in ([], None) or len(out[key].generated_tokens) < 3 for key in out)
    from qwen3_custom_mask.model.paged import refuse_cached_look_back

    context = dict(padding_mask=torch.ones(1, 106, dtype=torch.bool), num_heads=4, training=False)
    with pytest.raises(ValueError, match="lets a token see tokens generated after it.*cached position 100"):
        mask_mods = [group.mask_mod(**context) for group, _ in model.model.mask_groups]
        refuse_cached_look_back(model.model, mask_mods, [105], [106], "cpu")


@needs_layout
@pytest.mark.parametrize("spec", ["bidirectional", {"name": "global_tokens", "tokens": [1], "window": 2, "causal": False},
                                  {"name": "global_tokens", "tokens": [40], "window": 2, "causal": False}])
def test_a_strategy_the_paged_cache_cannot_honour_is_refused_at_start(engine_checkpoint, spec):
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy(spec)
    name = spec if isinstance(spec, str) else spec["name"]
    for start in (lambda: run_batch(model), lambda: model.init_continuous_batching()):
        with pytest.raises(ValueError, match=f"{name!r} lets a token see tokens generated after it.*export.*use_cache=False") as err:
            start()
        assert "\n" not in str(err.value)


@torch.no_grad()
def test_a_ready_mask_dict_the_model_did_not_build_replaces_a_strategy_only_with_a_word(engine_checkpoint, caplog):
    """Stock's meaning (used as it is, tests/test_dropin.py), but never silently under another strategy."""
    import logging

    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="eager").eval()
    ids = torch.tensor([PROMPTS[0]])
    ready = {t: torch.zeros(1, 1, ids.shape[1], ids.shape[1]) for t in set(model.config.layer_types)}
    model.set_mask_strategy({"name": "sliding_window", "window": 2})
    with caplog.at_level(logging.WARNING):
        model(ids, attention_mask=ready)
    assert "replaces the mask strategy 'sliding_window'" in caplog.text


@pytest.mark.skipif(paged_layout_known(), reason="this engine serves every cacheable strategy (tested above)")
def test_an_older_engine_refuses_every_other_strategy_in_one_line(engine_checkpoint):
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy({"name": "sliding_window", "window": 2})
    expected = ("not proven right for a config with sliding layers" if model.model.has_sliding_layers
                else "serves the 'causal' strategy only.*'sliding_window'")
    with pytest.raises(ValueError, match=expected):
        run_batch(model)


@needs_layout
@torch.no_grad()
def test_whole_prompts_survive_the_engine_running_out_of_pages(engine_checkpoint):
    """Few pages: the engine soft-resets requests (frees their cache, requeues prompt + generated tokens as a new
    prompt read from position 0). The prompt is read whole again and the generated tokens after it, causally, as
    generate() reads them (they had become part of the bidirectional prefix), and a requeue longer than the budget
    no longer fails every request."""
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy("prefix_lm")
    prompts = [[5, 17, 33, 2, 9, 11, 12, 13, 14, 15], [61, 7, 8, 9, 10, 20, 30, 40, 50, 60], [9, 10, 11, 12, 13, 14, 15, 16, 40, 41]]
    config = GenerationConfig(max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    for engine in (dict(num_blocks=6, max_batch_tokens=64), dict(num_blocks=4, max_batch_tokens=12)):
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        size = {"page_size": 16} if "page_size" in inspect.signature(ContinuousBatchingConfig).parameters else {"block_size": 16}
        out = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=ContinuousBatchingConfig(**engine, **size),
                                   warmup=False)
        tokens = [out[key].generated_tokens for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]
        assert tokens == [alone(model, prompt, 20) for prompt in prompts], engine


@needs_layout
def test_whole_prompt_limits_are_one_line_each(engine_checkpoint):
    """A persistent manager made for another strategy, and several sequences per prompt (the engine reads a forked
    prompt in two forwards): refused, never served with split prompts."""
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    config = GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate_batch(inputs=PROMPTS[:2], generation_config=config, continuous_batching_config=small_engine(), persistent_manager=True,
                         warmup=False)
    try:
        model.set_mask_strategy("prefix_lm")
        with pytest.raises(ValueError, match="persistent manager.*destroy_cached_continuous_batching_manager"):
            model.init_continuous_batching()
    finally:
        model.destroy_cached_continuous_batching_manager()
    forks = GenerationConfig(max_new_tokens=3, do_sample=True, top_k=1, eos_token_id=None, pad_token_id=0, num_return_sequences=2)
    with pytest.raises(ValueError, match="num_return_sequences > 1.*once per sequence") as err:
        model.generate_batch(inputs=[PROMPTS[0]], generation_config=forks, continuous_batching_config=small_engine(), warmup=False)
    assert "\n" not in str(err.value)


LAYOUT_SPECS = [
    {"name": "sliding_window", "window": [1, 2, 3, 4]},  # per head
    {"name": "attention_sinks", "sinks": 1, "window": 2},
    {"and": ["prefix_lm", {"name": "sliding_window", "window": 3}]},
    "document",
    {"layers": {"0": "causal", "1": {"name": "chunked", "chunk_size": 3}}},
]


@needs_layout
@pytest.mark.parametrize("spec", LAYOUT_SPECS, ids=lambda s: str(s)[:40])
def test_paged_masks_equal_the_mask_mod_asked_element_by_element(tmp_path, spec):
    """The engine's packed layout, built at once for every request (paged_masks), against the mask_mod asked one
    (request, head, query, key) at a time: requests mid-decode, a fresh prompt, a split prefill, padding query rows
    and columns, a sliding layer type whose cache returns fewer keys."""
    from qwen3_custom_mask.model.paged import paged_masks

    model = CustomQwen3ForCausalLM.from_pretrained(save_tiny_checkpoint(tmp_path, **SLIDING), attn_implementation="sdpa")
    model.set_mask_strategy(spec)
    body, heads, t = model.model, model.config.num_attention_heads, torch.tensor
    cached, new = [4, 0, 5], [1, 3, 3]  # request 0 decodes, 1 starts its prompt, 2 continues a split prefill
    positions = torch.cat([torch.arange(c, c + n) for c, n in zip(cached, new)] + [torch.zeros(2, dtype=torch.long)])
    cu_q = t([0, 1, 4, 7, 7])  # a trailing padding sequence with no tokens, then 2 padding query rows
    keys = {"full_attention": [5, 3, 8], "sliding_attention": [3, 3, 5]}
    cu_k = {kind: t([0] + torch.tensor(n).cumsum(0).tolist() + [sum(n)]) for kind, n in keys.items()}
    templates = {kind: torch.full((1, 1, 9, sum(n) + 2), -7.0) for kind, n in keys.items()}  # 2 padding columns
    masks = paged_masks(body, templates, positions[None], dict(cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k))
    context = dict(padding_mask=torch.ones(3, 8, dtype=torch.bool), num_heads=heads, training=False,
                   prefix_lengths=t([0, 3, 0]))
    for layer, kind in enumerate(model.config.layer_types):
        group = model.model.mask_strategy.for_layer(layer)
        mask, _ = masks[kind][layer]
        if group.flash_form() == {}:
            assert mask is templates[kind]  # causal: the engine's own mask, untouched
            continue
        mask_mod = group.mask_mod(**context)
        blocked = torch.finfo(mask.dtype).min
        expected = torch.full((1, heads, 9, templates[kind].shape[-1]), blocked)
        expected[:, :, :7] = float("-inf")  # real rows: other requests' keys are never seen, not even by an empty row
        column = 0
        for r in range(3):
            end, count = cached[r] + new[r], keys[kind][r]
            for i in range(new[r]):
                row = int(cu_q[r]) + i
                q = cached[r] + i
                for k, kv in enumerate(range(end - count, end)):
                    for h in range(heads):
                        seen = bool(mask_mod(t(r), t(h), t(q), t(kv)))
                        if kind == "sliding_attention":
                            seen = seen and abs(q - kv) < model.config.sliding_window
                        expected[0, h, row, column + k] = 0.0 if seen else blocked
            column += count
        assert torch.equal(mask.expand_as(expected), expected), spec
        assert (mask == 0).any() and not mask.isnan().any()


@needs_layout
def test_the_look_back_check_reads_every_request_at_once(engine_checkpoint):
    """Several requests in one forward: only the one whose cached global token sees a new key is refused, by
    position; requests that start their prompt (nothing cached) add no keys to check."""
    from qwen3_custom_mask.model.paged import refuse_cached_look_back

    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy({"name": "global_tokens", "tokens": [100], "window": 1, "causal": False})
    context = dict(padding_mask=torch.ones(3, 120, dtype=torch.bool), num_heads=4, training=False)
    mask_mods = [group.mask_mod(**context) for group, _ in model.model.mask_groups]
    refuse_cached_look_back(model.model, mask_mods, [50, 0, 90], [51, 120, 95], "cpu")  # nobody cached position 100
    with pytest.raises(ValueError, match="cached position 100 sees position 107"):
        refuse_cached_look_back(model.model, mask_mods, [50, 0, 107], [51, 120, 109], "cpu")


@needs_layout
@torch.no_grad()
def test_a_long_whole_prompt_does_not_wait_for_every_decoding_request(engine_checkpoint):
    """A prompt that does not fit beside the decoding requests goes first: the schedule keeps stock's number of
    forwards (it waited for all of them before, and ran in a second wave: about twice stock's forwards)."""
    prompts = [list(range(1, n + 1)) for n in (30, 6, 31, 5, 29, 7, 32, 4)]
    config = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    forwards = {}
    for spec in ("causal", "prefix_lm"):
        model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
        model.set_mask_strategy(spec)
        count = [0]
        hook = model.model.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        out = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small_engine(32),
                                   warmup=False)
        hook.remove()
        forwards[spec] = count[0]
        if spec == "prefix_lm":
            tokens = [out[key].generated_tokens for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]
            assert tokens == [alone(model, prompt, 12) for prompt in prompts]
    assert forwards["prefix_lm"] <= forwards["causal"] * 1.25, forwards


@needs_layout
@torch.no_grad()
def test_a_prompt_that_cannot_get_pages_leaves_the_decoding_requests_running(engine_checkpoint):
    """Review finding: with the cache full, a budget-sized prompt moved ahead of the decoding requests was handed to
    the engine alone; it got no pages, nothing was scheduled, and the engine failed every request."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    prompts = [[(7 * i + 13 * j) % 249 + 1 for j in range(n)] for i, n in enumerate([6, 16, 15, 16])]
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy("prefix_lm")
    fields = inspect.signature(ContinuousBatchingConfig).parameters
    size = {"page_size": 16} if "page_size" in fields else {"block_size": 16}
    config = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate_batch(inputs=prompts, generation_config=config, warmup=False,
                               continuous_batching_config=ContinuousBatchingConfig(num_blocks=3, max_batch_tokens=16, **size))
    results = [out[key] for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]
    assert [r.error for r in results] == [None] * 4
    assert [r.generated_tokens for r in results] == [alone(model, prompt, 12) for prompt in prompts]
