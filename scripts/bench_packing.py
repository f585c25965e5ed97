"""Packed vs unpacked fine-tuning, measured on exactly what scripts/finetune.py runs with its defaults.

    python scripts/bench_packing.py                    # CPU, the embedded default checkpoint: about a minute
    python scripts/bench_packing.py --model 0.6b-shaped --layers 8 --examples 2000 --extra=--bf16     # on a GPU

Both runs are `scripts/finetune.py` in a fresh process (so peak memory, the process's max RSS, is its own) on
the same model and the same pre-tokenized examples, whose lengths follow a long-tailed (log-normal)
distribution, for one epoch:

* packed:   --recipe configs/packed_sft.yaml (the `document` strategy; rows of the recipe's max_length, 2048,
            packed ahead of training across the dataset with best-fit decreasing), default --batch-size 8;
* unpacked: the same recipe with --no-pack --strategy causal: batches of 8 examples padded to their longest.

--model default is the embedded default checkpoint (qwen3_custom_mask.cli.default: 2 layers, hidden 64, Qwen3's full
151,936-token vocabulary, so the logits dominate: the case the chunked loss is for). --model 0.6b-shaped is
Qwen3-0.6B-shaped (hidden 1024, 16 heads, 8 KV heads, head_dim 128) with --layers layers and a --vocab
vocabulary, saved with save_pretrained and loaded back by the script. Printed: real (non-padding) tokens trained
per second, the padding share, peak memory, as finetune.py logs them, and the ratios. Then the LM head's own share:
the chunked loss (projection, cross-entropy and both gradients) timed alone in this process on one packed batch of
random hidden states (8 x 2048) of the model's width, scaled to the run's labelled tokens. Both runs pay it per
labelled token, padding or not; the rest of the unpacked run is its body, per trained token. Packing removes the
padded tokens. Printed: ``unpacked seconds / head seconds``, the most packing can reach on that model even with a
free body, and an estimate for a packed body as cheap per trained token as unpacked's (``head + body per token x
packed tokens``; not a bound: unpacked's rest also holds the head's per-step costs, ~15% more per labelled token
in its smaller steps, and a loaded machine taxes its 9x more steps).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENS = re.compile(r"tokens: (\d+) real of (\d+) \(([\d.]+)% padding\) in ([\d.]+) s: (\d+) real tokens/s; peak memory (\d+) MiB")


def make_data(path: Path, examples: int, vocab: int, max_length: int, seed: int) -> int:
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.empty(examples).log_normal_(mean=5.0, std=0.9, generator=g).clamp(16, max_length).long().tolist()
    with path.open("w") as f:
        for n in lengths:
            f.write(json.dumps({"input_ids": torch.randint(0, vocab, (n,), generator=g).tolist()}) + "\n")
    return sum(lengths)


def make_model(path: Path, layers: int, vocab: int) -> None:
    import torch
    from transformers import Qwen3ForCausalLM

    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    torch.manual_seed(0)
    config = tiny_qwen3_config(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                               head_dim=128, num_hidden_layers=layers, vocab_size=vocab, initializer_range=0.02,
                               max_position_embeddings=40960, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    Qwen3ForCausalLM(config).save_pretrained(path)


def run(mode: str, model: Path, data: Path, out: Path, extra: list[str]) -> dict:
    args = [sys.executable, str(ROOT / "scripts" / "finetune.py"), "--model", str(model), "--data", str(data),
            "--recipe", str(ROOT / "configs" / "packed_sft.yaml"), "--epochs", "1", "--lr", "1e-5", "--logging-steps", "1000",
            "--output-dir", str(out / mode), *extra]
    if mode == "unpacked":
        args += ["--no-pack", "--strategy", "causal"]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    real, total, padding, seconds, per_second, peak = TOKENS.search(proc.stderr).groups()
    return dict(real=int(real), total=int(total), padding=float(padding), seconds=float(seconds), per_second=int(per_second), peak=int(peak))


def head_seconds(model: Path, labelled: int, extra: list[str]) -> float:
    """Seconds the chunked loss, forward and backward, takes for ``labelled`` tokens on this model's LM head."""
    import time

    import torch
    from transformers import AutoConfig

    from qwen3_custom_mask.model.loss import chunked_causal_lm_loss

    config = AutoConfig.from_pretrained(model)
    device = "cuda" if torch.cuda.is_available() and "--cpu" not in extra else "cpu"
    dtype = torch.bfloat16 if "--bf16" in extra else torch.float32
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device, dtype=dtype)
    tokens = 8 * 2048  # one packed batch: the buffers' allocation is paid per call, as per step in the run
    hidden = torch.randn(1, tokens, config.hidden_size, device=device, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, config.vocab_size, (1, tokens), device=device)
    times = []
    for _ in range(3):  # the first pays the buffers' page faults, as a run's first step does
        start = time.perf_counter()
        chunked_causal_lm_loss(hidden, head, labels).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:]) / (tokens - 1) * labelled  # the last position has no next-token label


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["default", "0.6b-shaped"], default="default")
    parser.add_argument("--examples", type=int, default=320)
    parser.add_argument("--layers", type=int, default=2, help="0.6b-shaped only")
    parser.add_argument("--vocab", type=int, default=8192, help="0.6b-shaped only")
    parser.add_argument("--extra", default="--cpu", help="more scripts/finetune.py arguments, given as --extra=--cpu or --extra=\"--bf16 --attn sdpa\"")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model == "default":
            from qwen3_custom_mask.cli.default import QWEN3_VOCAB, default_checkpoint

            model, vocab, described = default_checkpoint(), QWEN3_VOCAB, "the embedded default (2 layers, hidden 64, vocab 151,936)"
        else:
            model, vocab = tmp / "model", args.vocab
            make_model(model, args.layers, vocab)
            described = f"Qwen3-0.6B-shaped, {args.layers} layers, vocab {vocab}"
        tokens = make_data(tmp / "train.jsonl", args.examples, vocab, 2048, seed=2)
        runs = {mode: run(mode, model, tmp / "train.jsonl", tmp, args.extra.split()) for mode in ("unpacked", "packed")}
        head = head_seconds(model, tokens - args.examples, args.extra.split())  # one unlabelled last token per example
    lines = [f"{args.examples} examples, {tokens} tokens (log-normal lengths, median ~150, max 2048); {described}; "
             f"scripts/finetune.py defaults (batch 8; packed rows of 2048; loss in chunks of 512 tokens); {args.extra}", "",
             "| run | real tokens | trained tokens | padding | seconds | real tokens/s | peak memory |", "|---|---|---|---|---|---|---|"]
    for mode, r in runs.items():
        lines.append(f"| {mode} | {r['real']} | {r['total']} | {r['padding']:.1f}% | {r['seconds']:.1f} | {r['per_second']} | {r['peak']} MiB |")
    speedup = runs["packed"]["per_second"] / runs["unpacked"]["per_second"]
    # Both runs pay the head per labelled token; the rest of a run is its body, per trained token (padding included).
    body_per_token = (runs["unpacked"]["seconds"] - head) / runs["unpacked"]["total"]
    floor_ratio = runs["unpacked"]["seconds"] / (head + body_per_token * runs["packed"]["total"])
    lines += ["", f"packed / unpacked: {speedup:.2f}x real tokens/s, {runs['packed']['peak'] / runs['unpacked']['peak']:.2f}x peak memory",
              f"LM head + loss alone (forward and gradients, {tokens - args.examples} labelled tokens): {head:.1f} s, "
              f"{100 * head / runs['packed']['seconds']:.0f}% of the packed run",
              f"packing can reach at most {runs['unpacked']['seconds'] / head:.2f}x on this model even with a free body; "
              f"about {floor_ratio:.2f}x (an estimate) with the body as cheap per trained token as unpacked's "
              f"({body_per_token * 1e6:.0f} us, which also holds the head's per-step costs)"]
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
