"""Built-in mask families, one file each; importing this package registers them."""

from . import (  # noqa: F401
    attention_sinks,
    bidirectional,
    causal,
    chunked,
    dilated_sliding_window,
    document,
    global_tokens,
    prefix_lm,
    sliding_window,
    tree,
)
