"""``qwen3-mask bench --only serving``: continuous-batching throughput against stock, in one run.

Same weights and the same prompts (mixed lengths, greedy, a fixed number of new tokens) for every row:

* the plugin's ``causal`` through transformers' continuous batching against stock's (goal: >= 0.95x);
* sliding_window / attention_sinks / chunked through it against stock causal (goal: >= 0.90x; their masks are
  rebuilt per forward in the engine's packed layout);
* continuous batching against one-by-one ``generate()``, at 16 and 64 concurrent requests.

prefix_lm is refused by continuous batching (it reads each prompt as a whole), so it has no row.
"""

from __future__ import annotations

import time

import torch

SERVING_STRATEGIES = {
    "sliding_window(256)": {"name": "sliding_window", "window": 256},
    "attention_sinks(4, 256)": {"name": "attention_sinks", "sinks": 4, "window": 256},
    "chunked(128)": {"name": "chunked", "chunk_size": 128},
}


def _prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 257, (count,), generator=g)  # mixed lengths, 16 to 256 tokens
    return [torch.randint(0, vocab, (int(n),), generator=g).tolist() for n in lengths]


def _engine(budget: int):
    import inspect

    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    fields = inspect.signature(ContinuousBatchingConfig).parameters
    size = {"page_size": 64} if "page_size" in fields else {"block_size": 64}
    return ContinuousBatchingConfig(num_blocks=512, max_batch_tokens=budget, **size)


def _batch_seconds(model, prompts, new_tokens: int, budget: int) -> float:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    start = time.perf_counter()
    out = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=_engine(budget), warmup=False)
    seconds = time.perf_counter() - start
    assert all(len(out[key].generated_tokens) == new_tokens for key in out), "a request did not finish"
    return seconds


@torch.no_grad()
def _one_by_one_seconds(model, prompts, new_tokens: int) -> float:
    start = time.perf_counter()
    for prompt in prompts:
        row = torch.tensor([prompt], device=model.device)
        model.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - start


def serving_rows(args, build_models) -> list[str]:
    """Markdown lines of the serving table (``build_models(args, backend, device, dtype)`` from benchmark.py)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    backend = "sdpa"
    stock, custom = build_models(args, backend, device, dtype)
    new_tokens = 8 if args.quick else 32
    counts = (4, 8) if args.quick else (16, 64)
    budget = 256 if device.type == "cpu" else 2048
    lines = [f"Continuous batching ({backend}, {args.layers} layers, {new_tokens} new tokens per request, prompts 16-256 "
             f"tokens, max_batch_tokens {budget}; tokens/s, ratio in the same run):", "",
             "| requests | case | tokens/s | ratio |", "|---|---|---|---|"]
    for count in counts:
        prompts = _prompts(count, args.vocab)
        total = count * new_tokens
        _batch_seconds(stock, prompts[:2], 2, budget)  # warm-up
        base = _batch_seconds(stock, prompts, new_tokens, budget)
        lines.append(f"| {count} | stock causal, continuous batching | {total / base:.1f} | 1.00 |")
        custom.set_mask_strategy("causal")
        seconds = _batch_seconds(custom, prompts, new_tokens, budget)
        lines.append(f"| {count} | plugin causal, continuous batching | {total / seconds:.1f} | {base / seconds:.2f} |")
        for name, spec in SERVING_STRATEGIES.items():
            custom.set_mask_strategy(spec)
            try:
                seconds = _batch_seconds(custom, prompts, new_tokens, budget)
            except ValueError as err:  # an older engine serves the causal strategy only
                lines.append(f"| {count} | plugin {name}, continuous batching | refused: {str(err)[:80]}... | – |")
                continue
            lines.append(f"| {count} | plugin {name}, continuous batching (vs stock causal) | {total / seconds:.1f} | {base / seconds:.2f} |")
        custom.set_mask_strategy("causal")
        seconds = _one_by_one_seconds(custom, prompts, new_tokens)
        lines.append(f"| {count} | plugin causal, one-by-one generate() | {total / seconds:.1f} | {base / seconds:.2f} |")
    return lines
