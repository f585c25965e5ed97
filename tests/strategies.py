"""The strategy cases every equivalence test runs: (spec, per-call inputs) over the conftest batch.

The batch is 2 x 12 tokens; sample 0 has 3 pads on the left. The tiny model has 2 layers and 4 heads.
"""

import torch
from transformers.masking_utils import and_masks

from qwen3_custom_mask.strategy.reference import reference_logits, reference_mask

# Document ids cover the whole row (pads belong to the first document of sample 0).
DOCUMENTS = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2]])

CASES = {
    "causal": ("causal", {}),
    "bidirectional": ("bidirectional", {}),
    "sliding_window": ({"name": "sliding_window", "window": 3}, {}),
    "per_head_window": ({"name": "sliding_window", "window": [1, 2, 4, 7]}, {}),
    "prefix_lm": ("prefix_lm", {"prefix_lengths": torch.tensor([4, 6])}),
    "attention_sinks": ({"name": "attention_sinks", "sinks": 2, "window": 3}, {}),
    "chunked": ({"name": "chunked", "chunk_size": 4}, {}),
    "dilated_sliding_window": ({"name": "dilated_sliding_window", "window": 6, "dilation": 2}, {}),
    "global_tokens": ({"name": "global_tokens", "tokens": [0, 5], "window": 3}, {}),
    "global_tokens_bidirectional": ({"name": "global_tokens", "tokens": [1], "window": 2, "causal": False}, {}),
    "document": ("document", {"document_ids": DOCUMENTS}),
    "document_bidirectional": ({"name": "document", "causal": False}, {"document_ids": DOCUMENTS}),
    "and": ({"and": ["prefix_lm", {"name": "sliding_window", "window": 4}]}, {"prefix_lengths": torch.tensor([4, 6])}),
    "or": ({"or": [{"name": "sliding_window", "window": 2}, {"name": "chunked", "chunk_size": 5}]}, {}),
    "not": ({"or": [{"name": "sliding_window", "window": 2}, {"not": "causal"}]}, {}),
    "document_and_window": ({"and": ["document", {"name": "sliding_window", "window": 2}]}, {"document_ids": DOCUMENTS}),
    "layers": ({"layers": {"0": "bidirectional", "1": {"name": "sliding_window", "window": 3}}}, {}),
    "layers_cacheable": ({"layers": {"0": "causal", "1": {"name": "attention_sinks", "sinks": 1, "window": 2}}}, {}),
}
# Strategies whose meaning survives a KV cache (prompt rows never look at later tokens).
CACHEABLE = [
    "causal",
    "sliding_window",
    "per_head_window",
    "prefix_lm",
    "attention_sinks",
    "chunked",
    "dilated_sliding_window",
    "global_tokens",
    "document",
    "and",
    "or",
    "document_and_window",
    "layers_cacheable",
]


def step_inputs(inputs: dict, end: int) -> dict:
    """Per-call inputs for a forward over tokens [0, end): per-token inputs are cut like attention_mask."""
    return {k: v[:, :end] if k == "document_ids" else v for k, v in inputs.items()}


def expected_logits(model, ids, mask, positions, inputs):
    """The reference over the whole sequence, asking each layer's mask_mod element by element (sliding
    layers of the config add their window). Strategies that place tokens themselves (documents) get their
    own positions, as the model does when it is given no position_ids."""
    config = model.config
    padding = mask.bool()
    strategy = model.mask_strategy
    heads = config.num_attention_heads
    context = dict(inputs, padding_mask=padding, num_heads=heads)
    dense = {}
    for layer in range(config.num_hidden_layers):
        key = (strategy.for_layer(layer), config.layer_types[layer])
        if key not in dense:
            mask_mod = key[0].mask_mod(**context)
            if key[1] == "sliding_attention":  # the config's window: |q - kv| < w, or <= w for bidirectional
                window = config.sliding_window
                if key[0].flash_form() == {"is_causal": False}:
                    mask_mod = and_masks(mask_mod, lambda b, h, q, kv: (q - kv).abs() <= window)
                else:
                    mask_mod = and_masks(mask_mod, lambda b, h, q, kv: (q - kv).abs() < window)
            dense[key] = reference_mask(mask_mod, ids.shape[0], heads, ids.shape[1], padding)
    if strategy.places_tokens:
        positions = strategy.position_ids(**context)
    layer_masks = [dense[(strategy.for_layer(i), config.layer_types[i])] for i in range(config.num_hidden_layers)]
    return reference_logits(model, ids, layer_masks, positions)
