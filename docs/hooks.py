"""mkdocs hook: the mask pictures are drawn by the library at build time (never committed, never stale)."""

from pathlib import Path

# The strategies page's pictures: (file, title, spec, per-call inputs), 8 tokens each.

DOCS = [[0, 0, 0, 1, 1, 2, 2, 2]]
GALLERY = [
    ("causal.png", "causal", "causal", {}),
    ("bidirectional.png", "bidirectional", "bidirectional", {}),
    ("sliding_window.png", "sliding_window(3)", {"name": "sliding_window", "window": 3}, {}),
    ("prefix_lm.png", "prefix_lm([3])", "prefix_lm", {"prefix_lengths": [3]}),
    ("attention_sinks.png", "attention_sinks(2, 3)", {"name": "attention_sinks", "sinks": 2, "window": 3}, {}),
    ("chunked.png", "chunked(3)", {"name": "chunked", "chunk_size": 3}, {}),
    ("dilated_sliding_window.png", "dilated_sliding_window(4, 2)", {"name": "dilated_sliding_window", "window": 4, "dilation": 2}, {}),
    ("global_tokens.png", "global_tokens([0], 2)", {"name": "global_tokens", "tokens": [0], "window": 2}, {}),
    ("document.png", "document(0 0 0 1 1 2 2 2)", "document", {"document_ids": DOCS}),
    ("tree.png", "tree: 0-2 cached, 3-7 drafts", "tree", {"draft_tree": [-1, 0, 0, -1, 3]}),
    ("and.png", "and[document, window(2)]", {"and": ["document", {"name": "sliding_window", "window": 2}]}, {"document_ids": DOCS}),
    ("or.png", "or[window(2), chunked(4)]", {"or": [{"name": "sliding_window", "window": 2}, {"name": "chunked", "chunk_size": 4}]}, {}),
]


def on_pre_build(config, **kwargs):
    from qwen3_custom_mask.cli.draw import mask_matrix, save_png

    out = Path(config["docs_dir"]) / "img"
    out.mkdir(exist_ok=True)
    for filename, title, spec, inputs in GALLERY:
        save_png(mask_matrix(spec, 8, **inputs), out / filename, cell=24, title=title)
