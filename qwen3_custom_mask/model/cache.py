"""BoundedCache: a KV cache that drops keys and values no future query can see.

For a strategy with ``cache_bounds`` (``sliding_window``, ``attention_sinks``, ``chunked``, and any ``and``
composition containing one) a query only ever sees the first ``first`` real tokens of its row and the
``last`` tokens before it. The model tells the cache those bounds (and where each row's real tokens start)
at prefill; from then on every layer keeps, per row, its first ``first`` real tokens and its ``last`` most
recent ones, and never stores left padding, so memory stays at ``first + last`` positions per layer however
long the generation runs and however the batch is padded::

    model = CustomQwen3ForCausalLM.from_pretrained(path, mask_strategy={"name": "attention_sinks", "sinks": 4, "window": 1024})
    out = model.generate(ids, max_new_tokens=10_000, cache=BoundedCache())  # or past_key_values= (either name)

The tokens generated are those of an unbounded cache with the same mask: only keys that the mask hides
are dropped. Each layer remembers the absolute position of every key it kept, per row (``kv_positions``,
-1 for a slot a row does not use), which the mask builder uses instead of a contiguous range.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

NOT_STARTED = torch.iinfo(torch.long).max  # a row with no real token yet: nothing of it is kept


class BoundedLayer(DynamicLayer):
    """A `DynamicLayer` that keeps, per row, the first ``keep_first`` real positions and the last ``keep_last``."""

    def __init__(self, **kwargs):
        super().__init__()
        self.keep_first: int | None = None
        self.keep_last: int | None = None
        self.starts = torch.zeros(0, dtype=torch.long)  # (B,) each row's first real position
        self.cumulative_length = 0
        self.positions = torch.zeros(0, 0, dtype=torch.long)  # (B, K) position of each kept key, -1 = empty slot

    def set_bounds(self, keep_first: int, keep_last: int, starts: torch.Tensor) -> None:
        self.keep_first, self.keep_last = keep_first, keep_last
        self.starts = starts.long()
        self.positions = torch.zeros(starts.shape[0], 0, dtype=torch.long, device=starts.device)

    def learn_starts(self, starts: torch.Tensor) -> None:
        """Rows whose real tokens had not begun (a chunked prefill's all-padding first chunk) take their start now."""
        self.starts = torch.where(self.starts == NOT_STARTED, starts.to(self.starts.device), self.starts)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.keep_first is None:
            raise RuntimeError(
                "BoundedCache was used before the model set its bounds; pass it as cache= (or past_key_values=) to a "
                "CustomQwen3ForCausalLM whose mask strategy is bounded (e.g. sliding_window, attention_sinks)."
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.positions, self.starts = self.positions.to(self.device), self.starts.to(self.device)
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        positions = self.kv_positions(key_states.shape[-2])
        self.cumulative_length += key_states.shape[-2]
        starts = self.starts[:, None]
        keep = (positions >= starts) & ((positions - starts < self.keep_first) | (positions >= self.cumulative_length - self.keep_last))
        # Kept slots first, in order; every row keeps at most keep_first + keep_last, short rows get empty slots.
        order = torch.argsort((~keep).int(), dim=1, stable=True)[:, : int(keep.sum(1).max())]
        index = order[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
        self.keys, self.values = keys.gather(2, index), values.gather(2, index)
        self.positions = torch.where(keep.gather(1, order), positions.gather(1, order), -1)
        return keys, values

    def kv_positions(self, query_length: int) -> torch.Tensor:
        """(B, K) absolute positions of the keys the next ``update`` with ``query_length`` new tokens returns."""
        new = torch.arange(self.cumulative_length, self.cumulative_length + query_length, device=self.positions.device)
        return torch.cat([self.positions, new.expand(self.positions.shape[0], -1)], dim=1)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.positions.shape[1] + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def stored_tokens(self) -> int:
        return self.positions.shape[1]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))
        self.starts = self.starts.index_select(0, beam_idx.to(self.starts.device))

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self.positions = self.positions[:, :0]

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("A BoundedCache cannot be cropped: the keys before the window are gone.")


class BoundedCache(Cache):
    """A cache whose layers keep only what the model's mask strategy can still attend to (see module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(layer_class_to_replicate=BoundedLayer)

    @property
    def is_configured(self) -> bool:
        return bool(self.layers) and self.layers[0].keep_first is not None

    def set_bounds(self, keep_first: int, keep_last: int, starts: torch.Tensor, num_layers: int) -> None:
        """Called by the model at prefill: per row, keep the first ``keep_first`` real positions (counted from
        ``starts``, each row's first real token, ``NOT_STARTED`` until it comes) and the last ``keep_last``."""
        while len(self.layers) < num_layers:
            self.layers.append(BoundedLayer())
        for layer in self.layers:
            layer.set_bounds(keep_first, keep_last, starts)

    def learn_starts(self, starts: torch.Tensor) -> None:
        for layer in self.layers:
            layer.learn_starts(starts)

    def kv_positions(self, query_length: int, layer_idx: int = 0) -> torch.Tensor:
        return self.layers[layer_idx].kv_positions(query_length)

    def stored_tokens(self, layer_idx: int = 0) -> int:
        """How many positions a layer holds now (the memory bound), as opposed to ``get_seq_length``."""
        return self.layers[layer_idx].stored_tokens() if self.layers else 0
