"""Peak memory of one long forward on CPU: a custom strategy against stock, 8192 tokens by default.

    python scripts/long_forward.py [--length 8192] [--layers 4]

Qwen3-0.6B-shaped (hidden 1024, 16 heads, 8 KV heads, head_dim 128), random weights, fp32, sdpa. Each run is a
fresh subprocess; peak memory is the resident-set high-water mark growth during the forward. The custom
strategy's mask is built once per forward (bool, 1 x 1 x L x L) and shared by every layer.
"""

import argparse
import json
import subprocess
import sys
import time

import torch


def worker(args):
    from transformers import Qwen3ForCausalLM

    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.cli.bench_timing import PeakMemory, mask_bytes
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    config = tiny_qwen3_config(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                               head_dim=128, num_hidden_layers=args.layers, vocab_size=32768, initializer_range=0.02,
                               max_position_embeddings=40960)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    if args.mode == "stock":
        model = Qwen3ForCausalLM(config).eval()
    else:
        model = CustomQwen3ForCausalLM(config).eval()
        model.set_mask_strategy(json.loads(args.mode))
    ids = torch.randint(0, 32768, (1, args.length))
    built = 0
    if args.mode != "stock":
        built = mask_bytes(model.model.attention_masks(ids)[0])
    with torch.no_grad(), PeakMemory(torch.device("cpu")) as mem:
        start = time.perf_counter()
        model(ids, logits_to_keep=1, use_cache=False)
        seconds = time.perf_counter() - start
    return {"mode": args.mode, "peak_mib": mem.mib, "seconds": seconds, "mask_bytes": built}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    modes = ["stock", json.dumps({"name": "sliding_window", "window": 1024}), json.dumps("prefix_lm")]
    modes[2] = json.dumps({"name": "attention_sinks", "sinks": 4, "window": 1024})
    print(f"{args.length} tokens, {args.layers} layers, Qwen3-0.6B-shaped, fp32, sdpa, CPU")
    print(f"{'model':<50}{'seconds':>9}{'peak MiB':>10}{'mask MiB':>10}")
    for mode in modes:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{r['mode']:<50}{r['seconds']:>9.1f}{r['peak_mib']:>10.0f}{r['mask_bytes'] / 2**20:>10.0f}")


if __name__ == "__main__":
    main()
