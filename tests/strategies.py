"""The strategy cases every equivalence test runs: (spec, per-call inputs) over the conftest batch."""

import torch

# Prefixes are counted in real tokens; sample 0 has 3 pads on the left.
CASES = {
    "causal": ("causal", {}),
    "bidirectional": ("bidirectional", {}),
    "sliding_window": ({"name": "sliding_window", "window": 3}, {}),
    "prefix_lm": ("prefix_lm", {"prefix_lengths": torch.tensor([4, 6])}),
}
# Strategies whose meaning survives a KV cache (prompt rows never look at later tokens).
CACHEABLE = ["causal", "sliding_window", "prefix_lm"]
