"""Speed and memory against stock `Qwen3ForCausalLM` on the same weights, in one run (`qwen3-mask bench`).

    qwen3-mask bench                         # CPU: Qwen3-0.6B-shaped, 2 layers, fp32 (a few minutes on 2 cores)
    qwen3-mask bench --quick                 # smaller lengths and fewer repeats (a smoke run)
    python scripts/benchmark.py --device cuda --layers 28 --dtype bfloat16 --markdown bench.md

Measured, each as the median with min-max over --repeats:
* prefill latency (--lengths) for stock and for every strategy x backend; a custom strategy is compared with
  stock given the equivalent precomputed 4D mask (built outside the timed region, as a user would cache it);
* greedy decode tokens/s (batch 1 and 8, --new-tokens) for the default strategy against stock;
* compiled static-cache decode tokens/s (generate()'s auto-compiled forward, sdpa) for causal, sliding_window,
  prefix_lm and document against stock compiled, batch 1 and 8;
* mask construction time per forward and the bytes of the mask each backend receives;
* peak memory of each prefill (CUDA: allocator peak; Linux CPU: resident-set high-water mark, reset per run);
* flex_attention: attention time of sliding_window(256) and document(8 docs) against sdpa with a dense mask
  and against the ideal (sdpa over the unmasked blocks only);
* --only serving: continuous-batching throughput (plugin vs stock, strategies vs stock causal, and against
  one-by-one generate() at 16, 32 and 64 requests; bench_serving.py).
* --only vllm: the plugin on vLLM (plugin causal and each native strategy against stock Qwen3 on vLLM, and vLLM
  against transformers' continuous batching; bench_vllm.py). Needs vLLM installed beside the plugin.
"""

# torch-free: `qwen3-mask bench --help` and argument mistakes answer before torch is imported (benchmark.py runs).
from __future__ import annotations

import argparse

from .args import OneLineParser
from .checks import BACKENDS  # torch-free, as this module

DTYPES = ("float32", "bfloat16", "float16")  # the benchmark's (generate's also takes float64)


def device_name(text: str) -> str:
    import re

    if not re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N")
    return text


STRATEGY_NAMES = ("causal", "sliding_window(256)", "prefix_lm(half)", "document(8 docs)", "attention_sinks(4, 256)")


def parse_args(argv=None):
    parser = OneLineParser(prog="qwen3-mask bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, type=device_name, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--layers", type=int, default=None, help="default: 2 on CPU (serving: 4), 8 on CUDA")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS,
                        help="default: eager sdpa flex_attention (--quick: eager sdpa)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGY_NAMES), choices=STRATEGY_NAMES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparse-length", type=int, default=4096)
    parser.add_argument("--no-sparse", action="store_true", help="skip the flex sparsity comparison")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled static-cache decode comparison")
    parser.add_argument("--only", choices=["prefill", "compiled", "block-masks", "serving", "vllm"],
                        help="run one section only (serving: continuous-batching throughput against stock; vllm: the "
                        "plugin on vLLM against stock on vLLM, needs vLLM installed; both asked for by name)")
    parser.add_argument("--block-lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--grid-limit", type=int, default=8192, help="longest length whose grid-built BlockMask is timed")
    parser.add_argument("--serving-repeats", type=int, default=5, help="alternated rounds of the serving section")
    parser.add_argument("--decode-context", type=int, default=1024)
    parser.add_argument("--decode-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a smoke run (1-2 minutes on 2 CPU cores): prefill and "
                        "decode only (no compiled or flex sections unless asked for), lengths 128/256, 8 new tokens, 2 repeats")
    parser.add_argument("--markdown", help="write the Markdown tables to this file")
    return parser.parse_args(argv)


def resolve_defaults(args, cuda: bool):
    """The defaults that depend on the device (torch is imported by then)."""
    args.device = args.device or ("cuda" if cuda else "cpu")
    on_cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    args.layers = args.layers or (8 if on_cuda else 4 if args.only in ("serving", "vllm") else 2)
    if args.quick:
        args.lengths, args.new_tokens, args.repeats, args.sparse_length, args.vocab = [128, 256], 8, 2, 512, 4096
        args.backends = args.backends or ["eager", "sdpa"]  # flex compiles per shape on CPU: minutes, not a smoke run
        args.no_compiled = args.no_compiled or args.only != "compiled"
    args.backends = args.backends or ["eager", "sdpa", "flex_attention"]
    return args
