"""BoundedCache: a KV cache that drops keys and values no future query can see.

For a strategy with ``cache_bounds`` (``sliding_window``, ``attention_sinks``, ``chunked``, and any ``and``
composition containing one) a query only ever sees the first ``first`` real tokens of its row and the
``last`` tokens before it. The model tells the cache those bounds at prefill; from then on every layer keeps
``first`` (+ left padding) leading slots and the ``last`` most recent ones, so memory stays at
``first + last`` tokens however long the generation runs::

    model = CustomQwen3ForCausalLM.from_pretrained(path, mask_strategy={"name": "attention_sinks", "sinks": 4, "window": 1024})
    out = model.generate(ids, max_new_tokens=10_000, past_key_values=BoundedCache())

The tokens generated are those of an unbounded cache with the same mask: only keys that the mask hides
are dropped. Each layer remembers the absolute position of every key it kept (``kv_positions``), which the
mask builder uses instead of a contiguous range.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class BoundedLayer(DynamicLayer):
    """A `DynamicLayer` that keeps the first ``keep_first`` and the last ``keep_last`` positions only."""

    def __init__(self, **kwargs):
        super().__init__()
        self.keep_first: int | None = None
        self.keep_last: int | None = None
        self.cumulative_length = 0
        self.positions = torch.zeros(0, dtype=torch.long)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.keep_first is None:
            raise RuntimeError(
                "BoundedCache was used before the model set its bounds; pass it as past_key_values to a "
                "CustomQwen3ForCausalLM whose mask strategy is bounded (e.g. sliding_window, attention_sinks)."
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.positions = self.positions.to(self.device)
        new = key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        positions = torch.cat([self.positions, torch.arange(self.cumulative_length, self.cumulative_length + new, device=self.device)])
        self.cumulative_length += new
        keep = (positions < self.keep_first) | (positions >= self.cumulative_length - self.keep_last)
        if not keep.all():
            index = keep.nonzero().squeeze(-1)
            self.keys, self.values, self.positions = keys.index_select(-2, index), values.index_select(-2, index), positions[index]
        else:
            self.keys, self.values, self.positions = keys, values, positions
        return keys, values

    def kv_positions(self, query_length: int) -> torch.Tensor:
        """Absolute positions of the keys the next ``update`` with ``query_length`` new tokens returns."""
        new = torch.arange(self.cumulative_length, self.cumulative_length + query_length, device=self.positions.device)
        return torch.cat([self.positions, new])

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.positions.shape[0] + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def stored_tokens(self) -> int:
        return self.positions.shape[0]

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self.positions = torch.zeros(0, dtype=torch.long)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("A BoundedCache cannot be cropped: the keys before the window are gone.")


class BoundedCache(Cache):
    """A cache whose layers keep only what the model's mask strategy can still attend to (see module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(layer_class_to_replicate=BoundedLayer)

    @property
    def is_configured(self) -> bool:
        return bool(self.layers) and self.layers[0].keep_first is not None

    def set_bounds(self, keep_first: int, keep_last: int, num_layers: int) -> None:
        """Called by the model at prefill: keep ``keep_first`` leading and ``keep_last`` trailing positions."""
        while len(self.layers) < num_layers:
            self.layers.append(BoundedLayer())
        for layer in self.layers:
            layer.keep_first, layer.keep_last = keep_first, keep_last

    def kv_positions(self, query_length: int, layer_idx: int = 0) -> torch.Tensor:
        return self.layers[layer_idx].kv_positions(query_length)

    def stored_tokens(self, layer_idx: int = 0) -> int:
        """How many positions a layer holds now (the memory bound), as opposed to ``get_seq_length``."""
        return self.layers[layer_idx].stored_tokens() if self.layers else 0
