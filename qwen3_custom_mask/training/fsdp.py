"""FSDP2 fine-tuning: PyTorch's ``fully_shard`` on every decoder layer, launched by torchrun or accelerate.

Used by scripts/finetune.py for ``--fsdp``. Accelerate (1.15) enables FSDP only for GPU-like devices, so the
Trainer cannot shard on CPU; this loop shards with PyTorch's FSDP2 itself, on any device, and does one optimizer
step the way Trainer's defaults do (AdamW, linear decay, gradient clipping at max_grad_norm, the loss averaged
over every label token of the global batch), so a 2-process run equals a 1-process Trainer run on the same
global batch (tested in CI on CPU with gloo). The mask strategy lives in the model's config and its per-call
inputs (``document_ids``...) travel in each rank's batch, so every rank trains on the same mask.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup, set_seed

logger = logging.getLogger("finetune")


@dataclass
class FSDPResult:
    training_loss: float
    global_step: int
    sharded_layers: int


def shard(model, bf16: bool) -> int:
    """fully_shard each decoder layer, then the root (embeddings, norm, head). Returns how many decoder layers
    now hold only their shard (DTensor parameters)."""
    from torch.distributed.tensor import DTensor

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    layers = model.model.layers
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return sum(all(isinstance(p, DTensor) for p in layer.parameters()) for layer in layers)


def train(model, dataset, collator, *, batch_size: int, lr: float, max_steps: int, epochs: float, bf16: bool,
          gradient_checkpointing: bool, data_order: str, seed: int, logging_steps: int, grad_accum: int = 1,
          max_grad_norm: float = 1.0) -> FSDPResult:
    """Trains ``model`` in place with FSDP2 over the launched processes (see the module docstring).

    One optimizer step takes ``grad_accum`` micro-batches of ``batch_size`` on every rank (a global batch of
    batch_size x grad_accum x processes); gradients are reduced once, on the last micro-batch."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    set_seed(seed)  # as Trainer does on every process: random objectives (MNTP masking) repeat run to run
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sharded = shard(model, bf16)
    model.train()

    # Rank r takes batches r, r + world, ... of the dataset's order: the global batch is world consecutive batches,
    # as Trainer's distributed dataloader makes it.
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=data_order == "random", seed=seed, drop_last=True)
    order = list(range(len(dataset)))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler if data_order == "random" else _interleaved(order, batch_size, world, rank), collate_fn=collator)
    if len(loader) < grad_accum:  # no whole global batch in an epoch: the loop would never take a step
        raise SystemExit(f"error: each process gets {len(loader)} batches of {batch_size} per epoch, fewer than "
                         f"--grad-accum {grad_accum}; lower --grad-accum or --batch-size, or add data")
    steps = max_steps if max_steps > 0 else max(1, int(len(loader) // grad_accum * epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=steps)

    losses, step, epoch = [], 0, 0
    progress = tqdm(total=steps, disable=rank != 0)
    while step < steps:
        if data_order == "random":
            sampler.set_epoch(epoch)
        micro = iter(loader)
        while step < steps:
            group = [b for _, b in zip(range(grad_accum), micro)]
            if len(group) < grad_accum:  # the epoch's last, incomplete global batch is dropped (drop_last)
                break
            group = [{k: v.to(device) for k, v in batch.items()} for batch in group]
            # The loss of the global batch: every rank's label-token sum over the global count of label tokens.
            count = sum((batch["labels"][..., 1:] != -100).sum() for batch in group)
            dist.all_reduce(count)
            total = torch.zeros((), device=device)
            for index, batch in enumerate(group):
                model.set_requires_gradient_sync(index == len(group) - 1)
                loss = model(**batch, num_items_in_batch=count).loss * world  # FSDP2 averages gradients over ranks
                loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            reported = total / world
            dist.all_reduce(reported)
            losses.append(reported.item())
            step += 1
            progress.update(1)
            if rank == 0 and (step % logging_steps == 0 or step == steps):
                logger.info("step %d: loss %.4f", step, losses[-1])
        epoch += 1
    progress.close()
    return FSDPResult(training_loss=sum(losses) / len(losses), global_step=step, sharded_layers=sharded)


def _interleaved(order: list[int], batch_size: int, world: int, rank: int) -> list[int]:
    """Sequential order: this rank's examples of batches rank, rank + world, ... (whole global batches only)."""
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    usable = len(batches) - len(batches) % world
    return [index for b in range(rank, usable, world) for index in batches[b]]


def save_full(model, output_dir: str) -> bool:
    """Gathers the full state dict on rank 0 and writes it there in the official layout; True on rank 0."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        dist.barrier()
        return False
    if model.config.tie_word_embeddings:  # the official layout stores a tied head once, as the embeddings
        for key in model._tied_weights_keys or {}:
            state.pop(key, None)
    model.config.use_cache = True
    model.config.loss_chunk_size = None  # a training setting (finetune.py), not the checkpoint's
    model.save_pretrained(output_dir, state_dict=state)
    dist.barrier()
    return True
