"""Parameter checks shared by the mask factories, so that every bad value gets the same clear error."""

from __future__ import annotations


def checking_values() -> bool:
    """Whether to check tensor values (data-dependent branches) now: not while torch.compile traces a graph."""
    import torch
    return not torch.compiler.is_compiling()


def positive_int(strategy: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{strategy}: {name} must be a positive integer, got {value!r}.")
    return value


def per_sample_lengths(strategy: str, name: str, value) -> torch.Tensor:
    """A (batch,) tensor of non-negative integer lengths; ints and lists are accepted too."""
    import torch
    if value is None:
        raise ValueError(f"The {strategy!r} strategy needs `{name}` (one integer per sample), e.g. "
                         f"model(input_ids, {name}=torch.tensor([5, 7])).")
    lengths = torch.as_tensor(value)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"{strategy}: {name} must hold integers, got dtype {lengths.dtype}.")
    if lengths.dim() == 0:
        lengths = lengths[None]
    if lengths.dim() != 1:
        raise ValueError(f"{strategy}: {name} must have shape (batch,), got {tuple(lengths.shape)}.")
    if checking_values() and (lengths < 0).any():
        raise ValueError(f"{strategy}: {name} must be >= 0, got {lengths.tolist()}.")
    return lengths.long()


def non_negative_int(strategy: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{strategy}: {name} must be an integer >= 0, got {value!r}.")
    return value


def first_real_token(padding_mask: torch.Tensor | None) -> torch.Tensor | int:
    """(batch,) index of each row's first real token (left padding shifts it); 0 without a padding mask.

    Strategies that count from the start of a sequence (sinks, chunks, global tokens) count from here, so a
    left-padded row behaves exactly like the same row alone.
    """
    if padding_mask is None:
        return 0
    return padding_mask.int().argmax(-1)


def row_starts(padding_mask):
    """(batch, 1, 1) first real token of each row (0 without a padding mask), shaped for interval functions."""
    start = first_real_token(padding_mask)
    return start.view(-1, 1, 1) if hasattr(start, "view") else start


def at_batch(value, batch_idx):
    """``value[batch_idx]`` for per-row tensors, ``value`` for plain numbers."""
    import torch
    return value[batch_idx] if isinstance(value, torch.Tensor) else value
