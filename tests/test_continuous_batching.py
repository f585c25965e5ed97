"""transformers' continuous batching (generate_batch, init_continuous_batching: the engine behind `transformers serve
--continuous-batching`). The engine builds its own causal/sliding masks in a packed layout, so the plugin serves the
default strategy through it exactly as stock does, and refuses every other strategy in one line, never silently
serving stock's masks."""

import inspect

import pytest
import torch
from transformers import GenerationConfig, Qwen3ForCausalLM

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.tiny import save_tiny_checkpoint

if not hasattr(Qwen3ForCausalLM, "generate_batch"):
    pytest.skip("this transformers has no continuous batching", allow_module_level=True)

SLIDING = dict(layer_types=["sliding_attention", "full_attention"], use_sliding_window=True, sliding_window=3)
PROMPTS = [[5, 17, 33, 2, 9], [61, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 40], [3, 4], [100, 101, 102, 103, 104, 105]]


def small_engine():
    """Few cache pages and a token budget that splits prefills: the scheduler's real conditions, and fast on CPU."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    fields = inspect.signature(ContinuousBatchingConfig).parameters
    size = {"page_size": 16} if "page_size" in fields else {"block_size": 16}
    return ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=8, **size)


def run_batch(model, max_new_tokens=5):
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate_batch(inputs=PROMPTS, generation_config=config, continuous_batching_config=small_engine(), warmup=False)
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
    tokens = run_batch(custom)
    assert tokens == run_batch(stock)
    assert all(len(t) == 5 for t in tokens)
    for prompt, got in zip(PROMPTS, tokens):
        row = torch.tensor([prompt])  # an explicit mask: a token equal to the pad id is no padding here
        alone = custom.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert alone[0, len(prompt):].tolist() == got


@pytest.mark.parametrize("spec", [{"name": "sliding_window", "window": 2}, "prefix_lm", "bidirectional",
                                  {"name": "attention_sinks", "sinks": 1, "window": 2}])
def test_other_strategies_are_refused_when_the_manager_starts(engine_checkpoint, spec):
    """On a config with sliding layers the engine hands the body its own {layer_type: mask} dict: stock's masks were
    served under the strategy's name, silently. Now one line names the strategy and the fix."""
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="sdpa").eval()
    model.set_mask_strategy(spec)
    name = spec if isinstance(spec, str) else spec["name"]
    for start in (lambda: run_batch(model), lambda: model.init_continuous_batching()):
        with pytest.raises(ValueError, match=f"serves the 'causal' strategy only.*{name!r}.*model.generate\\(\\)") as err:
            start()
        assert "\n" not in str(err.value)


@torch.no_grad()
def test_a_ready_mask_dict_the_model_did_not_build_never_replaces_a_strategy(engine_checkpoint):
    model = CustomQwen3ForCausalLM.from_pretrained(engine_checkpoint, attn_implementation="eager").eval()
    ids = torch.tensor([PROMPTS[0]])
    ready = {t: torch.zeros(1, 1, ids.shape[1], ids.shape[1]) for t in set(model.config.layer_types)}
    model(ids, attention_mask=ready)  # causal: stock's meaning, used as it is
    model.set_mask_strategy({"name": "sliding_window", "window": 2})
    with pytest.raises(ValueError, match="did not build would replace the mask strategy 'sliding_window'"):
        model(ids, attention_mask=ready)
