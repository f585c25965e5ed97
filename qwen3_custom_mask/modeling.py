"""The Qwen3 glue: CustomQwen3ForCausalLM builds the attention mask from its strategy, once per forward.

Stock `Qwen3Model.forward` accepts ``attention_mask`` as a ready ``{layer_type: mask}`` dict and then skips
its own mask creation, so the plugin needs no patching: this class lowers the strategy (see lowering.py)
and hands the dict down. Every layer of a type shares one mask object.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen3ForCausalLM
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import (
    and_masks,
    create_causal_mask,
    create_sliding_window_causal_mask,
    sliding_window_overlay,
)

from . import masks  # noqa: F401  (registers the built-in strategies)
from .cache import BoundedCache
from .configuration import CustomQwen3Config
from .lowering import FLASH_BACKENDS, dense_mask, lower
from .masks._checks import first_real_token
from .masks.document import document_ids_of
from .masks.user_mask import check_user_mask, user_mask
from .registry import mask_input_names
from .strategy import Strategy, resolve_strategy

logger = logging.getLogger(__name__)

# How many generated positions generate() probes when it checks that prompt rows never look ahead.
_LOOKAHEAD_PROBE = 16


def _flash_error(what: str, backend: str) -> str:
    return (
        f"The {what} mask cannot be expressed by {backend}, which supports only causal, bidirectional and "
        f"sliding-window masks (plus padding). Load the model with attn_implementation='sdpa' or "
        f"'flex_attention' for it."
    )


class PerLayerMasks(dict):
    """``{layer_idx: (mask, extra attention kwargs)}`` for per-layer strategies.

    Stock Qwen3Model picks a layer's mask by layer *type*; a per-layer strategy puts one of these under every
    type, and a forward pre-hook on each decoder layer swaps in that layer's own mask.
    """


def _pick_layer_mask(layer_idx: int, module, args, kwargs):
    per_layer = kwargs.get("attention_mask")
    if isinstance(per_layer, PerLayerMasks):
        mask, extra = per_layer[layer_idx]
        return args, {**kwargs, "attention_mask": mask, **extra}
    return None


class CustomQwen3ForCausalLM(Qwen3ForCausalLM):
    """`Qwen3ForCausalLM` whose attention mask comes from a registered strategy (default: ``"causal"``).

    Extra forward()/generate() inputs:
        attention_mask: 2D (batch, past + new tokens) padding mask as usual, or a boolean 4D
            (batch, 1 or heads, new tokens, past + new tokens) mask, True = attend, that replaces the strategy
            for that call. generate() takes a 4D (batch, 1 or heads, prompt, prompt) mask too: the prompt keeps
            it and generated tokens attend causally to every earlier non-padding token.
        the strategy's per-call inputs, e.g. ``prefix_lengths`` (batch,) for ``prefix_lm``.
    """

    config_class = CustomQwen3Config

    def __init__(self, config):
        if not isinstance(config, CustomQwen3Config):  # a plain Qwen3Config: same fields, no strategy
            plain = config
            config = CustomQwen3Config(**{k: v for k, v in plain.to_dict().items() if k != "model_type"})
            config._attn_implementation_internal = plain._attn_implementation_internal  # not part of to_dict()
        super().__init__(config)
        for idx, layer in enumerate(self.model.layers):
            layer.register_forward_pre_hook(partial(_pick_layer_mask, idx), with_kwargs=True)
        self.set_mask_strategy(config.mask_strategy)

    # ----------------------------------------------------------------------------------------- strategy
    @property
    def mask_strategy(self) -> Strategy:
        return self._mask_strategy

    def set_mask_strategy(self, spec: str | dict | Strategy | None) -> Strategy:
        """Switches the strategy (a spec: name, ``{"name": ..., **params}``, composition, per-layer dict, or
        None for causal) and records it in the config, so save_pretrained keeps it."""
        strategy = resolve_strategy(spec)
        num_layers = len(self.model.layers)
        strategy.check_layers(num_layers)
        backend = self.config._attn_implementation
        if backend in FLASH_BACKENDS:
            for idx in range(num_layers):
                if strategy.for_layer(idx).flash_form() is None:
                    raise ValueError(_flash_error(repr(strategy.for_layer(idx).name), backend))
        self._mask_strategy = strategy
        self._groups = self._layer_groups()
        self.config.mask_strategy = strategy.to_dict()
        # flash-attention reads the window from each attention module (stock passes `module.sliding_window`).
        for idx, layer in enumerate(self.model.layers):
            window = strategy.for_layer(idx).flash_form() or {}
            attn = layer.self_attn
            stock = self.config.sliding_window if attn.layer_type == "sliding_attention" else None
            windows = [w for w in (stock, window.get("sliding_window")) if w]
            attn.sliding_window = min(windows) if windows else None
        return strategy

    def _layer_groups(self) -> dict[Strategy, list[int]]:
        """The distinct strategies of the model and the layers each one drives."""
        groups: dict[Strategy, list[int]] = {}
        for idx in range(len(self.model.layers)):
            groups.setdefault(self.mask_strategy.for_layer(idx), []).append(idx)
        return groups

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        prompt_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        mask_inputs = self._pop_mask_inputs(kwargs)
        if isinstance(attention_mask, dict):  # already lowered by the caller: stock behaviour
            if mask_inputs or prompt_attention_mask is not None:
                raise ValueError("Per-call mask inputs cannot be combined with a pre-lowered attention_mask dict.")
        else:
            if use_cache is None:
                use_cache = self.config.use_cache
            if use_cache and past_key_values is None:  # created here (not in Qwen3Model) to size the mask
                past_key_values = DynamicCache(config=self.config)
            attention_mask, position_ids, attention_kwargs = self._build_masks(
                input_ids, inputs_embeds, attention_mask, past_key_values, position_ids, prompt_attention_mask, mask_inputs
            )
            kwargs.update(attention_kwargs)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _pop_mask_inputs(self, kwargs: dict) -> dict[str, Any]:
        """Takes the strategies' per-call inputs out of kwargs; one the active strategy does not use is an error."""
        known = mask_input_names() | set(self.mask_strategy.inputs)
        found = {name: kwargs.pop(name) for name in known if name in kwargs and kwargs[name] is not None}
        unused = sorted(set(found) - set(self.mask_strategy.inputs))
        if unused:
            raise ValueError(
                f"{unused} given, but the active mask strategy {self.mask_strategy.name!r} does not use them. "
                f"Switch with model.set_mask_strategy(...) (e.g. 'prefix_lm' takes prefix_lengths) or drop them."
            )
        return found

    def _padding_mask(self, attention_mask, batch_size: int, q_offset: int, q_length: int, total: int, device):
        """(batch, total) bool, True for real tokens; slots a static cache has not written yet are False."""
        seen = q_offset + q_length
        if attention_mask is None:
            padding = torch.ones(batch_size, total, dtype=torch.bool, device=device)
            padding[:, seen:] = False
            return padding
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size or attention_mask.shape[1] not in (seen, total):
            raise ValueError(
                f"2D attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, past + new tokens) = "
                f"({batch_size}, {seen}). A custom mask is 4D: (batch, 1 or heads, new tokens, past + new tokens)."
            )
        if attention_mask.dtype.is_floating_point and not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise TypeError(
                f"A 2D attention_mask holds 1 for real tokens and 0 for padding, got {attention_mask.dtype} values "
                f"other than 0 and 1 (an additive float mask?). Pass the 0/1 padding mask, or a bool 4D mask."
            )
        padding = attention_mask.to(device=device, dtype=torch.bool)
        return torch.nn.functional.pad(padding, (0, total - padding.shape[1]))

    def _build_masks(self, input_ids, inputs_embeds, attention_mask, cache, position_ids, prompt_mask, mask_inputs):
        """Returns ``({layer_type: mask}, position_ids, extra attention kwargs)`` for this forward."""
        config, backend = self.config, self.config._attn_implementation
        if inputs_embeds is None:
            weight = self.model.embed_tokens.weight
            inputs_embeds = torch.empty((*input_ids.shape[:2], 0), dtype=weight.dtype, device=weight.device)
        batch_size, q_length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        q_offset = cache.get_seq_length() if cache is not None else 0
        kv_offset, kv_length, kv_positions = 0, q_offset + q_length, None
        if cache is not None and not isinstance(cache, BoundedCache):
            kv_length, kv_offset = cache.get_mask_sizes(q_length, 0)
        total = max(kv_offset + kv_length, q_offset + q_length)

        is_4d = isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4
        groups = self._groups
        if not is_4d and prompt_mask is None and len(groups) == 1 and not isinstance(cache, BoundedCache):
            (strategy,) = groups
            if strategy.flash_form() == {}:  # plain causal: straight to the stock builders, nothing else to do
                return self._stock_causal(inputs_embeds, attention_mask, cache, position_ids)
        if (is_4d or prompt_mask is not None) and mask_inputs:
            raise ValueError(
                f"A 4D attention mask replaces the mask strategy, so {sorted(mask_inputs)} would be ignored; pass one or the other."
            )
        if is_4d:
            check_user_mask(
                attention_mask, batch_size=batch_size, num_heads=config.num_attention_heads, q_length=q_length, kv_length=total
            )
            padding = self._padding_mask(None, batch_size, q_offset, q_length, total, device)
        else:
            padding = self._padding_mask(attention_mask, batch_size, q_offset, q_length, total, device)

        if isinstance(cache, BoundedCache):
            self._bound_cache(cache, padding, backend, user_mask=is_4d or prompt_mask is not None)
            kv_positions = cache.kv_positions(q_length)
            kv_length = kv_positions.shape[0]

        window = dict(
            batch_size=batch_size,
            num_heads=config.num_attention_heads,
            q_offset=q_offset,
            q_length=q_length,
            kv_offset=kv_offset,
            kv_length=kv_length,
            padding_mask=padding,
            device=device,
            kv_positions=kv_positions,
        )
        build = partial(self._lower, inputs_embeds, attention_mask, cache, padding, window)
        if is_4d:
            return build(user_mask(attention_mask.to(device), row_offset=q_offset), None, position_ids)
        if prompt_mask is not None:
            return build(user_mask(prompt_mask.to(device)), None, position_ids)

        context = dict(mask_inputs, padding_mask=padding, position_ids=position_ids, num_heads=config.num_attention_heads)
        if position_ids is None and self.mask_strategy.places_tokens:
            position_ids = self.mask_strategy.position_ids(**context)[:, q_offset : q_offset + q_length]
        if len(groups) == 1:
            (strategy,) = groups
            return build(strategy.mask_mod(**context), strategy.flash_form(), position_ids)
        per_layer = PerLayerMasks()
        for strategy, layers in groups.items():
            # Extra kwargs (sdpa's is_causal=False fast path) differ per layer, so the hook passes them per layer.
            mapping, _, extra = build(strategy.mask_mod(**context), strategy.flash_form(), position_ids)
            for idx in layers:
                per_layer[idx] = (mapping[config.layer_types[idx]], extra)
        return {layer_type: per_layer for layer_type in set(config.layer_types)}, position_ids, {}

    def _stock_causal(self, inputs_embeds, attention_mask, cache, position_ids):
        """Plain causal: the stock builders, so the default is exactly stock Qwen3 (is_causal fast path,
        packed-sequence detection and sliding layers included)."""
        mask_kwargs = dict(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        mapping = {"full_attention": create_causal_mask(**mask_kwargs)}
        if self.model.has_sliding_layers:
            mapping["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        return mapping, position_ids, {}

    def _lower(self, inputs_embeds, attention_mask, cache, padding, window, mask_mod, form, position_ids):
        """One mask_mod lowered for the backend: ``({layer_type: mask}, position_ids, extra kwargs)``.

        ``form`` is the strategy's flash form (None for user masks); ``{}`` means plain causal.
        """
        config, backend = self.config, self.config._attn_implementation
        is_4d = isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4
        if form == {} and window["kv_positions"] is None:
            return self._stock_causal(inputs_embeds, attention_mask, cache, position_ids)

        seen = window["q_offset"] + window["q_length"]
        no_padding = attention_mask is None or is_4d or bool(padding[:, :seen].all())
        if backend in FLASH_BACKENDS:
            if form is None:
                raise ValueError(_flash_error("4D attention_mask", backend))
            mask_2d = None if no_padding else padding[:, :seen]
            extra = {k: v for k, v in form.items() if k != "sliding_window"}  # the window is a module attribute
            return {"full_attention": mask_2d, "sliding_attention": mask_2d}, position_ids, extra
        if form == {"is_causal": False} and backend == "sdpa" and no_padding and not self.model.has_sliding_layers:
            return {"full_attention": None}, position_ids, {"is_causal": False}  # sdpa's no-mask fast path

        dtype = inputs_embeds.dtype
        mapping = {"full_attention": lower(backend, mask_mod, dtype=dtype, **window)}
        if self.model.has_sliding_layers:
            sliding = and_masks(mask_mod, sliding_window_overlay(config.sliding_window))
            mapping["sliding_attention"] = lower(backend, sliding, dtype=dtype, **window)
        return mapping, position_ids, {}

    def _bound_cache(self, cache: BoundedCache, padding: torch.Tensor, backend: str, user_mask: bool) -> None:
        """At prefill, tells a BoundedCache which positions the strategy can still show a future query."""
        if cache.is_configured:
            return
        bounds = None if user_mask else self.mask_strategy.cache_bounds()
        if bounds is None or backend in FLASH_BACKENDS:
            why = (
                f"{backend} reads keys as one contiguous range" if bounds is not None
                else f"the mask strategy {self.mask_strategy.name!r} lets a query see arbitrarily old tokens"
                if not user_mask else "a 4D attention_mask may show a query any earlier token"
            )
            raise ValueError(
                f"BoundedCache cannot be used here: {why}. Use it with a bounded strategy (sliding_window, "
                f"attention_sinks, chunked, or an 'and' composition with one) on eager, sdpa or flex_attention, "
                f"or use a DynamicCache."
            )
        first, last = bounds
        left_padding = int(first_real_token(padding).max()) if first else 0
        cache.set_bounds(left_padding + first, last, num_layers=len(self.model.layers))

    # ----------------------------------------------------------------------------------------- generate
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`, plus 4D prompt masks and a check that the strategy survives a KV cache."""
        strategy = self.mask_strategy
        if not strategy.generates:
            raise ValueError(
                f"The mask strategy {strategy.name!r} describes one forward, not token-by-token generation; "
                f"use qwen3_custom_mask.verify_draft_tree for tree verification, or switch strategy."
            )
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        for name in strategy.inputs:  # tensors, so that beam search expands them per beam
            if kwargs.get(name) is not None:
                kwargs[name] = torch.as_tensor(kwargs[name])
        if "document_ids" in strategy.inputs and kwargs.get("document_ids") is None and kwargs.get("position_ids") is not None:
            # Read the boundaries once from the prompt's positions: later steps only see the new positions.
            positions = torch.as_tensor(kwargs["position_ids"])
            padding = torch.ones(positions.shape[0], positions.shape[-1], dtype=torch.bool, device=positions.device)
            kwargs["document_ids"] = document_ids_of(None, positions, padding)
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            if input_ids is None:
                raise ValueError("generate() with a 4D attention_mask needs input_ids of shape (batch, prompt).")
            prompt = input_ids.shape[1]
            check_user_mask(
                mask, batch_size=input_ids.shape[0], num_heads=self.config.num_attention_heads, q_length=prompt, kv_length=prompt
            )
            kwargs["prompt_attention_mask"] = mask
            # A prompt token that no prompt row can see is padding: positions and generated rows skip it.
            kwargs["attention_mask"] = mask.any(dim=1).any(dim=1).long()
        config = generation_config if generation_config is not None else self.generation_config
        if kwargs.get("pad_token_id") is None and config.pad_token_id is None and config.eos_token_id is not None:
            eos = config.eos_token_id
            kwargs["pad_token_id"] = eos[0] if isinstance(eos, (list, tuple)) else eos
        if kwargs.get("use_cache", config.use_cache) and "prompt_attention_mask" not in kwargs and input_ids is not None:
            self._check_cache_consistent(input_ids, kwargs)
        return super().generate(inputs, generation_config, **kwargs)

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Strategies that place tokens themselves (packed documents) compute positions in forward().
        if self.mask_strategy.places_tokens:
            return None
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    def _validate_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        # Mask inputs travel through **kwargs, which generate()'s typo check does not see; unused ones are
        # rejected by forward() instead.
        mask_inputs = mask_input_names()
        super()._validate_model_kwargs({k: v for k, v in model_kwargs.items() if k not in mask_inputs})

    def _check_cache_consistent(self, input_ids: torch.Tensor, kwargs: dict) -> None:
        """Raises if a prompt token may attend to a token generated after it: the cache could not honour that."""
        batch_size, prompt = input_ids.shape[:2]
        probe = _LOOKAHEAD_PROBE
        device = input_ids.device
        padding = kwargs.get("attention_mask")
        padding = torch.ones(batch_size, prompt, dtype=torch.bool, device=device) if padding is None else padding.bool()
        padding = torch.cat([padding.to(device), padding.new_ones(batch_size, probe)], dim=1)
        for strategy in self._groups:
            if strategy.flash_form() == {}:
                continue
            inputs = {name: kwargs[name] for name in strategy.inputs if kwargs.get(name) is not None}
            mask_mod = strategy.mask_mod(**inputs, padding_mask=padding, num_heads=self.config.num_attention_heads)
            ahead = dense_mask(
                mask_mod,
                batch_size=batch_size,
                num_heads=self.config.num_attention_heads,
                q_offset=0,
                q_length=prompt,
                kv_offset=prompt,
                kv_length=probe,
                padding_mask=padding,
                device=device,
            )
            if ahead.any():
                raise ValueError(
                    f"Mask strategy {strategy.name!r} lets prompt tokens attend to tokens generated after them, which a KV "
                    f"cache filled at prefill cannot honour. Pass use_cache=False to generate() to recompute the whole mask "
                    f"at every step, or use a cache-consistent strategy such as 'prefix_lm' (bidirectional prompt, causal "
                    f"continuation) or 'causal'."
                )


AutoConfig.register(CustomQwen3Config.model_type, CustomQwen3Config)
AutoModelForCausalLM.register(CustomQwen3Config, CustomQwen3ForCausalLM)
