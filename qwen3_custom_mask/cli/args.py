"""Torch-free argument handling shared by the scripts (finetune, bench): mistakes in one line, exit status 2."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2  # argparse's and qwen3-mask's status for a usage mistake


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes in one line (the `qwen3-mask` convention), not the usage block."""

    def error(self, message):
        raise SystemExit(f"error: {message} (see --help)")


def run_script(main, argv=None) -> int:
    """A script's exit status: 0 when ``main`` returns something true, 1 otherwise; a usage mistake (SystemExit
    with a message, raised before anything heavy is imported) is printed on one line of stderr, status 2."""
    try:
        return 0 if main(argv) else 1
    except SystemExit as err:
        if not isinstance(err.code, str):
            raise
        print(err.code, file=sys.stderr)
        return EXIT_USAGE
