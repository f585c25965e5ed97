"""Built-in mask families, one file each; importing this package registers them."""

from . import bidirectional, causal, prefix_lm, sliding_window  # noqa: F401
