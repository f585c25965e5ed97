"""Speed and memory against stock Qwen3ForCausalLM (same as `qwen3-mask bench`); options: --help.

    python scripts/benchmark.py --markdown bench.md
"""

import sys

from qwen3_custom_mask.cli.bench_args import parse_args
from qwen3_custom_mask.cli.args import run_script


def main(argv):
    args = parse_args(argv)  # --help and argument mistakes answer before torch is imported
    from qwen3_custom_mask.cli.benchmark import main as bench_main

    return bench_main(args)


if __name__ == "__main__":
    sys.exit(run_script(main, sys.argv[1:]))
