"""Training: batches for the fine-tuning objectives, packing, FSDP2, and the fine-tuning recipe.

    collators.py  causal_lm / prefix_lm_sft / mntp batches (labels -100 on prompts), pack_dataset
    packing.py    pack_examples and PackingCollator: many examples per row with document_ids, best-fit decreasing
    fsdp.py       FSDP2 (fully_shard per decoder layer) training loop and full-state save
    finetune.py   the recipe behind `qwen3-mask finetune` (its arguments: cli/finetune.py)

The loss the causal-LM head computes in chunks lives with the head (model/loss.py).
"""

from ..strategy.presets import OBJECTIVES
from .collators import (
    CausalLMCollator,
    CountingCollator,
    MNTPCollator,
    PrefixLMCollator,
    collator_for,
    pack_dataset,
    prompt_length,
)
from .packing import IGNORE_INDEX, QWEN3_PAD, PackingCollator, best_fit_decreasing, pack_examples, pad_examples

__all__ = [
    "IGNORE_INDEX", "OBJECTIVES", "QWEN3_PAD", "CausalLMCollator", "CountingCollator", "MNTPCollator", "PackingCollator",
    "PrefixLMCollator", "best_fit_decreasing", "collator_for", "pack_dataset", "pack_examples", "pad_examples",
    "prompt_length",
]
