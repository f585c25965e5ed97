"""The peer criterion: transformers' own Qwen3 tests, on stock and on this plugin's classes, outcome by outcome.

    python scripts/transformers_peer_tests.py --tests /path/to/transformers/checkout [--pytest-args "-k generate"]

``--tests`` is a folder holding transformers' ``tests/`` tree (a git checkout of the release matching the
installed transformers; the PyPI sdist lacks tests/models/). The Qwen3 test module runs twice, on the stock
classes and with scripts/peer_substitution.py swapping in CustomQwen3*; every test's outcome (passed, failed,
skipped, error) is compared. Exit 0 when all outcomes agree; the differences are printed otherwise.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

TEST_MODULE = "tests/models/qwen3/test_modeling_qwen3.py"


def outcomes(junit: Path) -> dict[str, str]:
    result = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[name] = "failed" if "failure" in kinds else "error" if "error" in kinds else "skipped" if "skipped" in kinds else "passed"
    return result


def run(tests: Path, junit: Path, substitute: bool, extra: list[str]) -> float:
    env = dict(os.environ)
    command = [sys.executable, "-m", "pytest", TEST_MODULE, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra]
    if substitute:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        command[4:4] = ["-p", "peer_substitution"]
    start = time.perf_counter()
    subprocess.run(command, cwd=tests, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", required=True, type=Path, help="folder that holds transformers' tests/ tree")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-k generate\"")
    args = parser.parse_args(argv)
    if not (args.tests / TEST_MODULE).is_file():
        parser.error(f"{args.tests / TEST_MODULE} does not exist: point --tests at a transformers checkout")
    extra = shlex.split(args.pytest_args)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, substitute in (("stock", False), ("qwen3_custom_mask", True)):
            junit = Path(tmp) / f"{label}.xml"
            seconds = run(args.tests, junit, substitute, extra)
            runs[label] = outcomes(junit)
            print(f"{label:<18} {dict(Counter(runs[label].values()))}  ({seconds:.0f} s)")
    stock, ours = runs["stock"], runs["qwen3_custom_mask"]
    differ = sorted(name for name in stock.keys() | ours.keys() if stock.get(name) != ours.get(name))
    for name in differ:
        print(f"  {name}: stock {stock.get(name, 'absent')}, qwen3_custom_mask {ours.get(name, 'absent')}")
    print(f"{len(stock)} tests, {len(differ)} with a different outcome")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
