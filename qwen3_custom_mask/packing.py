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
    * ``dataset.map(pack_examples, batched=True, fn_kwargs={"max_length": 2048}, remove_columns=dataset.column_names)``
      then any collator that stacks fixed-length rows (``transformers.default_data_collator``);
    * ``Trainer(data_collator=PackingCollator(max_length=2048))``, which packs each batch of examples on the fly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
QWEN3_PAD = 151643  # <|endoftext|>: Qwen3 has no separate pad token
COLUMNS = ("input_ids", "labels", "position_ids", "document_ids", "attention_mask")


def _rows(examples: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None, max_length: int, overflow: str):
    """Greedy packing in order: start a new row when the next example does not fit."""
    rows, current, used = [], [], 0
    for index, ids in enumerate(examples):
        ids = list(ids)
        lab = list(labels[index]) if labels is not None else list(ids)
        if len(lab) != len(ids):
            raise ValueError(f"Example {index}: labels has {len(lab)} entries but input_ids has {len(ids)}.")
        if not ids:
            continue
        pieces = [(ids, lab)]
        if len(ids) > max_length:
            if overflow == "truncate":
                pieces = [(ids[:max_length], lab[:max_length])]
            elif overflow == "split":
                pieces = [(ids[i : i + max_length], lab[i : i + max_length]) for i in range(0, len(ids), max_length)]
            else:
                raise ValueError(
                    f"Example {index} has {len(ids)} tokens, more than max_length={max_length}; pass "
                    f"overflow='truncate' or 'split', or raise max_length."
                )
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
) -> dict[str, list[list[int]]]:
    """Packs ``batch["input_ids"]`` (and optional ``batch["labels"]``) into rows of ``max_length`` tokens.

    Made for ``datasets.Dataset.map(..., batched=True)``: takes and returns a dict of lists (see module docstring).
    ``overflow``: what to do with an example longer than ``max_length``: "truncate" (default), "split" into
    several documents, or "error".
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}.")
    if "input_ids" not in batch:
        raise KeyError(f"pack_examples needs an 'input_ids' column (tokenize first); got columns {sorted(batch)}.")
    out = {name: [] for name in COLUMNS}
    for row in _rows(batch["input_ids"], batch.get("labels"), max_length, overflow):
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

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"input_ids": [f["input_ids"] for f in features]}
        if all("labels" in f for f in features):
            batch["labels"] = [f["labels"] for f in features]
        packed = pack_examples(batch, self.max_length, self.pad_token_id, self.overflow)
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
