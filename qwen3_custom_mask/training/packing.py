"""Packing: tokenized examples into fixed-length rows for the ``document`` strategy.

Each row holds whole examples back to back, then padding::

    input_ids     a a a b b c c c P P
    position_ids  0 1 2 0 1 0 1 2 0 0     restart per document, so RoPE sees each one alone
    document_ids  0 0 0 1 1 2 2 2 -1 -1   padding is its own "document" (-1)
    attention_mask 1 1 1 1 1 1 1 1 0 0
    labels        a a a - b - c c - -     -100 at each document's first token (it would be predicted from
                                          the previous document) and on padding

Labels are shifted inside the model's loss (token t predicts label t+1), so masking the first token of each
document is what stops the loss crossing a boundary. Examples that bring their own ``labels`` (e.g. -100 on
the prompt for SFT) keep them.

Two ways in:
    * ahead of training, across the dataset (what scripts/finetune.py does): ``dataset.map(pack_examples,
      batched=True, batch_size=None, fn_kwargs={"max_length": 2048}, remove_columns=dataset.column_names)``, then
      any collator that stacks fixed-length rows (``transformers.default_data_collator``). Best-fit decreasing fills
      rows almost completely (under 1% padding on a long-tailed length mix, see scripts/bench_packing.py);
    * ``Trainer(data_collator=PackingCollator(max_length=2048))``, which packs each batch of examples on the fly
      (only the examples of one batch: more padding).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
QWEN3_PAD = 151643  # <|endoftext|>: Qwen3 has no separate pad token
COLUMNS = ("input_ids", "labels", "position_ids", "document_ids", "attention_mask")


def _pieces(examples: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None, max_length: int, overflow: str):
    """(input_ids, labels) per document, overflow handled: every piece fits in a row."""
    pieces = []
    for index, ids in enumerate(examples):
        ids = list(ids)
        lab = list(labels[index]) if labels is not None else list(ids)
        if len(lab) != len(ids):
            raise ValueError(f"Example {index}: labels has {len(lab)} entries but input_ids has {len(ids)}.")
        if not ids:
            continue
        if len(ids) <= max_length:
            pieces.append((ids, lab))
        elif overflow == "truncate":
            pieces.append((ids[:max_length], lab[:max_length]))
        elif overflow == "split":
            pieces += [(ids[i : i + max_length], lab[i : i + max_length]) for i in range(0, len(ids), max_length)]
        else:
            raise ValueError(
                f"Example {index} has {len(ids)} tokens, more than max_length={max_length}; pass "
                f"overflow='truncate' or 'split', or raise max_length."
            )
    return pieces


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins (lists of indices) of total length <= capacity: longest first, each into the fullest bin it fits
    (as TRL packs). Few bins, little padding, whatever the order of the lengths."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(free, (lengths[index], -1))
        if at == len(free):
            bins.append([index])
            room, target = capacity - lengths[index], len(bins) - 1
        else:
            room, target = free.pop(at)
            bins[target].append(index)
            room -= lengths[index]
        bisect.insort(free, (room, target))
    return bins


def _rows(examples, labels, max_length: int, overflow: str, strategy: str):
    pieces = _pieces(examples, labels, max_length, overflow)
    if strategy == "best_fit":
        return [[pieces[i] for i in sorted(group)] for group in best_fit_decreasing([len(p[0]) for p in pieces], max_length)]
    if strategy != "in_order":
        raise ValueError(f"Unknown packing strategy {strategy!r}; use 'best_fit' (fewest rows) or 'in_order'.")
    rows, current, used = [], [], 0  # greedy in order: a new row when the next piece does not fit
    for piece in pieces:
        if used + len(piece[0]) > max_length and current:
            rows.append(current)
            current, used = [], 0
        current.append(piece)
        used += len(piece[0])
    if current:
        rows.append(current)
    return rows


def pack_examples(
    batch: dict,
    max_length: int = 2048,
    pad_token_id: int = QWEN3_PAD,
    overflow: str = "truncate",
    strategy: str = "best_fit",
) -> dict[str, list[list[int]]]:
    """Packs ``batch["input_ids"]`` (and optional ``batch["labels"]``) into rows of ``max_length`` tokens.

    Made for ``datasets.Dataset.map(..., batched=True)``: takes and returns a dict of lists (see module docstring);
    ``batch_size=None`` packs across the whole dataset. ``overflow``: what to do with an example longer than
    ``max_length``: "truncate" (default), "split" into several documents, or "error". ``strategy``:
    "best_fit" (best-fit decreasing: fewest rows, least padding) or "in_order" (rows follow the examples' order).
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}.")
    if "input_ids" not in batch:
        raise KeyError(f"pack_examples needs an 'input_ids' column (tokenize first); got columns {sorted(batch)}.")
    out = {name: [] for name in COLUMNS}
    for row in _rows(batch["input_ids"], batch.get("labels"), max_length, overflow, strategy):
        ids, labels, positions, documents = [], [], [], []
        for doc, (piece_ids, piece_labels) in enumerate(row):
            ids += piece_ids
            labels += [IGNORE_INDEX] + list(piece_labels[1:])
            positions += range(len(piece_ids))
            documents += [doc] * len(piece_ids)
        pad = max_length - len(ids)
        out["input_ids"].append(ids + [pad_token_id] * pad)
        out["labels"].append(labels + [IGNORE_INDEX] * pad)
        out["position_ids"].append(positions + [0] * pad)
        out["document_ids"].append(documents + [-1] * pad)
        out["attention_mask"].append([1] * len(ids) + [0] * pad)
    return out


@dataclass
class PackingCollator:
    """A Trainer ``data_collator`` that packs each batch of tokenized examples into rows (module docstring).

    The number of rows per batch varies with the examples' lengths; ``max_length`` is the row length.
    """

    max_length: int = 2048
    pad_token_id: int = QWEN3_PAD
    overflow: str = "truncate"
    strategy: str = "best_fit"

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"input_ids": [f["input_ids"] for f in features]}
        if all("labels" in f for f in features):
            batch["labels"] = [f["labels"] for f in features]
        packed = pack_examples(batch, self.max_length, self.pad_token_id, self.overflow, self.strategy)
        return {name: torch.tensor(values, dtype=torch.long) for name, values in packed.items()}


def pad_examples(features: list[dict], pad_token_id: int = QWEN3_PAD, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The unpacked baseline: one example per row, right-padded to the longest (labels -100 on padding)."""
    lengths = [min(len(f["input_ids"]), max_length or 10**9) for f in features]
    width = max(lengths)
    ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(features), width, dtype=torch.long)
    for row, (f, n) in enumerate(zip(features, lengths)):
        ids[row, :n] = torch.as_tensor(f["input_ids"][:n])
        labels[row, :n] = torch.as_tensor(f.get("labels", f["input_ids"])[:n])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
