"""The measurements of `qwen3-mask bench` (options and what is measured: bench_args.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..model.masking import layer_mask
from .bench_args import STRATEGY_NAMES, parse_args, resolve_defaults
from .bench_timing import PeakMemory, mask_bytes, timed, timed_pair

logger = logging.getLogger(__name__)


def documents(length: int, count: int, device) -> torch.Tensor:
    bounds = torch.linspace(0, length, count + 1).long()
    ids = torch.zeros(1, length, dtype=torch.long)
    for doc, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        ids[0, a:b] = doc
    return ids.to(device)


STRATEGIES = {
    "causal": ("causal", lambda length, device: {}),
    "sliding_window(256)": ({"name": "sliding_window", "window": 256}, lambda length, device: {}),
    "prefix_lm(half)": ("prefix_lm", lambda length, device: {"prefix_lengths": torch.tensor([length // 2], device=device)}),
    "document(8 docs)": ("document", lambda length, device: {"document_ids": documents(length, 8, device)}),
    "attention_sinks(4, 256)": ({"name": "attention_sinks", "sinks": 4, "window": 256}, lambda length, device: {}),
}
assert tuple(STRATEGIES) == STRATEGY_NAMES  # the torch-free argument parser offers these names


def build_models(args, backend, device, dtype, **shape):
    """Stock and plugin with the same random weights: Qwen3-0.6B-shaped layers unless ``shape`` says otherwise."""
    from transformers import Qwen3ForCausalLM

    from ..model import CustomQwen3ForCausalLM
    from .tiny import tiny_qwen3_config

    sizes = dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128)
    config = tiny_qwen3_config(
        **{**sizes, **shape}, num_hidden_layers=args.layers, vocab_size=args.vocab, initializer_range=0.02,
        max_position_embeddings=40960, eos_token_id=None, bos_token_id=None,
    )
    config._attn_implementation = backend
    torch.manual_seed(0)
    stock = Qwen3ForCausalLM(config).to(device=device, dtype=dtype).eval()
    custom = CustomQwen3ForCausalLM(config).to(device=device, dtype=dtype).eval()
    custom.load_state_dict(stock.state_dict())
    return stock, custom


def fmt(t):
    median, low, high = t
    return f"{median * 1e3:.1f} ({low * 1e3:.1f}-{high * 1e3:.1f})"


@torch.no_grad()
def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = []
    for backend in args.backends:
        stock, custom = build_models(args, backend, device, dtype)
        for length in args.lengths:
            if backend == "flex_attention" and device.type == "cpu" and length > 2048:
                continue  # flex on CPU compiles per shape and is slow at long lengths; run it on CUDA
            ids = torch.randint(0, args.vocab, (1, length), device=device)
            with PeakMemory(device) as mem:
                base = timed(lambda: stock(ids, logits_to_keep=1, use_cache=False), device, args.repeats)
            rows.append(dict(kind="prefill", backend=backend, length=length, strategy="stock", time=base, ratio=1.0, peak=mem.mib, mask_bytes=0, build=None))
            for name in args.strategies:
                spec, make_inputs = STRATEGIES[name]
                custom.set_mask_strategy(spec)
                inputs = make_inputs(length, device)
                masks, _ = custom.model.attention_masks(ids, **inputs)
                build = timed(lambda: custom.model.attention_masks(ids, **inputs), device, args.repeats)
                ours = lambda: custom(ids, logits_to_keep=1, use_cache=False, **inputs)  # noqa: E731
                if name == "causal":
                    t, reference = timed_pair(ours, lambda: stock(ids, logits_to_keep=1, use_cache=False), device, args.repeats)
                    ref_name = "stock"
                elif backend == "flex_attention" or layer_mask(masks, 0)[0] is None:
                    t, reference, ref_name = timed(ours, device, args.repeats), None, "-"
                else:  # stock with the same mask, precomputed as a 4D tensor the way a user would pass it
                    dense, extra = layer_mask(masks, 0)
                    positions = custom.mask_strategy.position_ids(**inputs, padding_mask=torch.ones(1, length, dtype=torch.bool, device=device))
                    theirs = lambda: stock(ids, attention_mask={"full_attention": dense}, position_ids=positions, logits_to_keep=1, use_cache=False, **extra)  # noqa: E731
                    t, reference = timed_pair(ours, theirs, device, args.repeats)
                    ref_name = "stock + 4D mask"
                with PeakMemory(device) as mem:
                    ours()
                ratio = t[0] / reference[0] if reference else float("nan")
                rows.append(dict(kind="prefill", backend=backend, length=length, strategy=name, time=t, ratio=ratio, versus=ref_name,
                                 peak=mem.mib, mask_bytes=mask_bytes(masks), build=build))
                logger.info("%s %s %d: %s ms", backend, name, length, fmt(t))
            custom.set_mask_strategy("causal")
        if backend == "flex_attention" and device.type == "cpu":
            continue  # decode on CPU flex recompiles at every new cache length (static shapes): not representative
        for batch in args.decode_batches:
            logger.info("%s decode, batch %d: stock vs causal, %d new tokens", backend, batch, args.new_tokens)
            prompt = torch.randint(0, args.vocab, (batch, 32), device=device)
            kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            times = timed_pair(lambda: stock.generate(prompt, **kwargs), lambda: custom.generate(prompt, **kwargs), device,
                               max(2, args.repeats // 2))
            for label, t in zip(("stock", "causal"), times):
                rows.append(dict(kind="decode", backend=backend, batch=batch, strategy=label, time=t,
                                 tokens_per_s=batch * args.new_tokens / t[0]))
            rows[-1]["ratio"] = rows[-1]["tokens_per_s"] / rows[-2]["tokens_per_s"]
        del stock, custom
    return rows


COMPILED_STRATEGIES = ["causal", "sliding_window(256)", "prefix_lm(half)", "document(8 docs)"]


@torch.no_grad()
def compiled_decode(args) -> list[dict]:
    """Static-cache greedy decoding with generate()'s auto-compiled forward (sdpa): stock causal vs each strategy."""
    from transformers import CompileConfig

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    stock, custom = build_models(args, "sdpa", device, dtype)
    config = CompileConfig(fullgraph=True, mode="reduce-overhead" if device.type == "cuda" else None)
    config._compile_all_devices = True  # generate() compiles on CUDA by itself; on CPU only when asked
    rows = []
    for batch in args.decode_batches:
        prompt_length = 32
        prompt = torch.randint(0, args.vocab, (batch, prompt_length), device=device)
        kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                      cache_implementation="static", compile_config=config)
        stock.generate(prompt, **kwargs)  # compiles
        for name in COMPILED_STRATEGIES:
            spec, make_inputs = STRATEGIES[name]
            custom.set_mask_strategy(spec)
            inputs = make_inputs(prompt_length, device)
            inputs = {k: v.expand(batch, *v.shape[1:]) for k, v in inputs.items()}
            custom.generate(prompt, **kwargs, **inputs)  # compiles on first use; the masks are inputs, so once
            ours, base = timed_pair(lambda: custom.generate(prompt, **kwargs, **inputs), lambda: stock.generate(prompt, **kwargs),
                                    device, max(2, args.repeats // 2))
            rows.append(dict(batch=batch, strategy=name, tokens_per_s=batch * args.new_tokens / ours[0],
                             stock_tokens_per_s=batch * args.new_tokens / base[0], ratio=base[0] / ours[0]))
            logger.info("compiled decode batch %d %s: %.1f tokens/s (%.3fx stock)", batch, name, rows[-1]["tokens_per_s"], rows[-1]["ratio"])
    custom.set_mask_strategy("causal")
    return rows


@torch.no_grad()
def block_mask_costs(args) -> dict:
    """flex_attention's BlockMask: built from the strategy's structure vs from the whole (Q, K) grid, against the
    attention it serves; a decode step's mask; flex decode (static cache) tokens/s against stock sdpa decode."""
    from torch.nn.attention.flex_attention import flex_attention

    from ..strategy.lowering import block_mask
    from ..strategy import resolve_strategy

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    compiled = torch.compile(flex_attention, dynamic=False)
    cases = {
        "sliding_window(1024)": ({"name": "sliding_window", "window": 1024}, lambda n: {}),
        "document(16 docs)": ("document", lambda n: {"document_ids": documents(n, 16, device)}),
    }
    builds = []
    for length in args.block_lengths:
        padding = torch.ones(1, length, dtype=torch.bool, device=device)
        q = torch.randn(1, 16, length, 128, device=device, dtype=dtype)
        k, v = torch.randn_like(q), torch.randn_like(q)
        for name, (spec, make_inputs) in cases.items():
            strategy = resolve_strategy(spec)
            context = dict(make_inputs(length), padding_mask=padding, num_heads=16)
            mask_mod, intervals = strategy.mask_mod(**context), strategy.key_intervals(**context)
            window = dict(batch_size=1, num_heads=16, q_offset=0, q_length=length, kv_offset=0, kv_length=length,
                          padding_mask=padding, device=device)
            direct = timed(lambda: block_mask(mask_mod, intervals=intervals, **window), device, args.repeats)
            grid = timed(lambda: block_mask(mask_mod, **window), device, args.repeats) if length <= args.grid_limit else None
            built = block_mask(mask_mod, intervals=intervals, **window)
            attention = timed(lambda: compiled(q, k, v, block_mask=built), device, max(1, args.repeats // 2))
            decode_window = dict(window, q_offset=length - 1, q_length=1)
            step = timed(lambda: block_mask(mask_mod, intervals=intervals, **decode_window), device, args.repeats)
            step_grid = timed(lambda: block_mask(mask_mod, **decode_window), device, args.repeats)
            builds.append(dict(length=length, name=name, direct=direct, grid=grid, attention=attention, step=step, step_grid=step_grid))
            logger.info("block masks %s %d: build %.2f ms, attention %.1f ms", name, length, direct[0] * 1e3, attention[0] * 1e3)
    return {"builds": builds, "decode": flex_decode(args)}


@torch.no_grad()
def flex_decode(args) -> list[dict]:
    """Greedy decode tokens/s: flex_attention with a static cache (one kernel shape, a BlockMask per step built
    from the structure) against stock with sdpa (dynamic cache), after a prompt of --decode-context tokens."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    stock, _ = build_models(args, "sdpa", device, dtype)
    _, custom = build_models(args, "flex_attention", device, dtype)
    prompt = torch.randint(0, args.vocab, (1, args.decode_context), device=device)
    new = args.decode_new_tokens
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    rows = []
    for name, (spec, make_inputs) in {"sliding_window(1024)": ({"name": "sliding_window", "window": 1024}, lambda n: {}),
                                     "document(16 docs)": ("document", lambda n: {"document_ids": documents(n, 16, device)})}.items():
        custom.set_mask_strategy(spec)
        inputs = make_inputs(args.decode_context)
        ours, base = timed_pair(lambda: custom.generate(prompt, cache_implementation="static", **kwargs, **inputs),
                                lambda: stock.generate(prompt, **kwargs), device, 2)
        rows.append(dict(name=name, tokens_per_s=new / ours[0], stock_tokens_per_s=new / base[0], ratio=base[0] / ours[0]))
    return rows


@torch.no_grad()
def attention_sparsity(args) -> list[dict]:
    """flex_attention (BlockMask) vs sdpa with the dense mask vs the ideal (sdpa on unmasked blocks only)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from ..masks.document import document as document_factory
    from ..masks.sliding_window import sliding_window as window_factory

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    length, heads, head_dim, block = args.sparse_length, 16, 128, 128
    q = torch.randn(1, heads, length, head_dim, device=device, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    padding = torch.ones(1, length, dtype=torch.bool, device=device)
    docs = documents(length, 8, device)
    cases = {
        "sliding_window(256)": window_factory(256),
        "document(8 docs)": document_factory(document_ids=docs, padding_mask=padding),
    }
    compiled = torch.compile(flex_attention, dynamic=False)
    rows = []
    for name, mask_mod in cases.items():
        block_mask = create_block_mask(mask_mod, 1, None, length, length, device=device)
        grid = torch.arange(length, device=device)
        dense = mask_mod(torch.zeros((), dtype=torch.long, device=device), None, grid[:, None], grid[None, :])[None, None]
        flex_t = timed(lambda: compiled(q, k, v, block_mask=block_mask), device, args.repeats)
        dense_t = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense), device, args.repeats)

        def ideal():
            # Only the key range each query block needs (window or document), no mask work beyond it.
            for start in range(0, length, block):
                rows_ = slice(start, start + block)
                cols = dense[0, 0, rows_].any(0).nonzero()
                lo, hi = int(cols.min()), int(cols.max()) + 1
                torch.nn.functional.scaled_dot_product_attention(q[:, :, rows_], k[:, :, lo:hi], v[:, :, lo:hi], attn_mask=dense[:, :, rows_, lo:hi])

        ideal_t = timed(ideal, device, args.repeats)
        rows.append(dict(name=name, flex=flex_t, dense=dense_t, ideal=ideal_t, density=dense.float().mean().item()))
    return rows


def markdown_blocks(costs, args) -> list[str]:
    ms = lambda t: f"{t[0] * 1e3:.2f}" if t else "-"  # noqa: E731
    lines = ["", "flex_attention BlockMask construction (1 x 16 heads x L x 128, ms; median):", "",
             "| mask | tokens | build from structure | build from the grid | flex attention | build / attention | decode-step mask (structure / grid) |",
             "|---|---|---|---|---|---|---|"]
    for b in costs["builds"]:
        lines.append(f"| {b['name']} | {b['length']} | {ms(b['direct'])} | {ms(b['grid'])} | {ms(b['attention'])} | "
                     f"{b['direct'][0] / b['attention'][0]:.4f} | {ms(b['step'])} / {ms(b['step_grid'])} |")
    lines += ["", f"Decode ({args.decode_context}-token prompt, {args.decode_new_tokens} new tokens, batch 1): flex_attention with a "
              f"static cache vs stock sdpa:", "", "| strategy | flex tokens/s | stock sdpa tokens/s | ratio |", "|---|---|---|---|"]
    for d in costs["decode"]:
        lines.append(f"| {d['name']} | {d['tokens_per_s']:.1f} | {d['stock_tokens_per_s']:.1f} | {d['ratio']:.3f} |")
    return lines


def markdown(rows, sparse, args, device_name, compiled=()) -> str:
    lines = [f"Machine: {device_name}; torch {torch.__version__}; Qwen3-0.6B-shaped (hidden 1024, 16 heads, 8 KV heads, "
             f"head_dim 128), {args.layers} layers, vocab {args.vocab}, {args.dtype}; median (min-max) of {args.repeats} runs.", ""]
    if rows:  # empty when one other section was asked for (--only)
        lines += ["| backend | tokens | strategy | prefill ms | vs | ratio | mask build ms | mask bytes | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["kind"] != "prefill":
                continue
            build = f"{r['build'][0] * 1e3:.2f}" if r.get("build") else "-"
            lines.append(f"| {r['backend']} | {r['length']} | {r['strategy']} | {fmt(r['time'])} | {r.get('versus', '-')} | "
                         f"{r['ratio']:.3f} | {build} | {r['mask_bytes']:,} | {r['peak']:.0f} |")
        lines += ["", "| backend | batch | model | decode tokens/s | ratio vs stock |", "|---|---|---|---|---|"]
        for r in rows:
            if r["kind"] == "decode":
                ratio = f"{r['ratio']:.3f}" if "ratio" in r else "1.000"
                lines.append(f"| {r['backend']} | {r['batch']} | {r['strategy']} | {r['tokens_per_s']:.1f} | {ratio} |")
    if compiled:
        lines += ["", f"Compiled static-cache decode (sdpa, generate() with cache_implementation='static' and a fullgraph "
                  f"CompileConfig; prompt 32, {args.new_tokens} new tokens):", "",
                  "| batch | strategy | tokens/s | stock compiled tokens/s | ratio vs stock compiled |", "|---|---|---|---|---|"]
        for r in compiled:
            lines.append(f"| {r['batch']} | {r['strategy']} | {r['tokens_per_s']:.1f} | {r['stock_tokens_per_s']:.1f} | {r['ratio']:.3f} |")
    if sparse:
        lines += ["", f"Attention only, {args.sparse_length} tokens, 16 heads (ms):", "",
                  "| mask | density | flex BlockMask | sdpa dense mask | ideal (unmasked blocks) | flex / dense | flex / ideal |",
                  "|---|---|---|---|---|---|---|"]
        for s in sparse:
            lines.append(f"| {s['name']} | {s['density']:.3f} | {fmt(s['flex'])} | {fmt(s['dense'])} | {fmt(s['ideal'])} | "
                         f"{s['flex'][0] / s['dense'][0]:.2f} | {s['flex'][0] / s['ideal'][0]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    """Runs the benchmark; ``argv``: the command-line arguments, or the Namespace bench_args.parse_args made."""
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    resolve_defaults(args, cuda=torch.cuda.is_available())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(__package__).setLevel(logging.INFO)  # a line per measurement, as it lands: long work shows progress
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch._dynamo.config.automatic_dynamic_shapes = False  # see README: torch 2.13 CPU inductor + dynamic shapes
    torch._dynamo.config.recompile_limit = 256  # static shapes: one compile per length, never the eager fallback
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    wanted = lambda section: args.only in (None, section)  # noqa: E731
    sections = [name for name, on in (("compiled static-cache decode (compiles each strategy)", wanted("compiled") and not args.no_compiled),
                                      ("flex sparsity", wanted("prefill") and not args.no_sparse and "flex_attention" in args.backends),
                                      ("prefill and decode", wanted("prefill")), ("block masks", args.only == "block-masks"),
                                      ("continuous-batching serving", args.only == "serving"),
                                      ("vLLM serving", args.only == "vllm")) if on]
    logger.info("bench: %s on %s, %s, %d layers; sections: %s", ", ".join(args.backends), device_name, args.dtype, args.layers,
                "; ".join(sections))
    compiled = compiled_decode(args) if wanted("compiled") and not args.no_compiled else []
    blocks = block_mask_costs(args) if args.only == "block-masks" else None  # long on CPU: asked for by name
    rows, sparse = [], []
    if args.only in ("serving", "vllm"):  # long on CPU: asked for by name
        if args.only == "serving":
            from .bench_serving import serving_rows as rows_of
        else:
            from .bench_vllm import vllm_rows as rows_of
        table = "\n".join(rows_of(args, build_models))
        print(table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
        return table
    if wanted("prefill"):
        sparse = [] if args.no_sparse or "flex_attention" not in args.backends else attention_sparsity(args)
        rows = run(args)
    table = markdown(rows, sparse, args, device_name, compiled)
    if blocks:
        table += "\n" + "\n".join(markdown_blocks(blocks, args))
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return table
