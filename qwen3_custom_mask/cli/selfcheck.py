"""``qwen3-mask selfcheck``: is this plugin right on the torch / transformers installed here?

Runs in seconds on CPU, on a tiny random Qwen3 saved and loaded through ``from_pretrained``: the default
strategy against stock ``Qwen3ForCausalLM`` (forward, left-padded cached generate, static cache), a cached
decode step against the uncached forward for ``sliding_window`` and ``prefix_lm``, and the same on
flex_attention where it compiles. One line per check; returns False (the command exits 1) on any mismatch.

What it catches: an upstream rename or changed hook that makes cached masks silently wrong (transformers
5.24's ``cache`` rename did exactly that to a body reading the old name).
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
import traceback

PAD = 255


def _batch(torch, batch=4, length=10, vocab=250):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate((3, 0, 5, 1)[:batch]):
        mask[row, :pad] = 0
        ids[row, :pad] = PAD
    return ids, mask


def _checks(path, torch):
    from transformers import Qwen3ForCausalLM, StaticCache

    from ..model.compat import forward_cache_kwarg
    from ..model import CustomQwen3ForCausalLM

    ids, mask = _batch(torch)
    gen = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    cache_kw = forward_cache_kwarg()

    def load(cls, backend, **kw):
        return cls.from_pretrained(path, attn_implementation=backend, **kw).eval()

    def decode_step(model, strategy_inputs):
        """(max |cached - uncached| logits of the last token after a prefill, tolerance)."""
        from transformers import DynamicCache

        prompt, last = ids[:, :-1], ids[:, -1:]
        cache = DynamicCache(config=model.config)
        model(prompt, attention_mask=mask[:, :-1], use_cache=True, **{cache_kw: cache}, **strategy_inputs)
        step = model(last, attention_mask=mask, use_cache=True, **{cache_kw: cache}, **strategy_inputs).logits[:, -1]
        full = model(ids, attention_mask=mask, **strategy_inputs).logits[:, -1]
        return (step - full).abs().max().item()

    for backend in ("eager", "sdpa"):
        stock, custom = load(Qwen3ForCausalLM, backend), load(CustomQwen3ForCausalLM, backend)

        def forward_equal():
            return torch.equal(custom(ids, attention_mask=mask).logits, stock(ids, attention_mask=mask).logits), "identical logits"

        def generate_equal():
            return torch.equal(custom.generate(ids, **gen), stock.generate(ids, **gen)), "identical tokens, batch 4 left-padded"

        def static_equal():
            def run(model):
                cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + 8)
                return model.generate(ids, **gen, **{cache_kw: cache})
            return torch.equal(run(custom), run(stock)), "identical tokens, StaticCache"

        yield f"causal == stock, forward ({backend})", forward_equal
        yield f"causal == stock, cached generate ({backend})", generate_equal
        yield f"causal == stock, static-cache generate ({backend})", static_equal
        for spec, inputs in (({"name": "sliding_window", "window": 3}, {}), ("prefix_lm", {"prefix_lengths": torch.tensor([4, 4, 3, 5])})):
            def cached_vs_full(spec=spec, inputs=inputs):
                custom.set_mask_strategy(spec)
                try:
                    diff = decode_step(custom, inputs)
                finally:
                    custom.set_mask_strategy("causal")
                return diff < 1e-4, f"max |diff| {diff:.1e}"
            name = spec if isinstance(spec, str) else spec["name"]
            yield f"{name}: cached decode step == uncached forward ({backend})", cached_vs_full

    def flex():
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401  (ImportError: not available)

        # The strategy set after loading: a load-time strategy on this temporary folder would warn about rebuilds.
        sdpa, model = load(CustomQwen3ForCausalLM, "sdpa"), load(CustomQwen3ForCausalLM, "flex_attention")
        for each in (sdpa, model):
            each.set_mask_strategy({"name": "sliding_window", "window": 3})
        diff = decode_step(model, {})
        ref = (model(ids, attention_mask=mask).logits - sdpa(ids, attention_mask=mask).logits).abs().max().item()
        return diff < 1e-4 and ref < 1e-4, f"cached vs uncached {diff:.1e}, flex vs sdpa {ref:.1e}"

    yield "flex_attention: sliding_window cached decode and forward vs sdpa", flex


def selfcheck(stream=None, flex: bool = True) -> bool:
    """Prints versions and one line per check; True when every check passed."""
    import logging

    import torch
    import transformers

    from ..model.compat import TESTED, check_internals, untested_notice
    from .tiny import save_tiny_checkpoint

    out = stream or sys.stdout
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__} "
          f"(tested: {TESTED[0]} to {TESTED[1]})", file=out)
    if untested_notice():
        print(f"note  {untested_notice()}", file=out)
    try:
        check_internals()
    except RuntimeError as err:
        print(f"FAIL  transformers internals: {err}", file=out)
        return False
    logging.getLogger("transformers").setLevel(logging.ERROR)
    ok = True
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = save_tiny_checkpoint(tmp)
        for name, check in _checks(path, torch):
            if name.startswith("flex") and not flex:
                continue
            if name.startswith("flex"):  # the one long check: say so before it starts
                print(f"....  {name}: compiling flex_attention (about 20 s on 2 CPU cores; --no-flex skips it)", file=out, flush=True)
            start = time.perf_counter()
            try:
                passed, detail = check()
                status = "ok  " if passed else "FAIL"
            except Exception as err:  # a check that raises is a failure, except flex where it cannot run
                if name.startswith("flex") and (isinstance(err, ImportError) or "compile" in repr(err).lower()):
                    print(f"skip  {name}: cannot run here ({type(err).__name__}: {str(err).splitlines()[0][:120]})", file=out)
                    continue
                passed, status, detail = False, "FAIL", f"{type(err).__name__}: {err}"
                traceback.print_exc(file=sys.stderr)
            ok &= passed
            print(f"{status}  {name}: {detail} ({time.perf_counter() - start:.1f} s)", file=out)
    print("selfcheck passed" if ok else "selfcheck FAILED: do not rely on this stack; see README 'Troubleshooting'", file=out)
    return ok
