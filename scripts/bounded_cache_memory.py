"""KV-cache memory of long generation: BoundedCache against DynamicCache, same mask, same tokens.

    python scripts/bounded_cache_memory.py --new-tokens 1024 --sinks 4 --window 128

Builds a Qwen3-0.6B-shaped model with few layers (random weights, CPU, fp32), generates greedily with
``attention_sinks`` under both caches, checks the tokens are identical and prints the cache sizes.
"""

import argparse
import time

import torch
from transformers import DynamicCache

from qwen3_custom_mask import BoundedCache, CustomQwen3ForCausalLM
from qwen3_custom_mask.cli.tiny import tiny_qwen3_config


def cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--backend", default="sdpa")
    args = parser.parse_args()
    config = tiny_qwen3_config(
        hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        num_hidden_layers=args.layers, vocab_size=4096, initializer_range=0.02, max_position_embeddings=32768,
    )
    torch.manual_seed(0)
    model = CustomQwen3ForCausalLM(config).eval()
    model.config._attn_implementation = args.backend
    model.set_mask_strategy({"name": "attention_sinks", "sinks": args.sinks, "window": args.window})
    prompt = torch.randint(0, 4000, (1, 32))
    rows = []
    for name, cache in (("DynamicCache", DynamicCache()), ("BoundedCache", BoundedCache())):
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, past_key_values=cache)
        rows.append((name, out, cache_bytes(cache), cache.layers[0].keys.shape[-2], time.perf_counter() - start))
    assert torch.equal(rows[0][1], rows[1][1]), "bounded and unbounded caches produced different tokens"
    print(f"attention_sinks(sinks={args.sinks}, window={args.window}), {args.new_tokens} new tokens, {args.layers} layers, {args.backend}")
    print(f"{'cache':<14}{'positions kept':>16}{'KV bytes':>14}{'seconds':>10}")
    for name, _, size, kept, seconds in rows:
        print(f"{name:<14}{kept:>16}{size / 2**20:>11.1f} MiB{seconds:>10.1f}")
    print(f"tokens identical: yes; memory ratio bounded/unbounded = {rows[1][2] / rows[0][2]:.3f}")


if __name__ == "__main__":
    main()
