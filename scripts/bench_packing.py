"""Training throughput and memory: packed rows + the `document` strategy against padded batches.

    python scripts/bench_packing.py                    # CPU defaults (a few minutes on 2 cores)
    python scripts/bench_packing.py --device cuda --layers 8 --max-length 4096 --dtype bfloat16

Both runs train the same Qwen3-0.6B-shaped model (hidden 1024, 16 heads, 8 KV heads, head_dim 128; few layers,
reduced vocabulary on CPU) on the same examples, whose lengths follow a long-tailed (log-normal) distribution,
for the same number of real tokens. Padded: batches of --batch-size examples padded to their longest.
Packed: rows of --max-length tokens, several examples each, `document` mask. Each run happens in a fresh
subprocess so peak memory is its own. Printed: real (non-pad) training tokens/s, peak memory, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def lengths(n: int, max_length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    drawn = torch.empty(n).log_normal_(mean=5.0, std=0.9, generator=g)  # median ~150 tokens, long tail
    return drawn.clamp(16, max_length).long().tolist()


def worker(args) -> dict:
    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.packing import PackingCollator, pad_examples
    from qwen3_custom_mask.tiny import tiny_qwen3_config

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = tiny_qwen3_config(
        hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        num_hidden_layers=args.layers, vocab_size=args.vocab, initializer_range=0.02, max_position_embeddings=40960,
    )
    config._attn_implementation = args.attn
    model = CustomQwen3ForCausalLM(config).to(device=device, dtype=dtype).train()
    model.set_mask_strategy("document" if args.mode == "packed" else "causal")
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(0, args.vocab, (n,), generator=g).tolist()} for n in lengths(args.examples, args.max_length, 2)]
    if args.mode == "packed":
        batches = [PackingCollator(max_length=args.max_length, pad_token_id=0)(examples[i : i + args.pack_examples])
                   for i in range(0, len(examples), args.pack_examples)]
    else:
        batches = [pad_examples(examples[i : i + args.batch_size], pad_token_id=0) for i in range(0, len(examples), args.batch_size)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    real_tokens = padded_tokens = 0
    for batch in batches:
        step(batch)
        real_tokens += int(batch["attention_mask"].sum())
        padded_tokens += batch["input_ids"].numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024 + 0.0  # KiB -> MiB, growth while training
    seconds = time.perf_counter() - start
    return {"mode": args.mode, "tokens_per_s": real_tokens / seconds, "peak_mib": peak, "steps": len(batches),
            "real_tokens": real_tokens, "slots": padded_tokens, "seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--attn", default="sdpa", help="sdpa or eager (flex_attention on CUDA)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8, help="padded: examples per batch")
    parser.add_argument("--pack-examples", type=int, default=24, help="packed: examples per collator call")
    parser.add_argument("--mode", choices=["packed", "padded"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    results = {}
    for mode in ("padded", "packed"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    ls = lengths(args.examples, args.max_length, 2)
    print(f"{args.examples} examples, lengths median {sorted(ls)[len(ls) // 2]}, max {max(ls)} (log-normal); "
          f"{args.layers} layers, hidden 1024, vocab {args.vocab}, {args.attn}, {args.dtype}, {args.device}")
    print(f"{'mode':<8}{'steps':>7}{'pad share':>11}{'tokens/s':>11}{'peak MiB':>11}")
    for mode, r in results.items():
        print(f"{mode:<8}{r['steps']:>7}{1 - r['real_tokens'] / r['slots']:>10.0%}{r['tokens_per_s']:>11.0f}{r['peak_mib']:>11.0f}")
    p, q = results["packed"], results["padded"]
    print(f"packed/padded: throughput x{p['tokens_per_s'] / q['tokens_per_s']:.2f}, peak memory x{p['peak_mib'] / max(q['peak_mib'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
