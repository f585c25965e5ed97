"""The main job (same as `qwen3-mask demo`): every strategy on the embedded default Qwen3, checked against stock.

    python scripts/demo.py [--model PATH_OR_ID] [--backend sdpa] [--max-new-tokens 16]
"""

import sys

from qwen3_custom_mask.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
