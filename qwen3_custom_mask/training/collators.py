"""Batch builders for the fine-tuning objectives in ``configs/`` (used by scripts/finetune.py and the Trainer).

Every example is a dict with ``input_ids`` and optionally ``labels`` and the prompt's length (tokens at the start
of ``input_ids``): ``prefix_lengths`` (what scripts/finetune.py writes) or ``prompt_length``. forward() names both
in its signature, so Trainer's default remove_unused_columns=True keeps them for the collator (forward() refuses
a prompt_length handed on to it). Labels follow transformers' convention: aligned with ``input_ids``,
shifted inside the model's loss, -100 = ignored.

* causal_lm       right-padded rows, labels = input_ids (-100 on the prompt when its length is given)
* causal_lm+pack  rows packed ahead of training across the dataset (`pack_dataset`, best-fit decreasing) for
                  the ``document`` strategy; the collator only stacks them
* prefix_lm_sft   as causal_lm, plus ``prefix_lengths`` = prompt lengths for the ``prefix_lm`` strategy
* mntp            LLM2Vec's masked next-token prediction: a random ``mask_probability`` of the tokens is
                  replaced by ``mask_token_id`` and only those are labelled (predicted from the position
                  before, as the shifted loss does), for the ``bidirectional`` strategy
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transformers import default_data_collator

from .packing import IGNORE_INDEX, QWEN3_PAD, pack_examples  # noqa: F401

from ..strategy.presets import OBJECTIVES


def prompt_length(feature: dict) -> int | None:
    value = feature.get("prefix_lengths", feature.get("prompt_length"))
    return None if value is None else int(value)


def _pad(features: list[dict], pad_token_id: int, max_length: int | None, prompt_labels: bool):
    rows = [list(f["input_ids"])[: max_length or None] for f in features]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    prompts = torch.zeros(len(rows), dtype=torch.long)
    for i, (f, row) in enumerate(zip(features, rows)):
        n = len(row)
        ids[i, :n] = torch.tensor(row)
        mask[i, :n] = 1
        own = f.get("labels")
        labels[i, :n] = torch.tensor(list(own)[:n]) if own is not None else ids[i, :n]
        prompts[i] = min(int(prompt_length(f) or 0), n)
        if not prompt_labels:
            labels[i, : prompts[i]] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}, prompts


@dataclass
class CausalLMCollator:
    pad_token_id: int = QWEN3_PAD
    max_length: int | None = None

    def __call__(self, features):
        batch, _ = _pad(features, self.pad_token_id, self.max_length, prompt_labels=False)
        return batch


@dataclass
class PrefixLMCollator:
    """Padded rows plus ``prefix_lengths``: the prompt is the bidirectional prefix and gets no labels."""

    pad_token_id: int = QWEN3_PAD
    max_length: int | None = None

    def __call__(self, features):
        if any(prompt_length(f) is None for f in features):
            raise ValueError(
                "prefix_lm_sft needs each example's prompt length: a prefix_lengths (or prompt_length) column, or "
                "prompt/completion fields for scripts/finetune.py. (Trainer's remove_unused_columns=True keeps both: "
                "forward() names them.)"
            )
        batch, prompts = _pad(features, self.pad_token_id, self.max_length, prompt_labels=False)
        batch["prefix_lengths"] = prompts
        return batch


@dataclass
class MNTPCollator:
    """Masked next-token prediction (LLM2Vec): masked inputs, labels only where a token was masked."""

    mask_token_id: int
    mask_probability: float = 0.2
    pad_token_id: int = QWEN3_PAD
    max_length: int | None = None

    def __call__(self, features):
        batch, _ = _pad(features, self.pad_token_id, self.max_length, prompt_labels=True)
        real = batch["attention_mask"].bool()
        chosen = (torch.rand(batch["input_ids"].shape) < self.mask_probability) & real
        chosen[:, 0] = False  # the first token has no position before it to be predicted from
        batch["labels"] = torch.where(chosen, batch["input_ids"], IGNORE_INDEX)
        batch["input_ids"] = torch.where(chosen, self.mask_token_id, batch["input_ids"])
        return batch


def pack_dataset(dataset, max_length: int, pad_token_id: int):
    """A tokenized ``datasets.Dataset`` packed ahead of training, across the whole dataset (best-fit decreasing):
    rows of ``max_length`` tokens with input_ids, labels, position_ids, document_ids, attention_mask."""
    return dataset.map(pack_examples, batched=True, batch_size=None, remove_columns=dataset.column_names, desc="packing",
                       fn_kwargs={"max_length": max_length, "pad_token_id": pad_token_id})


@dataclass
class CountingCollator:
    """Wraps a collator and counts the real (attention_mask 1) and total tokens it hands to training."""

    collator: object
    real: int = 0
    total: int = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.real += int(batch["attention_mask"].sum())
        self.total += batch["attention_mask"].numel()
        return batch


def collator_for(objective: str, *, pack: bool, max_length: int, pad_token_id: int, mask_token_id: int | None = None, mask_probability: float = 0.2):
    """The collator of an objective (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown training objective {objective!r}; known: {', '.join(OBJECTIVES)}.")
    if pack and objective != "causal_lm":
        raise ValueError(f"Packing works with the causal_lm objective and the 'document' strategy, not {objective!r}.")
    if pack:  # rows packed ahead of training (pack_dataset): they only need stacking
        return default_data_collator
    if objective == "prefix_lm_sft":
        return PrefixLMCollator(pad_token_id, max_length)
    if objective == "mntp":
        return MNTPCollator(mask_token_id if mask_token_id is not None else pad_token_id, mask_probability, pad_token_id, max_length)
    return CausalLMCollator(pad_token_id, max_length)
