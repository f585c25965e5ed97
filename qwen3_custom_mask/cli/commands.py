"""The `qwen3-mask` commands (one ``cmd_*`` each); the parser and the error handling are in __init__.py.

Each command imports torch, transformers and the model code itself, after its flags are checked, so that a
mistake answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys


from .checks import (  # noqa: F401  (UserError, the constants and _check_flags: this module held them)
    BACKENDS,
    DTYPES,
    MAX_SHOW_LENGTH,
    UserError,
    _check_device,
    _check_flags,
    _model_path,
    _model_path_exists,
    _pairs,
    _spec,
)


# ------------------------------------------------------------------------------------------------ list
def cmd_list(args) -> None:
    from ..strategy.registry import available_masks, get_mask

    for name in available_masks():
        entry = get_mask(name)
        params = ", ".join(
            k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in entry.parameters.items()
        )
        inputs = f"  inputs: {', '.join(entry.inputs)}" if entry.inputs else ""
        print(f"{name:<24}{entry.doc}")
        print(f"{'':<24}params: {params or '-'}{inputs}")


# ------------------------------------------------------------------------------------------------ show
def cmd_show(args) -> None:
    if not 1 <= args.length <= MAX_SHOW_LENGTH:
        raise UserError(f"--length {args.length}: draw between 1 and {MAX_SHOW_LENGTH} tokens (the drawing is a length x length grid)")
    strategy = _spec(args.strategy, _pairs(args.param, "--param"))  # torch-free: a bad spec answers at once
    inputs = _pairs(args.input, "--input")
    unknown = sorted(set(inputs) - set(strategy.inputs))
    if unknown:
        takes = f"it takes {', '.join(strategy.inputs)}" if strategy.inputs else "it takes no per-call inputs"
        raise UserError(f"--input {', '.join(unknown)}: not an input of {strategy.name!r}; {takes}")
    examples = {"prefix_lengths": "[3]", "document_ids": ",".join(str(i * 3 // args.length) for i in range(args.length)),
                "draft_tree": "-1,0,0,1"}
    missing = [name for name in strategy.inputs if name not in inputs]
    if missing:
        given = " ".join(f"--input {name}={examples.get(name, '...')}" for name in missing)
        raise UserError(f"{strategy.name!r} is drawn for given per-call inputs: add {given}")
    for key in ("document_ids",):
        value = inputs.get(key)
        if isinstance(value, list) and value and not isinstance(value[0], list) and len(value) != args.length:
            raise UserError(f"--input {key} has {len(value)} entries, one per token: give {args.length} (or --length {len(value)})")
    for key, value in inputs.items():
        if isinstance(value, str):
            raise UserError(f"--input {key}={value}: give numbers, e.g. {key}=0,0,1,1 or {key}=[3] (one value per token or per sample)")
    from .draw import density, mask_matrix, save_png, to_ascii

    matrix = mask_matrix(strategy, args.length, head=args.head, layer=args.layer, num_heads=args.num_heads, **inputs)
    print(f"{json.dumps(strategy.to_dict())}  ({args.length} tokens, ■ = attend)")
    print(to_ascii(matrix))
    print(f"density {density(matrix):.3f} ({int(matrix.sum())} of {matrix.numel()} pairs)")
    if args.png:
        save_png(matrix, args.png, cell=args.cell, title=f"{json.dumps(strategy.to_dict())}  ({args.length} tokens)")
        print(f"wrote {args.png}")


# -------------------------------------------------------------------------------------------- generate
def _load(model_id: str | None, strategy, backend: str, device: str, dtype: str):
    import torch
    from transformers import AutoTokenizer

    from ..model import CustomQwen3ForCausalLM

    path = _model_path(model_id)
    dtype_value = getattr(torch, dtype, None)
    if not isinstance(dtype_value, torch.dtype):
        raise UserError(f"--dtype {dtype!r} is not a torch dtype; use float32, bfloat16 or float16")
    _check_device(device)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not an attention backend; use one of {', '.join(BACKENDS)}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer("hello").input_ids:  # transformers gives an empty tokenizer for a folder without tokenizer files
        raise UserError(f"--model {model_id}: no tokenizer in the folder (tokenizer.json or vocab.json + merges.txt); "
                        f"copy the tokenizer files of the checkpoint it came from")
    tokenizer.padding_side = "left"
    model = CustomQwen3ForCausalLM.from_pretrained(path, attn_implementation=backend, dtype=dtype_value, device_map=device).eval()
    model.set_mask_strategy(strategy)  # set after loading: no client rebuilds this model, so no rebuild warning
    return path, tokenizer, model


def _generate(model, tokenizer, prompts, *, max_new_tokens: int, use_cache: bool, chat: bool, stream: bool):
    import torch
    from transformers import TextStreamer

    if chat:
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=False)
            for p in prompts
        ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    extra = {}
    if "document_ids" in model.mask_strategy.inputs:  # each prompt is one document
        extra["document_ids"] = torch.zeros_like(batch["input_ids"])
    missing = [name for name in model.mask_strategy.inputs if name not in extra and name != "prefix_lengths"]  # generate(): the prompt
    if missing:
        raise UserError(f"strategy {model.mask_strategy.name!r} needs per-call inputs {missing}; use the Python API for it")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    with torch.no_grad():
        out = model.generate(**batch, **extra, max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache, streamer=streamer)
    return out[:, batch["input_ids"].shape[1] :]


def cmd_generate(args) -> None:
    if any(not prompt.strip() for prompt in args.prompt):
        raise UserError('empty prompt: give the text to continue, e.g. qwen3-mask generate "The capital of France is"')
    strategy = _spec(args.strategy)
    _, tokenizer, model = _load(args.model, strategy, args.backend, args.device, args.dtype)
    stream = len(args.prompt) == 1
    new = _generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, use_cache=not args.no_cache, chat=args.chat, stream=stream)
    if not stream:
        for prompt, tokens in zip(args.prompt, new):
            print(f"{prompt} -> {tokenizer.decode(tokens, skip_special_tokens=True)!r}")


# ------------------------------------------------------------------------------------------------ demo
DEMO = [
    ("causal", {}),
    ("prefix_lm", {}),
    ({"name": "sliding_window", "window": 4}, {}),
    ({"name": "attention_sinks", "sinks": 2, "window": 4}, {}),
    ({"name": "chunked", "chunk_size": 4}, {}),
    ({"and": [{"name": "sliding_window", "window": 6}, {"name": "dilated_sliding_window", "window": 6, "dilation": 2}]}, {}),
    ("bidirectional", {"use_cache": False}),
]


def cmd_demo(args) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import Qwen3ForCausalLM

    from .draw import draw_ascii

    path = _model_path(args.model)
    print(f"model: {path}{'' if args.model else '  (embedded default: random weights, real Qwen3 tokenizer)'}")
    _, tokenizer, model = _load(path, _spec("causal"), args.backend, args.device, "float32")
    prompts = ["The capital of France is", "Attention masks decide"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)

    # 1. The default strategy is stock Qwen3, bit for bit.
    stock = Qwen3ForCausalLM.from_pretrained(path, attn_implementation=args.backend, device_map=args.device).eval()
    with torch.no_grad():
        same_logits = torch.equal(model(**batch).logits, stock(**batch).logits)
        ours = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False)
        theirs = stock.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    same_tokens = torch.equal(ours, theirs)
    print(f"default 'causal' vs stock Qwen3ForCausalLM ({args.backend}): logits identical: {same_logits}, "
          f"generated tokens identical: {same_tokens}")
    if not (same_logits and same_tokens):
        raise SystemExit("demo: the default strategy does not reproduce the stock model")

    # 2. Each strategy: its mask, and a batched, left-padded generation with it.
    for spec, options in tqdm(DEMO, desc="strategies", disable=not sys.stderr.isatty()):
        strategy = model.set_mask_strategy(spec)
        print(f"\n== {json.dumps(strategy.to_dict())}")
        print(draw_ascii(strategy, 10, **({"prefix_lengths": [4]} if "prefix_lengths" in strategy.inputs else {})))
        new = _generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, use_cache=options.get("use_cache", True), chat=False, stream=False)
        for prompt, tokens in zip(prompts, new):
            print(f"   {prompt!r} -> {tokenizer.decode(tokens, skip_special_tokens=True)!r}")
    print("\ndone: every strategy ran through from_pretrained + generate; see `qwen3-mask list` for the rest.")


# ---------------------------------------------------------------------------------------------- export
def cmd_export(args) -> None:
    from .default import default_checkpoint
    from ..serving.export import export_fields, export_stock
    from ..model import CustomQwen3ForCausalLM

    path = str(args.model) if args.model else str(default_checkpoint())
    model = CustomQwen3ForCausalLM.from_pretrained(path)
    if args.strategy:
        model.set_mask_strategy(_spec(args.strategy))
    fields = export_fields(model)  # refuses before anything is written
    out = export_stock(model, args.stock)
    if args.model is None or not (out / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        try:
            AutoTokenizer.from_pretrained(path).save_pretrained(out)
        except (OSError, ValueError):
            pass  # a checkpoint without a tokenizer exports without one
    mask_fields = {k: fields[k] for k in ("is_causal", "use_bidirectional_attention", "layer_types", "sliding_window") if k in fields}
    print(f"wrote {out}: model_type qwen3, mask {json.dumps(model.mask_strategy.to_dict())} as {json.dumps(mask_fields)}")


# ------------------------------------------------------------------------------------------- selfcheck
def cmd_selfcheck(args) -> None:
    from .selfcheck import selfcheck

    if not selfcheck(flex=not args.no_flex):
        raise SystemExit(1)


# ----------------------------------------------------------------------------------- bench / finetune
def cmd_bench(args, rest) -> None:
    from .bench_args import parse_args

    bench_args = parse_args(rest)  # --help and argument mistakes: before torch is imported
    from .benchmark import main as bench_main

    bench_main(bench_args)


def cmd_serve(args, rest) -> int:
    """transformers' own OpenAI-compatible server, with the plugin registered in each model's process."""
    from ..serving.server import SERVE_EXTRA, missing_serving_packages

    missing = missing_serving_packages()
    if missing:
        raise UserError(f"serving needs {', '.join(missing)} (transformers' serving packages): {SERVE_EXTRA}")
    try:
        path = _model_path_exists(args.model)
    except UserError as err:
        raise UserError(str(err).replace("--model ", "serve ", 1)) from None
    spec = _spec(args.strategy) if args.strategy else None
    served = _served_options(rest)
    from ..model.configuration import CustomQwen3Config
    from ..strategy.cacheable import serving_refusal
    from ..strategy import resolve_strategy

    config = CustomQwen3Config.from_pretrained(path)
    strategy = resolve_strategy(spec if spec is not None else config.mask_strategy)
    from ..model.scheduling import whole_prompts_servable

    whole_prompts_refused = served.continuous_batching and not whole_prompts_servable()  # prefix_lm: scheduled whole
    why = serving_refusal(strategy, config.num_hidden_layers, config.num_attention_heads, whole_prompts_refused)
    backend = served.attn_implementation
    if why is None and served.continuous_batching and backend and not backend.endswith(("sdpa", "eager")):
        if any(strategy.for_layer(i).flash_form() != {} for i in range(config.num_hidden_layers)):
            why = (f"Continuous batching with {backend} serves the 'causal' strategy only (the engine gives it no mask): "
                   f"use --attn-implementation sdpa to serve {strategy.name!r}.")
    if why:
        raise UserError(why)
    from ..serving.server import serve

    return serve(path, None if spec is None else strategy.to_dict(), rest)


def _served_options(rest: list[str]) -> argparse.Namespace:
    """The transformers serve options the plugin checks, spelled as that CLI takes them (``--flag value`` or
    ``--flag=value``); the rest are transformers' to read."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--attn-implementation")
    parser.add_argument("--port", type=_port)  # checked here: transformers' server takes seconds to import
    parser.add_argument("--continuous-batching", action=argparse.BooleanOptionalAction, default=False)  # click's --x/--no-x
    return parser.parse_known_args(rest)[0]


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise UserError(f"--port {text!r}: give a port number, 0 to 65535 (default 8000)")
    return int(text)


def cmd_finetune(args, rest) -> None:
    from .finetune import main as finetune_main

    logging.getLogger("finetune").setLevel(logging.INFO)  # its progress and "saved to ..." lines, as the script shows
    finetune_main(rest)


