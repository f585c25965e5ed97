"""Prints the README's strategy gallery (ASCII), and writes one PNG per strategy with --png DIR.

    python scripts/gallery.py               # the text block in the README
    python scripts/gallery.py --png docs/   # gallery PNGs for docs (needs Pillow)
"""

import argparse
from pathlib import Path

from qwen3_custom_mask.cli.draw import VISIBLE, HIDDEN, density, mask_matrix, save_png

DOCS = [[0, 0, 0, 1, 1, 2, 2, 2]]
GALLERY = [
    ("causal", "causal", {}),
    ("bidirectional", "bidirectional", {}),
    ("sliding_window(3)", {"name": "sliding_window", "window": 3}, {}),
    ("prefix_lm([3])", "prefix_lm", {"prefix_lengths": [3]}),
    ("attention_sinks(2, 3)", {"name": "attention_sinks", "sinks": 2, "window": 3}, {}),
    ("chunked(3)", {"name": "chunked", "chunk_size": 3}, {}),
    ("dilated_sliding_window(4, 2)", {"name": "dilated_sliding_window", "window": 4, "dilation": 2}, {}),
    ("global_tokens([0], 2)", {"name": "global_tokens", "tokens": [0], "window": 2}, {}),
    ("document(0 0 0 1 1 2 2 2)", "document", {"document_ids": DOCS}),
    ("tree([-1, 0, 0, -1, 3])", "tree", {"draft_tree": [-1, 0, 0, -1, 3]}),
    ("and[document, window(2)]", {"and": ["document", {"name": "sliding_window", "window": 2}]}, {"document_ids": DOCS}),
    ("or[window(2), chunked(4)]", {"or": [{"name": "sliding_window", "window": 2}, {"name": "chunked", "chunk_size": 4}]}, {}),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--png", type=Path, help="directory for one PNG per strategy")
    args = parser.parse_args()
    blocks = []
    for title, spec, inputs in GALLERY:
        matrix = mask_matrix(spec, args.length, **inputs)
        blocks.append((title, ["".join(VISIBLE if v else HIDDEN for v in row) for row in matrix.tolist()], density(matrix)))
        if args.png:
            args.png.mkdir(parents=True, exist_ok=True)
            save_png(matrix, args.png / f"{title.split('(')[0].split('[')[0]}.png", cell=24, title=title)
    width = 30
    for start in range(0, len(blocks), 3):
        row = blocks[start : start + 3]
        print("".join(f"{title:<{width}}" for title, _, _ in row).rstrip())
        for r in range(args.length):
            print("".join(f"{grid[r]:<{width}}" for _, grid, _ in row).rstrip())
        print("".join(f"{f'density {d:.2f}':<{width}}" for _, _, d in row).rstrip())
        print()


if __name__ == "__main__":
    main()
