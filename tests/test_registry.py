"""The registry: decorator, lookups, helpful errors, entry-point plugins, isolation of built models."""

import sys
import textwrap

import pytest
import torch

import qwen3_custom_mask.strategy.registry as registry
from qwen3_custom_mask import available_masks, get_mask, register_mask, resolve_strategy, unregister_mask
from qwen3_custom_mask.strategy.reference import reference_logits, reference_mask

from conftest import left_padded

BUILT_IN = {"bidirectional", "causal", "prefix_lm", "sliding_window"}


@pytest.fixture
def scratch_names():
    """Names registered by a test are removed afterwards."""
    before = set(registry._MASKS)
    yield
    for name in set(registry._MASKS) - before:
        del registry._MASKS[name]


def test_available_masks_is_sorted_and_holds_the_built_ins():
    names = available_masks()
    assert names == sorted(names)
    assert BUILT_IN <= set(names)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_documents_itself(name):
    entry = get_mask(name)
    assert entry.doc and entry.factory.__module__.startswith("qwen3_custom_mask.masks")


@torch.no_grad()
def test_user_strategy_from_the_readme_runs_in_the_model(model_for, scratch_names):
    @register_mask("my_window")
    def my_window(window: int = 4):
        def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

        return mask_mod

    assert "my_window" in available_masks()
    model = model_for("sdpa", {"name": "my_window", "window": 2})
    ids, mask, positions = left_padded()
    out = model(ids, attention_mask=mask, position_ids=positions).logits
    dense = reference_mask(my_window(2), 2, 4, 12, mask.bool())
    ref = reference_logits(model, ids, dense, positions)
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@torch.no_grad()
def test_readme_padding_aware_strategy_gives_a_row_batched_what_it_gives_alone(model_for, scratch_names, backend):
    """README "Your own strategy": a mask that always sees the first token must find it through padding_mask;
    `kv_idx == 0` would see a pad token in a left-padded row, so the row batched differs from the row alone."""

    @register_mask("first_token_and_window")
    def first_token_and_window(window: int = 4, padding_mask=None):
        # padding_mask: (batch, keys) bool, True on real tokens; a row's first real token moves with left padding
        first = padding_mask.int().argmax(-1) if padding_mask is not None else torch.zeros(1, dtype=torch.long)

        def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
            return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx == first[batch_idx]))

        return mask_mod

    @register_mask("token_zero_and_window")
    def token_zero_and_window(window: int = 4):  # the naive version: position 0 is padding in a padded row
        def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
            return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx == 0))

        return mask_mod

    ids, mask, positions = left_padded(pads=(3, 0))
    for name, same in (("first_token_and_window", True), ("token_zero_and_window", False)):
        model = model_for(backend, {"name": name, "window": 2})
        batched = model(ids, attention_mask=mask, position_ids=positions).logits[0, 3:]
        alone = model(ids[:1, 3:]).logits[0]
        assert torch.allclose(batched, alone, atol=1e-5) is same, name


def test_registering_a_name_twice_needs_replace(scratch_names):
    register_mask("twice")(lambda: (lambda b, h, q, kv: kv <= q))
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        register_mask("twice")(lambda: (lambda b, h, q, kv: kv >= 0))
    register_mask("twice", replace=True)(lambda: (lambda b, h, q, kv: kv >= 0))


@pytest.mark.parametrize("bad", ["has space", "", "1abc", None])
def test_register_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="identifier"):
        register_mask(bad)


def test_declared_inputs_must_be_factory_parameters(scratch_names):
    with pytest.raises(TypeError, match="declares inputs"):
        register_mask("needs_ids", inputs=("document_ids",))(lambda window=1: None)


@torch.no_grad()
def test_replacing_or_removing_a_strategy_never_changes_a_built_model(model_for, scratch_names):
    register_mask("shifty")(lambda: (lambda b, h, q, kv: kv <= q))
    model = model_for("sdpa", "shifty")
    ids, mask, _ = left_padded()
    before = model(ids, attention_mask=mask).logits
    register_mask("shifty", replace=True)(lambda: (lambda b, h, q, kv: kv >= 0))
    assert torch.equal(model(ids, attention_mask=mask).logits, before)
    unregister_mask("shifty")
    assert torch.equal(model(ids, attention_mask=mask).logits, before)
    with pytest.raises(KeyError, match="Unknown mask strategy 'shifty'"):
        model.set_mask_strategy("shifty")


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch, scratch_names):
    """A third-party package declares `[project.entry-points."qwen3_custom_mask.masks"]`."""
    (tmp_path / "acme_masks.py").write_text(
        textwrap.dedent(
            """
            from qwen3_custom_mask import register_mask

            @register_mask("acme_module_mask")
            def acme_module_mask():
                return lambda b, h, q, kv: kv <= q

            def acme_factory(stride: int = 2):
                return lambda b, h, q, kv: (kv <= q) & ((q - kv) % stride == 0)
            """
        )
    )
    dist = tmp_path / "acme_masks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-masks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[qwen3_custom_mask.masks]\nacme = acme_masks\nacme_strided = acme_masks:acme_factory\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "acme_masks", raising=False)

    assert {"acme_module_mask", "acme_strided"} <= set(available_masks())
    assert resolve_strategy({"name": "acme_strided", "stride": 3}).to_dict() == {"name": "acme_strided", "stride": 3}


@pytest.mark.parametrize("name", ["sliding_window", "attention_sinks", "chunked", "dilated_sliding_window", "global_tokens"])
def test_a_bare_name_takes_the_factorys_defaults_everywhere(model_for, name):
    """`"sliding_window"` alone means window=4096, as `qwen3-mask list` shows, for the mask and for the hooks
    (flash form, BoundedCache bounds, flex block structure) alike."""
    strategy = resolve_strategy(name)
    assert strategy.to_dict() == {"name": name}  # saved as given
    assert strategy.resolved_params == {k: v for k, v in get_mask(name).parameters.items()}
    model = model_for("sdpa", name)
    ids, mask, _ = left_padded()
    out = model(ids, attention_mask=mask).logits
    model.set_mask_strategy({"name": name, **strategy.resolved_params})
    assert torch.equal(out, model(ids, attention_mask=mask).logits)
