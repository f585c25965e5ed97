"""Packed documents: padding-free packing (position_ids that restart inside a row, no attention_mask) and
documents continued across a KV cache. Each document is read as if it stood alone in its row, as stock's
packed-sequence detection reads it (masking_utils' ``find_packed_sequence_indices``), for every strategy.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import find_packed_sequence_indices


def packed_documents(position_ids, attention_mask, cache, batch_size: int):
    """(B, L) sequence index of every token when ``position_ids`` restart inside a row (padding-free packing:
    TRL's bfd packing, DataCollatorWithFlattening), else None. The conditions are stock's packed-sequence
    detection: no attention_mask and no cache (a training forward; generate() never packs)."""
    if position_ids is None or attention_mask is not None or cache is not None:
        return None
    return find_packed_sequence_indices(position_ids.view(-1, position_ids.shape[-1]).expand(batch_size, -1))


def within_documents(mask_mod, sequences: torch.Tensor, positions: torch.Tensor):
    """``mask_mod`` read the way stock reads a mask on packed rows (masking_utils' packed-sequence remap): each
    document on its own, at its own positions, as if it stood alone in its row. Stock does this for its causal,
    sliding and chunked builders; here every strategy gets it, so a sliding-window model trains packed as its
    stock export runs."""

    def packed(batch_idx, head_idx, q_idx, kv_idx):
        same = sequences[batch_idx, q_idx] == sequences[batch_idx, kv_idx]
        return same & mask_mod(batch_idx, head_idx, positions[batch_idx, q_idx], positions[batch_idx, kv_idx])

    return packed


def documents_from_positions(strategy, row_positions, seen: int, total: int, batch_size: int):
    """``(sequences, positions)``, each (B, total), for a composition with ``document`` whose boundaries come from
    ``row_positions`` (B or 1, seen) that restart inside a row, with no document_ids; else ``(None, None)``.

    Such a strategy reads each document alone (sinks, chunks, global tokens counted from each document's
    start) in every forward: with a KV cache (the positions kept by `continue_documents`), with an
    attention_mask and in generate(), exactly as without them (`packed_documents`). Stock's detection stops
    there, and would leave the other parts reading row positions in documents that ``document`` hides. A plain
    ``document`` needs no remap (its own mask already is each document alone)."""
    if "document_ids" not in strategy.inputs or strategy.name == "document" or set(strategy.inputs) - {"document_ids"}:
        return None, None
    seen = int(seen)
    if row_positions is None or row_positions.shape[-1] != seen:
        return None, None
    rows = row_positions.reshape(-1, seen).expand(batch_size, -1)
    sequences = find_packed_sequence_indices(rows)
    if sequences is None:
        return None, None
    if total > seen:  # a static cache's unwritten slots: padding, never attended; any index will do
        sequences, rows = (torch.cat([t, t[:, -1:].expand(-1, total - seen)], dim=-1) for t in (sequences, rows))
    return sequences, rows


def refuse_packed(strategy) -> None:
    needs = sorted(set(strategy.inputs) - {"document_ids"})
    raise ValueError(
        f"position_ids restart inside a row (padding-free packing, e.g. TRL's packing=True or DataCollatorWithFlattening), "
        f"but the mask strategy {strategy.name!r} takes {needs} per row, which a packed row cannot give per document. "
        f"Pad instead of packing (TRL: padding_free=False, packing_strategy='wrapped'), or pass an attention_mask."
    )


def read_per_document(strategy, context: dict, position_ids, attention_mask, cache, padding, seen, total: int,
                      batch_size: int, bounded: bool):
    """``(sequences, positions)`` (B, total) when this forward reads its rows document by document, else
    ``(None, None)``; then ``context`` is set for it (every document starts at its position 0, so nothing before
    it is padding to the strategy, and inside it ``document`` sees one document).

    * Padding-free packing (restarting position_ids, no mask, no cache): every strategy, as stock's builders
      remap packed positions (a per-row input is refused: it cannot be read per document).
    * A composition with ``document`` whose boundaries come from position_ids: every forward (a KV cache, an
      attention_mask, generate()), where stock's detection turns off.
    Explicit document_ids keep their own meaning (not read here); so do a draft tree's depths.
    """
    if strategy.places_tokens and "document_ids" not in strategy.inputs:
        return None, None
    compiling = torch.compiler.is_compiling()
    sequences = packed_documents(position_ids, attention_mask, cache, batch_size)
    if sequences is not None:
        if set(strategy.inputs) - {"document_ids"}:
            refuse_packed(strategy)
        positions = position_ids.view(-1, position_ids.shape[-1]).expand(batch_size, -1)
    elif compiling:
        return None, None
    else:
        sequences, positions = documents_from_positions(strategy, context.get("position_ids"), seen, total, batch_size)
        if sequences is None:
            return None, None
    if bounded and not compiling:
        real = padding[:, : sequences.shape[-1]]
        if ((sequences[:, 1:] != sequences[:, :-1]) & real[:, 1:] & real[:, :-1]).any():
            raise ValueError(
                f"BoundedCache cannot hold packed documents under {strategy.name!r}: it keeps each row's first tokens "
                f"(sinks, chunk starts), while each document here counts from its own start. Use a DynamicCache, or "
                f"generate each document alone."
            )
    context["padding_mask"] = torch.ones_like(padding)  # the lowering still ANDs the real padding on every key
    if "document_ids" in strategy.inputs:
        context["document_ids"] = torch.zeros(batch_size, int(seen), dtype=torch.long, device=padding.device)
    return sequences, positions


POSITIONS_ON_CACHE = "qwen3_mask_positions"  # (B, tokens so far): the positions a document strategy has read


def continue_documents(cache, strategy, context: dict, position_ids, q_offset: int, q_length: int, batch_size: int):
    """Packed documents across a KV cache. A cached step's ``position_ids`` cover only its new tokens, so on
    their own they cannot say where the cached documents end (a decode step at position 3 continues a document
    that restarted at 0 in the prefill; read alone, the row looked like one document). The positions of every
    token so far are kept on the cache, and the step's boundaries are read off them with the new ones appended:
    a position that follows its predecessor continues that document, any other starts a new one. Returns the
    step's position_ids (None: the strategy places them); ``context["position_ids"]`` gets the whole row's."""
    earlier = getattr(cache, POSITIONS_ON_CACHE, None) if q_offset else None
    if q_offset and (earlier is None or earlier.shape[-1] < q_offset or earlier.shape[0] != batch_size):
        if context.get("document_ids") is not None:
            return position_ids  # the caller says where the documents are; nothing to continue
        raise ValueError(
            f"The {strategy.name!r} strategy cannot tell which document this cached step continues: the cache holds "
            f"{q_offset} tokens this model did not read (or read for another batch). Pass document_ids of shape "
            f"(batch, past + new tokens), or fill the cache with this model."
        )
    if position_ids is None and earlier is not None and earlier.shape[-1]:
        position_ids = earlier[:, q_offset - 1 : q_offset] + torch.arange(1, q_length + 1, device=earlier.device)
    if position_ids is None:  # a prefill without positions: the strategy places them (then they are kept)
        position_ids = strategy.position_ids(**context)[:, :q_length]
    new = position_ids.view(-1, q_length).expand(batch_size, -1).to(context["padding_mask"].device)
    every = new if earlier is None else torch.cat([earlier[:, :q_offset].to(new.device), new], dim=-1)
    setattr(cache, POSITIONS_ON_CACHE, every)
    if context.get("document_ids") is None:
        context["position_ids"] = every
    return position_ids
