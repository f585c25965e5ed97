"""GPU check, one call: correctness on CUDA against the brute-force reference, then the benchmark figures.

    python scripts/gpu_check.py                 # everything (budgeted to finish in about 8 minutes on one H100/H200)
    python scripts/gpu_check.py --no-bench      # the correctness sweep only

Runs on the CUDA machine's own stack (torch 2.11 + transformers 5.17 preinstalled; nothing to download):
from the repository root, ``PYTHONPATH=. python scripts/gpu_check.py``. Prints the versions, one line per
case, the worst errors, then the benchmark tables; exits 1 on any mismatch.

1. Every built-in strategy (and a composition) x eager / sdpa / flex_attention (compiled, as transformers runs
   it on CUDA) x float32 / bfloat16 x lengths 300, 1000, 4096 (crossing flex's 128-token blocks), batch 2 with
   left padding: the full forward, a prefill + 3 cached decode steps (DynamicCache), and a compiled static-cache
   decode (``torch.compile(model.forward, fullgraph=True)``), each against the reference: a hand-written float32
   Qwen3 forward (`reference.py`) with the strategy's mask evaluated over the whole grid (the element-by-element
   reference is what CPU tests hold this evaluation to; at 4096 tokens it would take hours).
2. Benchmarks (`qwen3-mask bench`): prefill and decode against stock, compiled static-cache decode, flex
   sliding_window / documents against dense-mask sdpa at 8k and 32k tokens, and continuous-batching throughput
   (sdpa: plugin vs stock causal, strategies vs stock causal, vs one-by-one generate() at 16 and 64 requests).
   Then packed against unpacked fine-tuning (`scripts/bench_packing.py`, Qwen3-0.6B-shaped, 8 layers, bf16) with
   sdpa, flex_attention and (where installed) flash_attention_2: the data for the recipe's GPU attention default.
3. Where the image has vLLM: the Flex-only strategies on vLLM's real FLEX_ATTENTION backend, each request's greedy
   tokens against ``generate()``, then ``qwen3-mask bench --only vllm`` (skipped, saying so, without vLLM).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time

import torch
import transformers
from transformers import DynamicCache, StaticCache

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.model.compat import forward_cache_kwarg
from qwen3_custom_mask.strategy.lowering import dense_mask
from qwen3_custom_mask.strategy.reference import reference_logits
from qwen3_custom_mask.cli.tiny import save_tiny_checkpoint


def cases(length: int):
    half = torch.tensor([length // 2, length // 3])
    docs = (torch.arange(length) * 5 // length).expand(2, length)  # 5 contiguous documents per row
    return [
        ("causal", {}),
        ("bidirectional", {}),
        ({"name": "sliding_window", "window": 129}, {}),
        ({"name": "sliding_window", "window": [16, 64, 200, 1000]}, {}),
        ("prefix_lm", {"prefix_lengths": half}),
        ({"name": "attention_sinks", "sinks": 4, "window": 130}, {}),
        ({"name": "chunked", "chunk_size": 128}, {}),
        ({"name": "dilated_sliding_window", "window": 256, "dilation": 3}, {}),
        ({"name": "global_tokens", "tokens": [0, 7], "window": 100}, {}),
        ("document", {"document_ids": docs}),
        ({"and": ["prefix_lm", {"name": "sliding_window", "window": 300}]}, {"prefix_lengths": half}),
    ]


DEVICE = torch.device("cuda")  # --device cpu: a smoke run of this script on a machine without a GPU
CACHEABLE_SKIP = ("bidirectional",)  # lets the prompt see later tokens: no cached decode
# float32: absolute, against the float32 reference. bfloat16: its own rounding dominates (~0.3 on these logits
# of magnitude ~10), so a case passes within BF16_OVER_CAUSAL x the error of the default causal strategy on the
# same backend and length (that is stock's own bfloat16 error), and a mask bug shows up in float32.
TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 0.05}
BF16_OVER_CAUSAL = 2.0


def batch(length: int):
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, 250, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[0, :37] = 0  # left padding that does not fall on a block edge
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def upto(inputs: dict, seen: int) -> dict:
    """A cached step's inputs: document_ids cover the tokens so far (past + new)."""
    return {k: v[:, :seen] if k == "document_ids" else v for k, v in inputs.items()}


def reference(cpu_model, spec, inputs, ids, mask, positions):
    """float32 logits (B, L, V) on CUDA: the hand-written forward with the strategy's grid-evaluated mask."""
    model = cpu_model
    model.set_mask_strategy(spec)
    padding = mask.bool().to(DEVICE)
    length = ids.shape[1]
    cuda_inputs = {k: v.to(DEVICE) for k, v in inputs.items()}
    mask_mod = model.mask_strategy.mask_mod(**cuda_inputs, padding_mask=padding, num_heads=4, sequence_length=length)
    grid = dense_mask(mask_mod, batch_size=2, num_heads=4, q_offset=0, q_length=length, kv_offset=0, kv_length=length,
                      padding_mask=padding, device=padding.device).expand(2, 4, length, length)
    return reference_logits(model, ids.to(DEVICE), grid, positions.to(DEVICE)).float()


def check(path, args) -> bool:
    cache_kw = forward_cache_kwarg()
    ref_model = CustomQwen3ForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE).eval()
    worst, ok = {}, True
    for length in args.lengths:
        ids, mask, positions = batch(length)
        real = mask.bool()
        refs = {}
        for dtype in (torch.float32, torch.bfloat16):
            for backend in ("eager", "sdpa", "flex_attention"):
                model = CustomQwen3ForCausalLM.from_pretrained(path, attn_implementation=backend, dtype=dtype).to(DEVICE).eval()
                for spec, inputs in cases(length):
                    key = str(spec)
                    if key not in refs:
                        with torch.no_grad():
                            refs[key] = reference(ref_model, spec, inputs, ids, mask, positions).cpu()
                    ref = refs[key]
                    model.set_mask_strategy(spec)
                    cuda = {k: v.to(DEVICE) for k, v in inputs.items()}
                    errs = {}
                    start = time.perf_counter()
                    with torch.no_grad():
                        full = model(ids.to(DEVICE), attention_mask=mask.to(DEVICE), position_ids=positions.to(DEVICE), **cuda).logits
                        errs["full"] = (full.float().cpu() - ref)[real].abs().max().item()
                        if spec not in CACHEABLE_SKIP:
                            cache, split = DynamicCache(config=model.config), length - 3
                            pieces = [model(ids[:, :split].to(DEVICE), attention_mask=mask[:, :split].to(DEVICE), position_ids=positions[:, :split].to(DEVICE),
                                            use_cache=True, **{cache_kw: cache}, **upto(cuda, split)).logits]
                            for t in range(split, length):
                                pieces.append(model(ids[:, t:t + 1].to(DEVICE), attention_mask=mask[:, :t + 1].to(DEVICE), position_ids=positions[:, t:t + 1].to(DEVICE),
                                                    use_cache=True, **{cache_kw: cache}, **upto(cuda, t + 1)).logits)
                            errs["cached"] = (torch.cat(pieces, 1).float().cpu() - ref)[real].abs().max().item()
                            # (CPU inductor cannot lower flex inside a whole compiled model: a smoke run skips it)
                            if length == args.static_length and backend != "eager" and not (DEVICE.type == "cpu" and backend == "flex_attention"):
                                errs["static-compiled"] = static_compiled(model, ids, mask, positions, cuda, ref, cache_kw)
                    if key == "causal":  # bfloat16's noise floor for this backend and length
                        floor = max(errs.values())
                    tolerance = TOLERANCE[dtype] if dtype == torch.float32 else max(BF16_OVER_CAUSAL * floor, TOLERANCE[dtype])
                    passed = max(errs.values()) < tolerance
                    ok &= passed
                    for kind, err in errs.items():
                        worst[dtype, kind] = max(worst.get((dtype, kind), 0.0), err)
                    detail = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
                    print(f"{'ok  ' if passed else 'FAIL'} L={length:<5} {str(dtype)[6:]:9} {backend:15} {key[:60]:60} {detail} "
                          f"({time.perf_counter() - start:.1f} s)", flush=True)
                del model
                if DEVICE.type == "cuda":
                    torch.cuda.empty_cache()
    print("\nworst |logit - reference| (float32 reference, logits ~10):")
    for (dtype, kind), err in sorted(worst.items(), key=str):
        print(f"  {str(dtype)[6:]:9} {kind:16} {err:.2e}")
    return ok


def static_compiled(model, ids, mask, positions, cuda, ref, cache_kw) -> float:
    """Prefill eagerly into a StaticCache, then 3 decode steps through torch.compile(fullgraph=True)."""
    length = ids.shape[1]
    split = length - 3
    cache = StaticCache(config=model.config, max_cache_len=length + 8)
    prefill = model(ids[:, :split].to(DEVICE), attention_mask=mask[:, :split].to(DEVICE), position_ids=positions[:, :split].to(DEVICE),
                    use_cache=True, **{cache_kw: cache}, **upto(cuda, split)).logits
    torch._dynamo.reset()  # each case compiles afresh: the recompile limit counts per code object
    forward = torch.compile(model.forward, fullgraph=True)
    pieces = [prefill]
    for t in range(split, length):
        # As generate() does for static caches: the step's masks built outside the graph (stock's flex builder
        # cannot be traced with a 2D mask under fullgraph), handed to the compiled forward ready.
        position = positions[:, t:t + 1].to(DEVICE)
        masks = model.create_masks_for_generate(model.config, torch.empty(2, 1, 0, dtype=model.dtype, device=DEVICE),
                                                mask[:, :t + 1].to(DEVICE), cache, position, **upto(cuda, t + 1))
        pieces.append(forward(ids[:, t:t + 1].to(DEVICE), attention_mask=masks, position_ids=position, use_cache=True, **{cache_kw: cache}).logits)
    return (torch.cat(pieces, 1).float().cpu() - ref)[mask.bool()].abs().max().item()


def loss_memory(tokens: int, layers: int) -> None:
    """Peak CUDA memory of one training step (forward + backward) of a Qwen3-0.6B-shaped model (vocab 151,936,
    bf16) on `tokens` tokens (rows of 2048), stock's full-logits loss against the chunked loss (loss.py)."""
    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    config = tiny_qwen3_config(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                               head_dim=128, num_hidden_layers=layers, vocab_size=151936, max_position_embeddings=40960)
    model = CustomQwen3ForCausalLM(config).to(DEVICE, torch.bfloat16).train()
    rows = max(1, tokens // 2048)
    ids = torch.randint(0, 151936, (rows, min(tokens, 2048)), device=DEVICE)
    peaks = {}
    for chunk in (None, 512):
        model.config.loss_chunk_size = chunk
        model.zero_grad(set_to_none=True)
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        seconds = time.perf_counter() - start
        peaks[chunk] = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")
        print(f"loss {'chunked 512' if chunk else 'full logits'}: {ids.numel()} tokens, {layers} layers, peak {peaks[chunk]:.2f} GiB, {seconds:.2f} s", flush=True)
    print(f"loss memory: chunked / full = {peaks[512] / peaks[None]:.2f}x peak", flush=True)


def bench(budget_s: float) -> None:
    from qwen3_custom_mask.cli.benchmark import main as bench_main

    sections = [
        ["--only", "prefill", "--lengths", "1024", "4096", "--layers", "8", "--repeats", "5", "--sparse-length", "8192"],
        ["--only", "prefill", "--lengths", "1024", "--backends", "sdpa", "flex_attention", "--strategies", "sliding_window(256)",
         "document(8 docs)", "--repeats", "3", "--sparse-length", "32768"],
        ["--only", "compiled", "--layers", "8"],
        ["--only", "serving", "--layers", "8"],  # continuous batching vs stock, and vs one-by-one generate()
    ]
    if __import__("importlib").util.find_spec("vllm") is not None:
        sections.append(["--only", "vllm", "--layers", "8"])  # the plugin on vLLM vs stock on vLLM
    # Packed against unpacked fine-tuning per attention path, to choose the recipe's GPU default (CPU: sdpa,
    # bound by the LM head on the embedded default; see Performance): Qwen3-0.6B-shaped, the full vocabulary, bf16.
    packing = [["--model", "0.6b-shaped", "--layers", "8", "--vocab", "151936", "--examples", "2000", f"--extra=--bf16 --attn {attn}"]
               for attn in ("sdpa", "flex_attention", *(["flash_attention_2"] if __import__("importlib").util.find_spec("flash_attn") else []))
               if DEVICE.type == "cuda"]
    start = time.perf_counter()
    for argv in [*sections, *packing]:
        if time.perf_counter() - start > budget_s:
            print(f"\nbench: time budget spent, skipped {' '.join(argv)}")
            continue
        if argv in packing:
            import subprocess
            from pathlib import Path

            print(f"\n== python scripts/bench_packing.py {' '.join(argv)}", flush=True)
            left = max(60.0, budget_s - (time.perf_counter() - start))
            try:
                code = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_packing.py")), *argv], check=False, timeout=left).returncode
                if code:
                    print(f"bench_packing {' '.join(argv)}: exit {code}", flush=True)
            except subprocess.TimeoutExpired:
                print(f"bench_packing {' '.join(argv)}: stopped after {left:.0f} s (the bench budget)", flush=True)
            continue
        print(f"\n== qwen3-mask bench {' '.join(argv)}", flush=True)
        bench_main(argv)


def vllm_flex() -> bool:
    """vLLM's FLEX_ATTENTION backend with each Flex-only strategy: tokens equal generate()'s (a subprocess engine)."""
    import importlib.util
    import json
    import subprocess
    from pathlib import Path

    if importlib.util.find_spec("vllm") is None:
        print("\nvllm: not installed on this machine: the FLEX_ATTENTION check and bench --only vllm are skipped", flush=True)
        return True
    root = Path(tempfile.mkdtemp())
    stock = save_tiny_checkpoint(root / "stock", head_dim=64, num_hidden_layers=4, max_position_embeddings=2048)
    specs = {"sinks": {"name": "attention_sinks", "sinks": 4, "window": 32},
             "dilated": {"name": "dilated_sliding_window", "window": 48, "dilation": 2},
             "per_head": {"name": "sliding_window", "window": [16, 16, 128, 128]},
             "flex_and_native": {"layers": {"0-1": {"name": "attention_sinks", "sinks": 4, "window": 32},
                                            "2-3": {"name": "chunked", "chunk_size": 64}}}}
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 250, (int(n),), generator=g).tolist() for n in torch.randint(3, 200, (16,), generator=g)]
    runs = []
    for name, spec in specs.items():
        CustomQwen3ForCausalLM.from_pretrained(stock, mask_strategy=spec).save_pretrained(root / name)
        runs.append({"model": str(root / name)})
    engine = {"attention_backend": "FLEX_ATTENTION", "dtype": "float32", "skip_tokenizer_init": True, "max_model_len": 512, "block_size": 16,
              "gpu_memory_utilization": 0.3, "compilation_config": {"cudagraph_mode": "PIECEWISE"}}
    (root / "jobs.json").write_text(json.dumps({"prompts": prompts, "max_tokens": 32, "engine": engine, "runs": runs}))
    subprocess.run([sys.executable, "-m", "qwen3_custom_mask.serving.vllm_run", str(root / "jobs.json"), str(root / "out.json")], check=True)
    ok = True
    for name, result in zip(specs, json.loads((root / "out.json").read_text())):
        model = CustomQwen3ForCausalLM.from_pretrained(root / name).to(DEVICE).eval()
        model.generation_config.eos_token_id = None
        expected = [model.generate(torch.tensor([p], device=DEVICE), max_new_tokens=32, do_sample=False)[0, len(p):].tolist() for p in prompts]
        same = sum(a == b for a, b in zip(expected, result.get("tokens", [])))
        ok &= same == len(prompts)
        print(f"vllm FLEX_ATTENTION {name}: {same}/{len(prompts)} requests token-equal to generate() {result.get('error', '')}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 1000, 4096])
    parser.add_argument("--static-length", type=int, default=1000, help="length of the compiled static-cache decode check")
    parser.add_argument("--no-bench", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself (small --lengths)")
    parser.add_argument("--bench-budget", type=float, default=240, help="seconds after which further bench sections are skipped")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (torch.cuda.is_available() is False)")
    if DEVICE.type == "cpu":
        torch._dynamo.config.automatic_dynamic_shapes = False  # README "Known limits": torch 2.13 CPU inductor
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU"
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, {name}", flush=True)
    start = time.perf_counter()
    path = save_tiny_checkpoint(tempfile.mkdtemp())
    ok = check(path, args)
    print(f"\ncorrectness: {'passed' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s", flush=True)
    if DEVICE.type == "cuda":
        ok &= vllm_flex()
    if not args.no_bench:
        loss_memory(16384 if DEVICE.type == "cuda" else 256, 28 if DEVICE.type == "cuda" else 1)
        bench(args.bench_budget)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
