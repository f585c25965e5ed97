"""Documents packed in one row never see each other; inside a document the mask is causal.

``document_ids=[[0, 0, 1, 1, 1]]``:

    q\\kv 0 1 2 3 4
      0   ■ ⬚ ⬚ ⬚ ⬚
      1   ■ ■ ⬚ ⬚ ⬚
      2   ⬚ ⬚ ■ ⬚ ⬚
      3   ⬚ ⬚ ■ ■ ⬚
      4   ⬚ ⬚ ■ ■ ■

Boundaries come from ``document_ids`` (batch, tokens), or else from ``position_ids`` that restart at 0
(or jump) where a new document begins, read the way transformers' packed-sequence detection reads them.
Unlike that detection, the boundaries are honoured with a KV cache and with an all-ones attention_mask
(and every other part of a composition then counts from each document's start, model/packed.py), and a
training call that gives neither raises. Without explicit ``position_ids`` each token's position counts the
earlier tokens of its own document (across its runs, when ids interleave), so RoPE sees each document as
if it stood alone. ``causal=False`` makes each document
bidirectional (packed embedding training). Compose with others, e.g. ``{"and": ["document",
{"name": "sliding_window", "window": 512}]}``.

``document_ids`` cover every token so far (past + new: with a KV cache, the ids of the cached tokens too);
generate() takes the prompt's ids and extends them itself: generated tokens continue the last document.
"""

from __future__ import annotations

from ..strategy.registry import register_mask


def document_ids_of(document_ids, position_ids, padding_mask, sequence_length=None, training=True) -> torch.Tensor:
    """(batch, total) document index of every key position, validated.

    ``document_ids`` / ``position_ids`` cover the ``sequence_length`` tokens so far (past + new); slots past
    them (a static cache's unwritten ones, which are padding) repeat the last id. Given neither, a row is one
    document outside training (a checkpoint trained on packed rows, used as saved: a forward, generate(),
    pipelines); in training that raises, as the guard against a collator that dropped the ids.
    """
    import torch
    from transformers.masking_utils import find_packed_sequence_indices

    batch, total = padding_mask.shape
    length = total if sequence_length is None else int(sequence_length)
    if document_ids is None and not training and (position_ids is None or position_ids.shape[-1] != length):
        return torch.zeros(batch, total, dtype=torch.long, device=padding_mask.device)
    if document_ids is None:
        if position_ids is None or position_ids.shape[-1] != length:
            raise ValueError(
                "The 'document' strategy needs document boundaries in training: pass document_ids (batch, tokens), "
                "or position_ids that restart at 0 for each document covering the whole sequence (did the collator "
                "or Trainer drop the column?). In eval mode (model.eval()) and generate(), a row without them is one document."
            )
        ids = find_packed_sequence_indices(position_ids.view(-1, length).expand(batch, length))
        ids = torch.zeros(batch, length, dtype=torch.long, device=padding_mask.device) if ids is None else ids
    else:
        ids = torch.as_tensor(document_ids, device=padding_mask.device)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"document: document_ids must hold integers, got dtype {ids.dtype}.")
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.shape[0] != batch or not (ids.shape[1] == length or sequence_length is None and ids.shape[1] <= total):
            raise ValueError(
                f"document: document_ids must have shape (batch, past + new tokens) = ({batch}, {length}), got "
                f"{tuple(torch.as_tensor(document_ids).shape)}. (generate() takes the prompt's ids and extends "
                f"them itself: generated tokens continue the last document.)"
            )
    if ids.shape[1] < total:
        ids = torch.cat([ids, ids[:, -1:].expand(batch, total - ids.shape[1])], dim=1)
    return ids.long()


def document_positions(document_ids=None, padding_mask=None, sequence_length=None, training=True):
    """Each token's position inside its document: how many real tokens of the same document come before it,
    so a document split in several runs (interleaved ids) counts on across its runs (padding stays at 0)."""
    import torch
    ids = document_ids_of(document_ids, None, padding_mask, sequence_length, training)
    real = padding_mask.long()
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        # ONNX has no stable sort: count the earlier real tokens of the same document pairwise, O(tokens^2) like
        # the dense mask an exported eager/sdpa model builds anyway. The same positions (tested).
        return pairwise_document_positions(ids, real)
    # Group each row's tokens by document (a stable sort keeps their order), count inside each group.
    order = torch.argsort(ids, dim=-1, stable=True)
    grouped, grouped_real = ids.gather(1, order), real.gather(1, order)
    count = grouped_real.cumsum(-1)
    starts = torch.ones_like(grouped, dtype=torch.bool)
    starts[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    before_doc = torch.cummax(torch.where(starts, count - grouped_real, torch.zeros_like(count)), dim=-1).values
    positions = torch.empty_like(count).scatter_(1, order, (count - before_doc - 1).clamp(min=0))
    return positions * real


def pairwise_document_positions(ids, real):
    """document_positions without a sort, for export: (batch, n) ids and 0/1 real in, positions out."""
    import torch

    n = ids.shape[-1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril(-1)  # [q, k]: k before q
    same = (ids[:, :, None] == ids[:, None, :]) & earlier & real[:, None, :].bool()
    return same.long().sum(-1) * real


def _intervals(causal=True, document_ids=None, position_ids=None, padding_mask=None, sequence_length=None, training=True):
    """Each query sees its own document, [its first token, the query] (or the document's end): exact when every
    document's tokens are contiguous (packed rows); None otherwise (the generic path)."""
    import torch

    if padding_mask is None:
        return None
    ids = document_ids_of(document_ids, position_ids, padding_mask, sequence_length, training)
    batch, total = ids.shape
    index = torch.arange(total, device=ids.device).expand(batch, total)
    new_run = torch.ones_like(ids, dtype=torch.bool)
    new_run[:, 1:] = ids[:, 1:] != ids[:, :-1]
    distinct = torch.ones_like(new_run)
    distinct[:, 1:] = ids.sort(-1).values.diff(dim=-1) != 0
    if (new_run.sum(-1) != distinct.sum(-1)).any():
        return None  # an id in several runs: one document, not contiguous
    run_start = torch.where(new_run, index, 0).cummax(-1).values
    ends_here = torch.ones_like(new_run)
    ends_here[:, :-1] = new_run[:, 1:]
    run_end = torch.where(ends_here, index + 1, total).flip(-1).cummin(-1).values.flip(-1)

    def intervals(q):
        at = q.view(1, -1).clamp(0, total - 1).expand(batch, -1)
        lo = run_start.gather(1, at).unsqueeze(-1)
        return lo, (q + 1 if causal else run_end.gather(1, at).unsqueeze(-1))

    return intervals


@register_mask("document", inputs=("document_ids",), positions=document_positions, intervals=_intervals,
               flash=lambda causal=True: {"is_causal": causal, "documents": True})
def document(causal: bool = True, document_ids=None, position_ids=None, padding_mask=None, sequence_length=None, training=True):
    """Packed documents: attention stays inside each document (causal, or bidirectional with causal=False)."""
    if not isinstance(causal, bool):
        raise ValueError(f"document: causal must be true or false, got {causal!r}.")
    if padding_mask is None:  # validation call at resolve time: nothing to check yet
        return lambda b, h, q, kv: kv <= q
    ids = document_ids_of(document_ids, position_ids, padding_mask, sequence_length, training)

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        same = ids[batch_idx, q_idx] == ids[batch_idx, kv_idx]
        return same & (kv_idx <= q_idx) if causal else same

    return mask_mod
