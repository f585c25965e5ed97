"""Parameter checks shared by the mask factories, so that every bad value gets the same clear error."""

import torch


def positive_int(strategy: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{strategy}: {name} must be a positive integer, got {value!r}.")
    return value


def per_sample_lengths(strategy: str, name: str, value) -> torch.Tensor:
    """A (batch,) tensor of non-negative integer lengths; ints and lists are accepted too."""
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
    if (lengths < 0).any():
        raise ValueError(f"{strategy}: {name} must be >= 0, got {lengths.tolist()}.")
    return lengths.long()
