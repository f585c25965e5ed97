"""Speed and memory against stock Qwen3ForCausalLM (same as `qwen3-mask bench`); options: --help.

    python scripts/benchmark.py --markdown bench.md
"""

import sys

from qwen3_custom_mask.benchmark import main

if __name__ == "__main__":
    main(sys.argv[1:])
