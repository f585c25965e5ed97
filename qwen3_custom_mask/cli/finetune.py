"""Fine-tuning with a custom attention mask (HF Trainer; full or LoRA): `scripts/finetune.py`, `qwen3-mask finetune`.

    # packed SFT, no attention across examples (recipe: configs/packed_sft.yaml)
    python scripts/finetune.py --model Qwen/Qwen3-0.6B --recipe configs/packed_sft.yaml --data train.jsonl --output-dir out

    # LLM2Vec-style bidirectional MNTP with LoRA
    python scripts/finetune.py --model Qwen/Qwen3-0.6B --recipe configs/bidirectional_llm2vec.yaml --data wiki.txt --lora

    # several GPUs (DDP), unchanged script
    accelerate launch --multi_gpu --num_processes 8 scripts/finetune.py ...    # or: torchrun --nproc_per_node 8 ...

    # FSDP2: every decoder layer sharded with PyTorch's fully_shard (bf16 mixed precision on GPU), same launchers
    torchrun --nproc_per_node 8 scripts/finetune.py ... --fsdp [--gradient-checkpointing]

Data: a local .json/.jsonl/.txt file or a `datasets` hub name, with a ``text`` column (or --text-field), or
``prompt`` + ``completion`` columns (labels on the completion only), or pre-tokenized ``input_ids`` (optional
``prompt_length``). The strategy comes from --strategy (a name, a JSON spec, or a configs/ file) or the
recipe's ``mask_strategy``; the recipe's ``training`` section sets the objective (causal_lm, prefix_lm_sft,
mntp), packing and max length, and command-line flags override it. The saved checkpoint's config.json records
the strategy, so ``from_pretrained(output_dir)`` brings it back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from ..strategy.presets import OBJECTIVES, describe, recipe_path
from .args import OneLineParser, run_script

# torch, transformers and the model code are imported by main() once the arguments are checked: `--help`, a
# missing --model or --data answer in a fraction of a second, not after seconds of imports.


def parse_args(argv=None):
    prog = "qwen3-mask finetune" if os.path.basename(sys.argv[0] if sys.argv else "") == "qwen3-mask" else None
    parser = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    listing = "--list-recipes" in (sys.argv[1:] if argv is None else argv)  # the one flag that needs neither
    parser.add_argument("--model", required=not listing, help="checkpoint directory or hub id (official Qwen3 layout); the "
                        "embedded default's folder: python -c 'import qwen3_custom_mask as q; print(q.default_checkpoint())'")
    parser.add_argument("--data", required=not listing, help="local .json/.jsonl/.txt file or a datasets hub name")
    parser.add_argument("--recipe", help="a shipped recipe by name (packed_sft, prefix_lm, ...; see --list-recipes) "
                                         "or a .yaml file: mask_strategy + training defaults")
    parser.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    parser.add_argument("--strategy", help="mask strategy: a name, a JSON spec, or a .json/.yaml file (overrides the recipe)")
    parser.add_argument("--objective", choices=OBJECTIVES, help="training objective (default: from the recipe, else causal_lm)")
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None, help="pack examples into rows (document strategy)")
    parser.add_argument("--max-length", type=int, help="row / example length in tokens (default: recipe, else 1024)")
    parser.add_argument("--mask-probability", type=float, help="mntp: fraction of tokens masked")
    parser.add_argument("--loss-chunk-size", type=int, help="tokens per chunk of the loss computed without the full "
                                                              "logits (default: recipe, else 512; 0: stock's full logits)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--tokenizer", help="tokenizer path (default: the model's)")
    parser.add_argument("--output-dir", default="finetuned")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=8, help="examples per device per step")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--attn", default="sdpa", choices=("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3"),
                        help="attn_implementation (flex_attention trains on GPU only)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (PEFT) and merge them into the saved model")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on where the GPU supports it")
    parser.add_argument("--fsdp", action="store_true",
                        help="shard with FSDP2 (fully_shard per Qwen3DecoderLayer) across the launched processes")
    parser.add_argument("--data-order", choices=["random", "sequential"], default="random",
                        help="example order (sequential: the same global batches for any number of processes)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logging-steps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.list_recipes:
        print(describe())
        raise SystemExit(0)
    return args


def looks_local(text: str) -> bool:
    """A path rather than a hub id: absolute, ./ or ~, a file suffix, or not of the form ``owner/name``."""
    return (os.path.isabs(text) or text.startswith((".", "~")) or Path(text).suffix in (".json", ".jsonl", ".txt", ".yaml")
            or re.fullmatch(r"[\w.-]+/[\w.-]+", text) is None)


def check_args(args) -> None:
    """Every mistake that needs no model, reported together in one line before anything heavy is imported (a
    missing extra, a path, a strategy); a local-looking path that does not exist is never tried on the Hub."""
    import importlib.util

    problems = []
    missing = [name for name in ("datasets", *(("peft",) if args.lora else ())) if importlib.util.find_spec(name) is None]
    if missing:
        problems.append(f"finetune needs {' and '.join(missing)}: pip install 'qwen3-custom-mask[train]'")
    model = os.path.expanduser(args.model)
    if (looks_local(args.model) or os.path.exists(model)) and not os.path.isfile(os.path.join(model, "config.json")):
        what = "no such folder" if not os.path.isdir(model) else "the folder has no config.json"
        problems.append(f"--model {args.model}: {what} (a checkpoint folder, or a hub id like Qwen/Qwen3-0.6B)")
    data = os.path.expanduser(args.data)
    if looks_local(args.data) and not os.path.isfile(data):
        problems.append(f"--data {args.data}: no such file (a local .json/.jsonl/.txt file, or a datasets hub name like owner/name)")
    if args.loss_chunk_size is not None and args.loss_chunk_size < 0:
        problems.append(f"--loss-chunk-size {args.loss_chunk_size}: a number of tokens (e.g. 512), or 0 for stock's full logits")
    for flag in ("max_length", "batch_size", "grad_accum", "lora_r"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            problems.append(f"--{flag.replace('_', '-')} {value}: give at least 1")
    if args.recipe:
        try:
            args.recipe = str(recipe_path(args.recipe))
        except FileNotFoundError as err:
            problems.append(str(err))
    if args.strategy:
        from ..strategy import resolve_strategy

        try:
            resolve_strategy(json.loads(args.strategy) if args.strategy.lstrip().startswith(("{", "[")) else args.strategy)
        except (ValueError, TypeError, KeyError, OSError) as err:
            problems.append(f"--strategy: {' '.join(str(err.args[0] if isinstance(err, KeyError) else err).split())}")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def main(argv=None):
    """Parses and checks the arguments (torch-free), then runs the recipe (training/finetune.py)."""
    args = parse_args(argv)
    check_args(args)
    from ..training.finetune import train

    return train(args)


if __name__ == "__main__":
    sys.exit(run_script(main))
