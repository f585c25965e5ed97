"""``qwen3-mask``: list, draw and try mask strategies from the terminal.

    qwen3-mask list
    qwen3-mask show sliding_window --param window=3 --length 8 [--png mask.png]
    qwen3-mask generate --strategy configs/prefix_lm.yaml "The capital of France is"
    qwen3-mask demo                       # the README's main job, on the embedded default checkpoint
    qwen3-mask export --model PATH --stock OUT   # a plain qwen3 checkpoint, where stock can express the mask
    qwen3-mask selfcheck                  # is the plugin right on the torch / transformers installed here?
    qwen3-mask bench                      # speed/memory against stock Qwen3ForCausalLM
    qwen3-mask finetune --recipe configs/packed_sft.yaml --data train.jsonl --model PATH
    qwen3-mask serve PATH [--strategy SPEC] [--continuous-batching] [--port 8000]   # transformers serve, with the plugin

User mistakes (unknown strategy, bad parameter, missing file) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .args import OneLineParser
from .commands import (  # noqa: F401  (BACKENDS, DEMO, DTYPES, MAX_SHOW_LENGTH: 0.1.0's cli.py held them)
    BACKENDS,
    DEMO,
    DTYPES,
    MAX_SHOW_LENGTH,
    UserError,
    _check_flags,
    cmd_bench,
    cmd_demo,
    cmd_export,
    cmd_finetune,
    cmd_generate,
    cmd_list,
    cmd_selfcheck,
    cmd_serve,
    cmd_show,
)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="qwen3-mask", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    # -v after the command too (qwen3-mask demo -v); SUPPRESS keeps a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress and show tracebacks")
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[verbose] if k.get("add_help", True) else [], **k)

    sub.add_parser("list", help="registered strategies, their parameters and inputs")

    show = sub.add_parser("show", help="draw a strategy's mask")
    show.add_argument("strategy", help="name, JSON spec, or .json/.yaml file")
    show.add_argument("--param", action="append", metavar="K=V", help="strategy parameter (JSON value), repeatable")
    show.add_argument("--input", action="append", metavar="K=V", help="per-call input, e.g. prefix_lengths=[3]")
    show.add_argument("--length", type=int, default=12)
    show.add_argument("--head", type=int, default=0)
    show.add_argument("--num-heads", type=int)
    show.add_argument("--layer", type=int, default=0)
    show.add_argument("--png", help="also write the mask as a PNG")
    show.add_argument("--cell", type=int, default=24, help="PNG pixels per cell")

    def model_args(p):
        p.add_argument("--model", help="checkpoint path or hub id (default: the embedded default)")
        p.add_argument("--backend", default="sdpa", help="attn_implementation: eager, sdpa, flex_attention, flash_attention_2")
        p.add_argument("--device", default="cpu")
        p.add_argument("--max-new-tokens", type=int, default=16)

    gen = sub.add_parser("generate", help="generate with a strategy, streaming the tokens")
    model_args(gen)
    gen.add_argument("--strategy", help="name, JSON spec, or .json/.yaml file (default: causal)")
    gen.add_argument("--dtype", default="float32")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    gen.add_argument("--no-cache", action="store_true", help="recompute the mask at each step (bidirectional)")
    gen.add_argument("prompt", nargs="+")

    demo = sub.add_parser("demo", help="the main job: every strategy on the embedded default, checked against stock")
    model_args(demo)

    export = sub.add_parser("export", help="write a plain qwen3 checkpoint that stock loaders serve with the same mask")
    export.add_argument("--model", help="plugin checkpoint (default: the embedded default)")
    export.add_argument("--strategy", help="override the checkpoint's strategy (name, JSON spec, or file)")
    export.add_argument("--stock", required=True, metavar="OUT", help="output folder")

    check = sub.add_parser("selfcheck", help="check the plugin against stock on the installed torch/transformers (seconds)")
    check.add_argument("--no-flex", action="store_true", help="skip the flex_attention check (it compiles)")

    serve = sub.add_parser("serve", help="transformers' OpenAI-compatible server (transformers serve) for a plugin checkpoint",
                           epilog="Every other option is transformers serve's: --host, --port, --device, --dtype, "
                                  "--attn-implementation, --continuous-batching, --cb-* (transformers serve --help).")
    serve.add_argument("model", help="checkpoint folder or hub id (served under its saved strategy)")
    serve.add_argument("--strategy", help="serve under this strategy instead (name, JSON spec, or .json/.yaml file)")

    sub.add_parser("bench", help="benchmark against stock Qwen3ForCausalLM (options: qwen3-mask bench --help)", add_help=False)
    sub.add_parser("finetune", help="fine-tune with a strategy (options: qwen3-mask finetune --help)", add_help=False)
    return parser


def _message(err: Exception) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)  # KeyError's str() is a repr


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as err:  # argparse's mistakes, in one line (OneLineParser); --help exits 0 as usual
        if not isinstance(err.code, str):
            raise
        print(f"qwen3-mask: {err.code}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # An untested transformers: said by selfcheck and under -v, never in front of an ordinary answer.
    from ..model.compat import mute_untested_notice, untested_notice

    mute_untested_notice()
    if args.command in ("generate", "demo", "export"):  # flag mistakes answer before anything heavy is imported
        try:
            _check_flags(args)
        except (UserError, ValueError, TypeError, KeyError, OSError) as err:
            print(f"qwen3-mask: error: {_message(err)}", file=sys.stderr)
            return EXIT_USAGE
    if args.verbose and untested_notice():  # after the flag check: a mistake stays one line, -v or not
        print(f"qwen3-mask: note: {untested_notice()}", file=sys.stderr)
    # list and show answer without loading transformers; finetune and bench set their own logging after their checks
    if not args.verbose and args.command not in ("list", "show", "finetune", "bench", "serve"):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if rest and args.command not in ("bench", "finetune", "serve"):
        print(f"qwen3-mask: error: unrecognized arguments: {' '.join(rest)} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    commands = {"list": cmd_list, "show": cmd_show, "generate": cmd_generate, "demo": cmd_demo, "export": cmd_export,
                "selfcheck": cmd_selfcheck}
    try:
        if args.command == "serve":
            return cmd_serve(args, rest)
        if args.command in ("bench", "finetune"):
            {"bench": cmd_bench, "finetune": cmd_finetune}[args.command](args, rest)
        else:
            commands[args.command](args)
    except (UserError, ValueError, TypeError, KeyError, FileNotFoundError, ImportError, json.JSONDecodeError) as err:
        if args.verbose:
            raise
        message = _message(err).replace("Pass use_cache=False to generate()", "Pass --no-cache")  # the CLI's spelling
        message = message.strip().splitlines()[0] if message.strip() else type(err).__name__  # one line; -v: all of it
        print(f"qwen3-mask: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `qwen3-mask list | head`
        return 0
    except SystemExit as err:  # scripts' own "error: ..." exits (finetune), reported like every other mistake
        if not isinstance(err.code, str):
            return err.code if isinstance(err.code, int) else 1
        print(f"qwen3-mask: error: {err.code.removeprefix('error: ')}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # e.g. a model path that is neither a folder nor a reachable hub id
        if args.verbose:
            raise
        print(f"qwen3-mask: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    return 0

