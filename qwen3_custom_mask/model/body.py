"""The body: `CustomQwen3Model` builds the attention masks from its strategy; every head (heads.py) sits on it.

Where stock `Qwen3Model.forward` builds causal masks, the body builds the strategy's (masking.py) and hands
the ready ``{layer_type: mask}`` dict to stock's forward, which skips its own mask creation: nothing in
transformers is patched. The heads (causal LM, sequence / token classification, question answering) are
stock's, on this body, so ``model.model(...)``, ``AutoModel`` and every ``AutoModelFor...`` honour the strategy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from functools import partial
from typing import Any

import torch
from transformers import Qwen3Config, Qwen3Model
from transformers.cache_utils import DynamicCache
from transformers.utils.generic import merge_with_config_defaults

from .. import masks  # noqa: F401  (registers the built-in strategies)
from ..strategy import Strategy, resolve_strategy
from ..strategy.lowering import FLASH_BACKENDS
from ..strategy.registry import mask_input_names
from . import paged
from .clients import register_with_peft, say_if_adapted, warn_if_path_rebuilds_differently  # noqa: F401  (0.1.0's modeling held them)
from .compat import check_internals, check_model_internals, forward_cache_kwarg, pop_cache, warn_if_untested
from .configuration import MASK_SPEC_VERSION, CustomQwen3Config, check_spec_version, strategy_fields
from .masking import LayerMasks, build_masks, flash_error, pick_layer_mask

logger = logging.getLogger(__name__)

# Read once here: a plain string is what torch.compile sees in forward (it cannot trace the probe).
CACHE_KWARG = forward_cache_kwarg()

# Per-call inputs of the built-in strategies. They are named in every forward() signature (see
# `with_mask_inputs`), so that Trainer's default remove_unused_columns=True keeps those dataset columns.
BUILTIN_MASK_INPUTS = ("prefix_lengths", "document_ids", "draft_tree")
# Dataset columns the collators (training/collators.py) read and forward() never takes: named in the signature too, so that
# Trainer's defaults keep them for the collator; one that reaches forward() is refused (`_refuse_collator_columns`).
COLLATOR_COLUMNS = ("prompt_length",)


def as_custom_config(config: Qwen3Config) -> CustomQwen3Config:
    """A copy of a plain `Qwen3Config` as a `CustomQwen3Config`: every field and setting as it is (the backend
    choice included, nothing re-validated, as stock took it), causal unless it says ``is_causal: false``."""
    # A stock config read from a plugin folder carries the folder's spec fields: a newer spec is refused here too.
    check_spec_version({"mask_spec_version": getattr(config, "mask_spec_version", MASK_SPEC_VERSION)})
    if isinstance(config, CustomQwen3Config):
        return config
    custom = copy.copy(config)
    custom.__class__ = CustomQwen3Config
    for name, value in strategy_fields({"is_causal": getattr(config, "is_causal", True)}).items():
        setattr(custom, name, value)
    custom.__dict__.pop("is_causal", None)
    return custom


def is_paged(cache) -> bool:
    """Whether ``cache`` is continuous batching's paged cache (its module moved between releases: no import)."""
    return type(cache).__name__ == "PagedAttentionCache"


def cpu_flex_static_shapes(config, device):
    """torch 2.13's CPU inductor miscompiles flex_attention when it recompiles with dynamic shapes (a C++
    error, README "Known limits"), which transformers' compiled flex_attention does from the second length on:
    on CPU, flex_attention compiles with static shapes (one graph per length). CUDA is untouched."""
    if config._attn_implementation == "flex_attention" and device.type == "cpu" and not torch.compiler.is_compiling():
        return torch._dynamo.config.patch(automatic_dynamic_shapes=False)
    return contextlib.nullcontext()


class LoadTimeStrategyMixin:
    """from_pretrained(..., mask_strategy=...) on a folder that records another strategy: see the warning above."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        given = kwargs.get("mask_strategy") is not None
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if given:  # read the folder where from_pretrained read it
            model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
            location = {k: kwargs[k] for k in ("subfolder", "revision", "token", "cache_dir", "local_files_only") if k in kwargs}
            warn_if_path_rebuilds_differently(model, pretrained_model_name_or_path, **location)
        return loaded


class CustomQwen3Model(LoadTimeStrategyMixin, Qwen3Model):
    """`Qwen3Model` whose attention masks come from a registered strategy (default: ``"causal"``, stock exactly).

    forward() takes stock's inputs plus the strategy's per-call inputs (e.g. ``prefix_lengths`` (batch,) for
    ``prefix_lm``); ``attention_mask`` may be a 2D padding mask, a 4D mask (bool, 0/1 or additive float) or a
    ready ``{layer_type: mask}`` dict (see masking.py for what each means).
    """

    config_class = CustomQwen3Config
    _rebuild_note = None  # a load-time strategy the folder does not record: said when PEFT adapters arrive (clients.py)

    def __init__(self, config: Qwen3Config):
        check_internals()  # a transformers whose hooks moved: refuse here, never build a silently wrong mask
        warn_if_untested()  # once per process: a release newer than CI has proven
        register_with_peft()
        super().__init__(as_custom_config(config))
        check_model_internals(self)
        for idx, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(partial(pick_layer_mask, idx), with_kwargs=True)
        self.set_mask_strategy(self.config.mask_strategy)

    @property
    def mask_strategy(self) -> Strategy:
        return self._mask_strategy

    def set_mask_strategy(self, spec: str | dict | Strategy | None) -> Strategy:
        """Switches the strategy (a spec: name, ``{"name": ..., **params}``, composition, per-layer dict, or
        None for causal), checked against this model, and records it in the config for save_pretrained."""
        strategy = resolve_strategy(spec)
        config, num_layers = self.config, len(self.layers)
        strategy.check_model(num_layers=num_layers, num_heads=config.num_attention_heads)
        backend = config._attn_implementation
        if backend in FLASH_BACKENDS:
            for idx in range(num_layers):
                if strategy.for_layer(idx).flash_form() is None:
                    raise ValueError(flash_error(repr(strategy.for_layer(idx).name), backend))
        groups: dict[Strategy, list[int]] = {}
        for idx in range(num_layers):
            groups.setdefault(strategy.for_layer(idx), []).append(idx)
        # Plain tuples and bools: what forward() reads stays cheap to guard under torch.compile.
        self._mask_strategy = strategy
        self._paged_checked = None  # continuous batching's refusal check, made once per strategy (paged.py)
        self._warned_ready = None  # a foreign ready mask dict's warning, once per strategy
        self.mask_groups = tuple((s, tuple(layers)) for s, layers in groups.items())
        self.mask_strategy_is_causal = len(groups) == 1 and strategy.for_layer(0).flash_form() == {}
        self.all_layers = tuple(range(num_layers))
        config.mask_strategy = strategy.to_dict()
        # flash-attention reads the window from each attention module (stock passes `module.sliding_window`).
        for idx, layer in enumerate(self.layers):
            window = strategy.for_layer(idx).flash_form() or {}
            attn = layer.self_attn
            stock = config.sliding_window if attn.layer_type == "sliding_attention" else None
            windows = [w for w in (stock, window.get("sliding_window")) if w]
            attn.sliding_window = min(windows) if windows else None
        return strategy

    @merge_with_config_defaults
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        # The head passes the cache under the installed transformers' name (`cache` from 5.24, `past_key_values`
        # before); reading only one of them built every cached mask from an empty cache.
        # Before the rename, continuous batching hands its paged cache as `cache=` beside past_key_values=None: for
        # the paged attention functions, not for the layers' own cache update. It travels on as it came.
        engine_cache = None
        if CACHE_KWARG != "cache" and is_paged(cache):
            engine_cache, cache = cache, None
        cache = pop_cache(kwargs, cache)
        _refuse_collator_columns(kwargs)
        if self._rebuild_note is not None and not torch.compiler.is_compiling():
            say_if_adapted(self)
        mask_inputs = self._pop_mask_inputs(kwargs)
        prompt_mask = kwargs.pop("prompt_attention_mask", None)
        if is_paged(cache) or engine_cache is not None:
            # Continuous batching (generate_batch, `transformers serve --continuous-batching`): the engine built its
            # own causal/sliding masks in its packed layout. The default strategy takes them as stock does; any other
            # gets its own masks in that layout (paged.py), or is refused, never served with the engine's.
            if not self.mask_strategy_is_causal:
                if self._paged_checked is not self._mask_strategy:  # once per strategy, not every step
                    why = paged.refusal(self)
                    if why:
                        raise ValueError(why)
                    self._paged_checked = self._mask_strategy
                attention_mask = paged.paged_masks(self, attention_mask, position_ids, kwargs)
        elif isinstance(attention_mask, dict):
            # Ready masks: stock uses them as they are. Ours (LayerMasks inside) already consumed the inputs.
            ours = any(isinstance(m, LayerMasks) for m in attention_mask.values())
            if (mask_inputs or prompt_mask is not None) and not ours:
                raise ValueError(
                    f"A ready {{layer_type: mask}} attention_mask dict is used as it is, so {sorted(mask_inputs)} would "
                    f"be ignored; pass the strategy's inputs with a 2D (or no) attention_mask instead."
                )
            if not ours and not self.mask_strategy_is_causal and not torch.compiler.is_compiling() \
                    and self._warned_ready is not self._mask_strategy:
                # Stock's meaning (the caller's masks, as they are), said once per model and strategy: it replaces
                # the strategy on every layer.
                self._warned_ready = self._mask_strategy
                logger.warning(
                    f"A ready {{layer_type: mask}} attention_mask dict that this model did not build replaces the mask "
                    f"strategy {self.mask_strategy.name!r} on every layer for this call (stock's meaning). Pass a 2D "
                    f"padding mask to keep the strategy."
                )
        else:
            if use_cache and cache is None:  # created here (not in Qwen3Model) to size the masks
                cache = DynamicCache(config=self.config)
            attention_mask, position_ids = self.attention_masks(
                input_ids, attention_mask, cache, position_ids, inputs_embeds, prompt_mask, **mask_inputs
            )
        kwargs[CACHE_KWARG] = cache
        if engine_cache is not None:
            kwargs["cache"] = engine_cache
        with cpu_flex_static_shapes(self.config, self.embed_tokens.weight.device):
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )

    def attention_masks(
        self, input_ids=None, attention_mask=None, cache=None, position_ids=None, inputs_embeds=None,
        prompt_attention_mask=None, **mask_inputs,
    ):
        """What forward() hands the decoder layers: ``({layer_type: mask or LayerMasks}, position_ids)``
        (`masking.layer_mask` reads one layer's mask out of it). For inspection, tests and benchmarks."""
        template = inputs_embeds
        if template is None:  # only the batch size, length, dtype and device are read
            weight = self.embed_tokens.weight
            template = torch.empty((*input_ids.shape[:2], 0), dtype=weight.dtype, device=weight.device)
        cache = pop_cache(mask_inputs, cache)
        return build_masks(self, template, attention_mask, cache, position_ids, mask_inputs, prompt_attention_mask)

    def _pop_mask_inputs(self, kwargs: dict) -> dict[str, Any]:
        """Takes the strategies' per-call inputs out of kwargs; one the active strategy does not use is an error."""
        wanted = self.mask_strategy.inputs
        if torch.compiler.is_compiling():
            return {name: kwargs.pop(name) for name in wanted if kwargs.get(name) is not None}
        known = mask_input_names() | set(wanted)
        found = {name: kwargs.pop(name) for name in known if name in kwargs and kwargs[name] is not None}
        for name in known:
            kwargs.pop(name, None)
        unused = sorted(set(found) - set(wanted))
        if unused:
            raise ValueError(
                f"{unused} given, but the active mask strategy {self.mask_strategy.name!r} does not use them. "
                f"Switch with model.set_mask_strategy(...) (e.g. 'prefix_lm' takes prefix_lengths) or drop them."
            )
        return found


def _refuse_collator_columns(kwargs: dict) -> None:
    found = [name for name in COLLATOR_COLUMNS if kwargs.pop(name, None) is not None]
    if found and not torch.compiler.is_compiling():
        raise ValueError(
            f"{found} reached forward(): it is a dataset column for the collator (labels -100 on the prompt), not a "
            f"model input. Use qwen3_custom_mask.training.CausalLMCollator or PrefixLMCollator, or drop the column."
        )
