"""The contract with the installed transformers: the cache under either name, the default against stock on a
left-padded batch, a refusal when a hook moved, a warning past the tested range, and `qwen3-mask selfcheck`."""

import io
import logging

import pytest
import torch
from transformers import DynamicCache, Qwen3ForCausalLM, StaticCache, Qwen3Model, masking_utils

from qwen3_custom_mask import CustomQwen3ForCausalLM, CustomQwen3Model
from qwen3_custom_mask.model import compat, masking
from qwen3_custom_mask.cli.selfcheck import selfcheck

from conftest import left_padded

# Every name the installed transformers accepts: `past_key_values` always (an alias from 5.24), `cache` from 5.24.
CACHE_NAMES = ["past_key_values"] + (["cache"] if compat.forward_cache_kwarg() == "cache" else [])


def spy_build_masks(monkeypatch):
    """Records the cache object every build_masks call receives."""
    seen = []
    real = masking.build_masks

    def spy(body, inputs_embeds, attention_mask, cache, *args, **kwargs):
        seen.append(cache)
        return real(body, inputs_embeds, attention_mask, cache, *args, **kwargs)

    monkeypatch.setattr(masking, "build_masks", spy)
    import qwen3_custom_mask.model.body as modeling
    import qwen3_custom_mask.model.generation as generation

    monkeypatch.setattr(modeling, "build_masks", spy)
    monkeypatch.setattr(generation, "build_masks", spy)
    return seen


@pytest.mark.parametrize("name", CACHE_NAMES)
@pytest.mark.parametrize("entry", ["head", "body"])
@torch.no_grad()
def test_masks_are_built_from_the_cache_the_caller_passed(model_for, monkeypatch, name, entry):
    """The F1 shape of transformers 5.24: the head passed `cache=`, the body read `past_key_values` and sized
    every mask from a fresh empty cache. Whatever name the caller uses, the body's masks see that cache."""
    model = model_for("sdpa", {"name": "sliding_window", "window": 3})
    seen = spy_build_masks(monkeypatch)
    ids, mask, _ = left_padded(pads=(3, 0))
    cache = DynamicCache(config=model.config)
    call = model if entry == "head" else model.model
    call(ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True, **{name: cache})
    step = call(ids[:, -1:], attention_mask=mask, use_cache=True, **{name: cache})
    assert seen and all(c is cache for c in seen)
    assert cache.get_seq_length() == ids.shape[1]
    if entry == "head":  # and the decode step equals the uncached forward
        full = model(ids, attention_mask=mask).logits[:, -1]
        torch.testing.assert_close(step.logits[:, -1], full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("spec,inputs", [
    ({"name": "sliding_window", "window": 3}, {}),
    ("prefix_lm", {"prefix_lengths": torch.tensor([4, 4, 2, 5])}),
    ({"name": "attention_sinks", "sinks": 1, "window": 3}, {}),
], ids=["sliding_window", "prefix_lm", "attention_sinks"])
@torch.no_grad()
def test_generate_cached_equals_recomputed_on_this_transformers(model_for, backend, spec, inputs):
    """generate() with a cache (dynamic, static) gives the tokens of use_cache=False, batch 4 left-padded."""
    model = model_for(backend, spec)
    ids, mask, _ = left_padded(batch=4, pads=(3, 0, 5, 1))
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=255, **inputs)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(model.generate(ids, **kwargs), recomputed)
    static = StaticCache(config=model.config, max_cache_len=ids.shape[1] + 5)
    assert torch.equal(model.generate(ids, **kwargs, **{compat.forward_cache_kwarg(): static}), recomputed)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_default_equals_stock_on_a_left_padded_batch_of_four(checkpoint, backend):
    stock = Qwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend).eval()
    custom = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend).eval()
    ids, mask, _ = left_padded(batch=4, pads=(3, 0, 5, 1))
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=255)
    assert torch.equal(custom.generate(ids, **kwargs), stock.generate(ids, **kwargs))
    for model in (custom, stock):
        model.generation_config.cache_implementation = "static"
    try:
        assert torch.equal(custom.generate(ids, **kwargs), stock.generate(ids, **kwargs))
    finally:
        for model in (custom, stock):
            model.generation_config.cache_implementation = None


def test_both_cache_names_at_once_is_an_error(model_for):
    model = model_for("sdpa", {"name": "sliding_window", "window": 3})
    ids = torch.randint(0, 250, (1, 4))
    with pytest.raises((ValueError, TypeError), match="cache"):
        model.model(ids, cache=DynamicCache(), past_key_values=DynamicCache(), use_cache=True)


def test_a_moved_hook_refuses_to_build_a_model(monkeypatch):
    """A transformers whose mask builder wants an argument this plugin does not pass (5.0-5.3: cache_position)."""

    def old_builder(config, inputs_embeds, attention_mask, cache_position, past_key_values, position_ids=None):
        raise AssertionError("never called")

    monkeypatch.setattr(masking_utils, "create_causal_mask", old_builder)
    compat.internals.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"create_causal_mask requires \['cache_position'\].*tested with transformers"):
            CustomQwen3Model(__import__("qwen3_custom_mask.cli.tiny", fromlist=["x"]).tiny_qwen3_config())
    finally:
        monkeypatch.undo()
        compat.internals.cache_clear()


def test_a_forward_without_a_cache_argument_is_named(monkeypatch):
    def forward(self, input_ids=None, attention_mask=None, kv_store=None, **kwargs):
        raise AssertionError("never called")

    monkeypatch.setattr(Qwen3Model, "forward", forward)
    compat.internals.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"Qwen3Model.forward takes none of \['cache', 'past_key_values'\]"):
            compat.check_internals()
    finally:
        monkeypatch.undo()
        compat.internals.cache_clear()


def test_untested_notice_is_said_once_where_a_model_is_built(monkeypatch, caplog, checkpoint):
    monkeypatch.setattr(compat, "transformers_version", lambda: "5.99.0")
    monkeypatch.setattr(compat, "_notice", {"muted": False, "said": False})
    with caplog.at_level(logging.WARNING, logger="qwen3_custom_mask.model.compat"):
        CustomQwen3ForCausalLM.from_pretrained(checkpoint)
        CustomQwen3ForCausalLM.from_pretrained(checkpoint)
    notes = [r.getMessage() for r in caplog.records if r.name == "qwen3_custom_mask.model.compat"]
    assert len(notes) == 1, notes
    assert f"{compat.TESTED[0]} to {compat.TESTED[1]}" in notes[0] and "5.99.0" in notes[0] and "qwen3-mask selfcheck" in notes[0]


def test_untested_notice_only_outside_the_tested_range(monkeypatch):
    monkeypatch.delenv("QWEN3_MASK_ASSUME_UNTESTED", raising=False)
    monkeypatch.setattr(compat, "transformers_version", lambda: compat.TESTED[1])
    assert compat.untested_notice() is None
    monkeypatch.setattr(compat, "transformers_version", lambda: compat.TESTED[0])
    assert compat.untested_notice() is None
    for outside in ("5.99.0", "6.0.0.dev0", "5.3.9"):
        monkeypatch.setattr(compat, "transformers_version", lambda v=outside: v)
        assert outside in compat.untested_notice()
    monkeypatch.setenv("QWEN3_MASK_ASSUME_UNTESTED", "1")  # what the suite runs under (conftest.py)
    monkeypatch.setattr(compat, "transformers_version", lambda: compat.TESTED[1])
    assert compat.untested_notice() is not None


def test_the_suite_runs_as_if_transformers_were_untested():
    """conftest.py forces the notice on for every test and CLI subprocess, so each CLI "one line on stderr" test
    and every parity test passes on a release CI has not proven yet (the 5.25 failure mode)."""
    assert compat.untested_notice() is not None


def test_cli_says_the_notice_under_verbose_and_selfcheck_only(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "QWEN3_MASK_ASSUME_UNTESTED": "1"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "qwen3_custom_mask.cli", *args], capture_output=True, text=True, env=env, timeout=300)

    quiet = run("show", "no_such_strategy")
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1 and "is tested with transformers" not in quiet.stderr
    loud = run("list", "-v")
    assert loud.returncode == 0 and "is tested with transformers" in loud.stderr
    assert "is tested with transformers" not in run("list").stderr


def test_pyproject_floor_is_the_tested_floor():
    """pyproject's floor is the tested floor (CI's compat job installs it); nothing asserts the installed version
    lies inside TESTED, which every new release would break."""
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = next(d for d in deps if d.startswith("transformers"))
    assert f">={compat.TESTED[0]}" in declared


def test_cache_probe_reads_the_name_the_function_uses_not_a_deprecated_alias(monkeypatch):
    """5.25 exposes ``past_key_values`` in the mask builders' signatures beside ``cache`` (deprecate_kwarg with
    expose_in_signature). The probe must pick the name the function really reads, whichever it is."""
    import functools
    import inspect

    def builder(config, inputs_embeds, attention_mask, past_key_values=None, position_ids=None):
        return past_key_values

    @functools.wraps(builder)
    def exposed(*args, cache=None, **kwargs):  # a wrapper that accepts and advertises the new name as an alias
        return builder(*args, past_key_values=cache, **kwargs)

    params = list(inspect.signature(builder).parameters.values())
    alias = inspect.Parameter("cache", inspect.Parameter.KEYWORD_ONLY, default=None)
    exposed.__signature__ = inspect.signature(builder).replace(parameters=params + [alias])
    assert compat._cache_name(exposed, "builder", []) == "past_key_values"
    # and the installed builders: the name the unwrapped function reads is the forward's
    real = inspect.signature(inspect.unwrap(masking_utils.create_causal_mask)).parameters
    assert compat.mask_cache_kwarg() in real


def test_selfcheck_passes_here_and_fails_on_a_wrong_mask(monkeypatch):
    out = io.StringIO()
    assert selfcheck(out, flex=False), out.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("python ") and "transformers" in lines[0]
    assert sum(line.startswith("ok") for line in lines) == 10

    # A body that sizes cached masks from an empty cache (the 5.24 failure) must fail the check.
    real = masking.build_masks

    def forgetful(body, inputs_embeds, attention_mask, cache, *args, **kwargs):
        return real(body, inputs_embeds, attention_mask, None if cache is None else DynamicCache(), *args, **kwargs)

    import qwen3_custom_mask.model.body as modeling

    monkeypatch.setattr(modeling, "build_masks", forgetful)
    out = io.StringIO()
    assert not selfcheck(out, flex=False)
    assert "FAIL" in out.getvalue() and "selfcheck FAILED" in out.getvalue()


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
@torch.no_grad()
def test_generate_takes_the_cache_under_either_name_on_any_version(model_for, name, kind):
    """Before 5.24 generate() knows only past_key_values (a cache= would make it build a second cache)."""
    model = model_for("sdpa", {"name": "sliding_window", "window": 3})
    ids, mask, _ = left_padded(batch=4, pads=(3, 0, 5, 1))
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=255)
    cache = DynamicCache(config=model.config) if kind == "dynamic" else StaticCache(config=model.config, max_cache_len=16)
    out = model.generate(ids, **kwargs, **{name: cache})
    assert torch.equal(out, model.generate(ids, use_cache=False, **kwargs))
    assert int(cache.get_seq_length()) == ids.shape[1] + 3  # the caller's cache was the one filled
