"""``qwen3-mask bench --only serving``: continuous-batching throughput against stock, in one run.

Same weights and the same prompts (mixed lengths, greedy, a fixed number of new tokens) for every row:

* the plugin's ``causal`` through transformers' continuous batching against stock's (goal: >= 0.95x);
* every other served strategy through it against stock causal (goal: >= 0.90x): sliding_window, attention_sinks,
  chunked, a per-layer spec (first half causal, second half a window) and a per-head spec (half the heads a
  window), whose masks are rebuilt per forward in the engine's packed layout (model/paged.py), and prefix_lm,
  whose prompts the plugin's scheduler keeps whole;
* continuous batching against one-by-one ``generate()``.

Run to run, one case varies by about +-10% on 2 CPU cores (stock against itself included), the first runs are the
slowest, and a shared machine drifts by up to 2x over minutes: so a full-size warm-up run first, then
``--serving-repeats`` rounds of every case, each round in a rotated order; a case's ratio is the median over rounds
of its speed against stock's in the same round (paired, so drift between rounds cancels), its tokens/s the median.
On CPU the model is small (4 layers, hidden 512, 8 heads: the engine and the masks, not the matmuls, are what
differ).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

logger = logging.getLogger(__name__)
CPU_SHAPE = dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4, head_dim=64)


def serving_strategies(num_layers: int, num_heads: int) -> dict:
    """The specs of the table, sized to the model (the per-layer and per-head rows need its layers and heads)."""
    half = max(num_layers // 2, 1)
    window = {"name": "sliding_window", "window": 64}
    return {
        "sliding_window(64)": window,
        "attention_sinks(4, 64)": {"name": "attention_sinks", "sinks": 4, "window": 64},
        "chunked(64)": {"name": "chunked", "chunk_size": 64},
        f"per-layer: 0-{half - 1} causal, {half}-{num_layers - 1} sliding_window(64)":
            {"layers": {f"0-{half - 1}": "causal", f"{half}-{num_layers - 1}": window}},
        f"per-head sliding_window: {num_heads // 2} heads 32, {num_heads - num_heads // 2} heads 4096":
            {"name": "sliding_window", "window": [32] * (num_heads // 2) + [4096] * (num_heads - num_heads // 2)},
        "prefix_lm (the prompt)": "prefix_lm",
    }


def paired_ratio(stock_seconds: list[float], case_seconds: list[float]) -> float:
    """The case's speed over stock's, per round (the lists are in round order), median over rounds."""
    return statistics.median(stock_s / case_s for stock_s, case_s in zip(stock_seconds, case_seconds))


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
    """Markdown lines of the serving table (``build_models(args, backend, device, dtype, **shape)`` from benchmark.py)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    backend = "sdpa"
    shape = CPU_SHAPE if device.type == "cpu" else {}
    stock, custom = build_models(args, backend, device, dtype, **shape)
    config = stock.config
    new_tokens = 8 if args.quick else 32
    counts = (4, 8) if args.quick else (16, 32, 64)
    rounds = 1 if args.quick else args.serving_repeats
    budget = 256 if device.type == "cpu" else 2048
    lines = [f"Continuous batching ({backend}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
             f"{config.num_attention_heads} heads, {args.dtype}, {new_tokens} new tokens per request, prompts 16-256 tokens, "
             f"max_batch_tokens {budget}; tokens/s: median of {rounds} rounds in rotated order, after a warm-up run; ratio: "
             f"median over rounds of the case's speed over stock causal's in the same round):", "",
             "| requests | case | tokens/s | ratio |", "|---|---|---|---|"]
    cases = {"plugin causal": "causal", **{f"plugin {name}": spec for name, spec in
                                           serving_strategies(config.num_hidden_layers, config.num_attention_heads).items()}}
    for count in counts:
        prompts = _prompts(count, args.vocab)
        total = count * new_tokens
        _batch_seconds(stock, prompts, new_tokens, budget)  # warm-up at full size: the first runs are the slowest
        names = ["stock causal", *cases]
        seconds = {name: [] for name in names}
        refused = {}
        for round_ in range(rounds):
            shift = round_ % len(names)  # each round starts elsewhere: no case always runs first or last
            for name in names[shift:] + names[:shift]:
                if name in refused:
                    continue
                model = stock if name == "stock causal" else custom
                if model is custom:
                    custom.set_mask_strategy(cases[name])
                try:
                    seconds[name].append(_batch_seconds(model, prompts, new_tokens, budget))
                except ValueError as err:  # an older engine serves the causal strategy only
                    refused[name] = str(err)
                    continue
                logger.info("serving %d requests, round %d/%d: %s %.1f tokens/s", count, round_ + 1, rounds, name,
                            total / seconds[name][-1])
        base = statistics.median(seconds["stock causal"])
        lines.append(f"| {count} | stock causal, continuous batching | {total / base:.1f} | 1.00 |")
        for name in cases:
            if name in refused:
                lines.append(f"| {count} | {name}, continuous batching | refused: {refused[name][:80]}... | – |")
                continue
            median = statistics.median(seconds[name])
            lines.append(f"| {count} | {name}, continuous batching | {total / median:.1f} | "
                         f"{paired_ratio(seconds['stock causal'], seconds[name]):.2f} |")
        custom.set_mask_strategy("causal")
        one_by_one = _one_by_one_seconds(custom, prompts, new_tokens)
        lines.append(f"| {count} | plugin causal, one-by-one generate() (ratio to stock's median) | {total / one_by_one:.1f} | "
                     f"{base / one_by_one:.2f} |")
        logger.info("serving %d requests: one-by-one generate() %.1f tokens/s", count, total / one_by_one)
    return lines
