"""The fine-tuning recipe behind `qwen3-mask finetune` and `scripts/finetune.py` (arguments: cli/finetune.py):
load the checkpoint, set the strategy, tokenize (and pack) the data, train with HF Trainer (full or LoRA) or
FSDP2 (fsdp.py), save a plugin checkpoint whose config.json records the strategy, and check it reloads with it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .collators import CountingCollator, collator_for, pack_dataset  # the training package imports torch anyway
from .packing import IGNORE_INDEX

logger = logging.getLogger("finetune")


def load_recipe(args):
    import yaml

    from ..model.loss import DEFAULT_CHUNK_SIZE
    from ..strategy import resolve_strategy

    recipe = {}
    if args.recipe:
        data = yaml.safe_load(Path(args.recipe).read_text()) or {}
        recipe = dict(data.get("training") or {})
        if args.strategy is None:
            args.strategy = args.recipe
    training = {
        "objective": args.objective or recipe.get("objective", "causal_lm"),
        "pack": args.pack if args.pack is not None else bool(recipe.get("pack", False)),
        "max_length": args.max_length or int(recipe.get("max_length", 1024)),
        "mask_probability": args.mask_probability or float(recipe.get("mask_probability", 0.2)),
        "loss_chunk_size": args.loss_chunk_size if args.loss_chunk_size is not None else int(recipe.get("loss_chunk_size", DEFAULT_CHUNK_SIZE)),
    }
    strategy = args.strategy
    if strategy and strategy.lstrip().startswith("{"):
        strategy = json.loads(strategy)
    return resolve_strategy(strategy), training


def load_data(args):
    from datasets import load_dataset

    path = Path(args.data).expanduser()
    if path.suffix in (".json", ".jsonl") and path.is_file():
        return load_dataset("json", data_files=str(path), split="train")
    if path.suffix == ".txt" and path.is_file():
        return load_dataset("text", data_files=str(path), split="train")
    if path.exists():
        raise SystemExit(f"error: {args.data}: use a .json, .jsonl or .txt file, or a datasets hub name")
    return load_dataset(args.data, split="train")


def with_prompt_columns(example):
    """``prompt_length`` as model inputs: labels -100 on the prompt, ``prefix_lengths`` = the prompt's length.

    Trainer keeps only the columns forward() names (remove_unused_columns=True, its default): these are.
    """
    ids, prompt = list(example["input_ids"]), int(example["prompt_length"])
    labels = list(example["labels"]) if example.get("labels") is not None else list(ids)
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + labels[prompt:], "prefix_lengths": prompt}


def tokenize(dataset, args, tokenizer):
    columns = dataset.column_names
    if "input_ids" in columns:
        if "prompt_length" in columns:
            return dataset.map(with_prompt_columns, remove_columns=["prompt_length"], desc="prompt labels")
        return dataset
    if tokenizer is None:
        raise SystemExit(f"error: {args.model} has no tokenizer; pass --tokenizer, or pre-tokenized data (input_ids)")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    if {"prompt", "completion"} <= set(columns):
        def encode(example):
            prompt = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
            completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"] + eos
            return with_prompt_columns({"input_ids": prompt + completion, "prompt_length": len(prompt)})
    elif args.text_field in columns:
        def encode(example):
            return {"input_ids": tokenizer(example[args.text_field], add_special_tokens=False)["input_ids"] + eos}
    else:
        raise SystemExit(f"error: the data has columns {columns}; expected '{args.text_field}', prompt+completion, or input_ids")
    return dataset.map(encode, remove_columns=columns, desc="tokenizing")


def log_throughput(collator: CountingCollator, seconds: float) -> None:
    """Real tokens trained per second (this process), and the padding share of what it trained on."""
    import resource

    import torch

    padding = 100 * (1 - collator.real / max(collator.total, 1))
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    logger.info("tokens: %d real of %d (%.1f%% padding) in %.1f s: %.0f real tokens/s; peak memory %d MiB", collator.real,
                collator.total, padding, seconds, collator.real / seconds, peak)


def train(args):
    """Runs the recipe on checked arguments (cli/finetune.py's parse_args and check_args)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from ..model import CustomQwen3ForCausalLM
    from ..model.compat import checkpointing_argument

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    strategy, training = load_recipe(args)
    if args.fsdp and args.lora:
        raise SystemExit("error: --lora merges the adapters into the full model on one process; train LoRA with DDP "
                         "(several processes without --fsdp) or full weights with --fsdp")
    use_cuda = torch.cuda.is_available() and not args.cpu
    if args.attn == "flex_attention" and not use_cuda:
        raise SystemExit("error: flex_attention has no backward pass on CPU; use --attn sdpa or eager (or a GPU)")
    bf16 = args.bf16 if args.bf16 is not None else (use_cuda and torch.cuda.is_bf16_supported())

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    except (OSError, ValueError):
        tokenizer = None
    pad_token_id = (tokenizer.pad_token_id if tokenizer and tokenizer.pad_token_id is not None else None)
    model = CustomQwen3ForCausalLM.from_pretrained(args.model, attn_implementation=args.attn, dtype=torch.bfloat16 if bf16 else torch.float32)
    # Set after loading: the run saves a plugin checkpoint (adapters merged), so no rebuild warning is due.
    model.set_mask_strategy(strategy)
    model.config.use_cache = False  # no KV cache while training
    # The loss from the hidden states, 512 tokens at a time (loss.py): a 151k vocabulary's full logits are the
    # largest activation of a step (8 x 2048 tokens: 10 GB in fp32). Not saved: the checkpoint returns logits.
    model.config.loss_chunk_size = training["loss_chunk_size"] or None
    if pad_token_id is None:
        eos = model.generation_config.eos_token_id
        pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    logger.info("strategy %s, objective %s, pack=%s, max_length %d, loss_chunk_size %s", strategy.to_dict(), training["objective"],
                training["pack"], training["max_length"], model.config.loss_chunk_size)
    if training["pack"] and "document" not in json.dumps(strategy.to_dict()):
        logger.warning("Packing without the 'document' strategy lets packed examples attend to each other.")

    if args.lora:
        import warnings

        from peft import LoraConfig, get_peft_model

        # PEFT and Trainer still call transformers' gradient_checkpointing_* names, which 5.2x renamed: a
        # FutureWarning about their code, not the recipe's, on every LoRA run.
        warnings.filterwarnings("ignore", message=r"`(is_gradient_checkpointing|gradient_checkpointing_\w+)` is deprecated",
                                category=FutureWarning)

        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        model.print_trainable_parameters()

    dataset = tokenize(load_data(args), args, tokenizer)
    if training["pack"]:
        dataset = pack_dataset(dataset, training["max_length"], pad_token_id)
    collator = CountingCollator(collator_for(
        training["objective"],
        pack=training["pack"],
        max_length=training["max_length"],
        pad_token_id=pad_token_id,
        mask_token_id=pad_token_id,
        mask_probability=training["mask_probability"],
    ))
    if args.fsdp:
        from . import fsdp

        start = time.perf_counter()
        result = fsdp.train(
            model, dataset, collator, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps, epochs=args.epochs,
            bf16=bf16, gradient_checkpointing=args.gradient_checkpointing, data_order=args.data_order, seed=args.seed,
            logging_steps=args.logging_steps, grad_accum=args.grad_accum,
        )
        log_throughput(collator, time.perf_counter() - start)
        world = torch.distributed.get_world_size()
        logger.info("processes: %d (fsdp2), device %s, bf16=%s", world, "cuda" if use_cuda else "cpu", bf16)
        logger.info("train loss %.4f after %d steps", result.training_loss, result.global_step)
        logger.info("fsdp2: %d decoder layers sharded (fully_shard) over %d processes", result.sharded_layers, world)
        saved = fsdp.save_full(model, args.output_dir)
        torch.distributed.destroy_process_group()  # before exit: gloo's threads torn down mid-exit can abort a rank
        if not saved:
            return result
    else:
        training_args = TrainingArguments(
            output_dir=args.output_dir,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=args.grad_accum,
            learning_rate=args.lr,
            logging_steps=args.logging_steps,
            save_strategy="no",
            report_to="none",
            **{checkpointing_argument(): args.gradient_checkpointing},
            bf16=bf16,
            use_cpu=not use_cuda,
            seed=args.seed,
            train_sampling_strategy=args.data_order,
            ddp_find_unused_parameters=False,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
        logger.info("processes: %d (%s), device %s, bf16=%s", training_args.world_size, training_args.parallel_mode.value, training_args.device, bf16)
        start = time.perf_counter()
        result = trainer.train()
        log_throughput(collator, time.perf_counter() - start)
        # Trainer's training_loss is each process's own average unless a logging step reduced it: report the mean.
        loss = trainer.accelerator.reduce(torch.tensor(result.training_loss, device=training_args.device), reduction="mean")
        logger.info("train loss %.4f after %d steps", float(loss), result.global_step)
        if not trainer.is_world_process_zero():
            return result
        final = trainer.model
        if args.lora:
            final = final.merge_and_unload()
        final.config.use_cache = True
        final.config.loss_chunk_size = None
        final.save_pretrained(args.output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.output_dir)
    reloaded = CustomQwen3ForCausalLM.from_pretrained(args.output_dir)
    if reloaded.mask_strategy != strategy:
        raise SystemExit(f"error: the saved model reloads with {reloaded.mask_strategy.to_dict()}, not {strategy.to_dict()}")
    logger.info("saved to %s (mask_strategy %s)", args.output_dir, reloaded.mask_strategy.to_dict())
    return result

