"""generate() glue for `CustomQwen3ForCausalLM`: the strategy through every cache kind and decoding mode.

* Static (compileable) caches: generate() builds each step's masks before the (compiled) forward through
  the model's ``create_masks_for_generate``; ours calls the body's builder with the strategy's per-call
  inputs, which `prepare_inputs_for_generation` hands over (stock passes no such inputs to that hook).
* Per-call inputs are tensors (beam search expands them per beam); ``document_ids`` cover the prompt and
  generated tokens join the last document; positions of strategies that place tokens come from the strategy.
* A KV cache only holds if no token sees a token that comes after it. At every step, the keys this step
  adds (and, before the first token, the next position) are checked against every earlier row: exact for
  any length, linear in the sequence per step. use_cache is read where GenerationMixin has settled it.
* A 4D ``attention_mask`` (B, 1|H, prompt, prompt) is the prompt's mask; generated tokens attend causally.
"""

from __future__ import annotations

import contextvars
import copy
from typing import Any

import torch
from transformers.generation.configuration_utils import GenerationMode

from .cache import BoundedCache
from .compat import generate_cache_kwarg, pop_cache
from .configuration import PLUGIN_FIELDS
from ..strategy.lowering import dense_mask
from .masking import LayerMasks, as_bool_user_mask, build_masks
from ..masks.user_mask import check_user_mask
from ..strategy.registry import mask_input_names

# The strategy's per-call inputs of the step being prepared, for create_masks_for_generate (stock calls it
# from prepare_inputs_for_generation without them). A context variable: safe across threads.
_STEP_INPUTS: contextvars.ContextVar[dict] = contextvars.ContextVar("qwen3_custom_mask_step_inputs", default={})

ASSISTED_MODES = (GenerationMode.ASSISTED_GENERATION,)
GENERATE_CACHE_KWARG = generate_cache_kwarg()  # read once: torch.compile sees a plain string


class UncacheableMaskError(ValueError):
    """The strategy lets a cached token see a later one: a KV cache cannot honour it (use_cache=False can)."""


class MaskedGenerationMixin:
    """Overrides of `GenerationMixin` hooks; mixed into `CustomQwen3ForCausalLM` (see the module docstring)."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # from_pretrained hands kwargs such as mask_strategy= to the GenerationConfig as well, where they would be
        # saved and go stale: the strategy belongs in config.json only.
        for key in PLUGIN_FIELDS:
            model.generation_config.__dict__.pop(key, None)
        return loaded

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`, plus the strategy's per-call inputs, 4D prompt masks and the cache check."""
        strategy = self.mask_strategy
        cache = pop_cache(kwargs)  # either name, handed on under the one this generate() knows (a second would be ignored)
        if cache is not None:
            kwargs[GENERATE_CACHE_KWARG] = cache
        if not strategy.generates:
            raise ValueError(
                f"The mask strategy {strategy.name!r} describes one forward, not token-by-token generation; "
                f"use qwen3_custom_mask.verify_draft_tree for tree verification, or switch strategy."
            )
        for name in strategy.inputs:  # tensors, so that beam search expands them per beam
            if kwargs.get(name) is not None:
                kwargs[name] = torch.as_tensor(kwargs[name])
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            if input_ids is None:
                raise ValueError("generate() with a 4D attention_mask needs input_ids of shape (batch, prompt).")
            prompt = input_ids.shape[1]
            check_user_mask(mask, batch_size=input_ids.shape[0], num_heads=self.config.num_attention_heads, q_length=prompt, kv_lengths=prompt)
            kwargs["prompt_attention_mask"] = mask
            # A prompt token that no prompt row can see is padding: positions and generated rows skip it.
            kwargs["attention_mask"] = as_bool_user_mask(mask).any(dim=1).any(dim=1).long()
        config = generation_config if generation_config is not None else self.generation_config
        if kwargs.get("pad_token_id") is None and config.pad_token_id is None:
            # The model config's pad (Qwen3: <|endoftext|>, the tokenizer's pad) if it has one, else the first EOS,
            # as transformers falls back, without its warning: padding is read from the attention mask anyway.
            eos = config.eos_token_id
            first_eos = eos[0] if isinstance(eos, (list, tuple)) else eos
            fallback = self.config.pad_token_id if self.config.pad_token_id is not None else first_eos
            if fallback is not None:
                kwargs["pad_token_id"] = fallback
        if isinstance(cache, BoundedCache):
            resolved = copy.deepcopy(config)  # the public GenerationConfig API, not generate()'s private preparation
            resolved.update(**{k: v for k, v in kwargs.items() if k != GENERATE_CACHE_KWARG})
            if resolved.get_generation_mode(kwargs.get("assistant_model")) in ASSISTED_MODES:
                raise ValueError(
                    "BoundedCache cannot be used for assisted decoding (assistant_model=, prompt_lookup_num_tokens=): "
                    "rejected draft tokens are rolled back by cropping the cache, and a BoundedCache has already "
                    "dropped the keys a rollback would need. Use a DynamicCache, or plain decoding with the BoundedCache."
                )
        if "prefix_lengths" in strategy.inputs and kwargs.get("prefix_lengths") is None:
            # Clients that cannot pass it (pipeline, lm-eval, TRL): each row's prompt, its real tokens, is the prefix.
            pad = kwargs.get("pad_token_id", config.pad_token_id)
            kwargs["prefix_lengths"] = prompt_lengths(input_ids, kwargs.get("inputs_embeds"), kwargs.get("attention_mask"), pad, config.eos_token_id)
        try:
            return super().generate(inputs, generation_config, **kwargs)
        except UncacheableMaskError:
            # Opt-in (config.recompute_when_uncacheable) for clients that force use_cache=True (lm-eval): the same
            # tokens as use_cache=False, recomputed at every step. A streamer has seen tokens already: no retry.
            # A caller's cache was filled by the failed attempt: no retry on it (a fresh one would not be theirs).
            if not getattr(self.config, "recompute_when_uncacheable", False) or kwargs.get("streamer") is not None or cache is not None:
                raise
            return super().generate(inputs, generation_config, **{**kwargs, "use_cache": False})

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Strategies that place tokens themselves (packed documents) give the prompt's positions; generate()
        # then counts on from the last one, so generated tokens continue the last document.
        strategy = self.mask_strategy
        if not strategy.places_tokens:
            return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        padding = model_kwargs.get("attention_mask")
        if padding is None or padding.dim() != 2:
            padding = torch.ones(inputs_tensor.shape[:2], dtype=torch.bool, device=inputs_tensor.device)
        inputs = {name: model_kwargs[name] for name in strategy.inputs if model_kwargs.get(name) is not None}
        return strategy.position_ids(**inputs, padding_mask=padding.bool(), sequence_length=padding.shape[1], training=False)

    def _get_candidate_generator(self, *args, **kwargs):
        # Assisted decoding copies every model kwarg to the draft model. A draft that does not take the strategy's
        # per-call inputs (a stock model, or a plugin model on another strategy) drafts without them: the target
        # verifies every drafted token under its own mask, so the tokens are the same.
        assistant, model_kwargs = kwargs.get("assistant_model"), kwargs.get("model_kwargs")
        if assistant is not None and isinstance(model_kwargs, dict):
            takes = set(getattr(getattr(assistant, "mask_strategy", None), "inputs", ()))
            drop = (mask_input_names() | {"prompt_attention_mask"}) - takes
            kwargs["model_kwargs"] = {k: v for k, v in model_kwargs.items() if k not in drop}
        return super()._get_candidate_generator(*args, **kwargs)

    def _validate_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        # Mask inputs travel through **kwargs, which generate()'s typo check does not see; forward() rejects
        # the ones the strategy does not use.
        names = mask_input_names() | {"prompt_attention_mask"}
        super()._validate_model_kwargs({k: v for k, v in model_kwargs.items() if k not in names})

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache=None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        strategy = self.mask_strategy
        cache = pop_cache(kwargs, cache)  # generate() names it `cache` from transformers 5.24, `past_key_values` before
        past = 0 if cache is None else int(cache.get_seq_length())
        # The tokens this forward adds, as stock slices them (all of input_ids when next_sequence_length is None:
        # a prefill chunk, or a continuation given only its new tokens).
        if inputs_embeds is not None and is_first_iteration:
            new = inputs_embeds.shape[1]
        else:
            # int(): before 5.11 a static cache's length is a tensor, and generate() derives this from it
            new = int(next_sequence_length) if next_sequence_length is not None else input_ids.shape[1]
        seen = past + new
        step_inputs = {name: kwargs[name] for name in strategy.inputs if kwargs.get(name) is not None}
        if "document_ids" in step_inputs:  # generated tokens join the last document
            ids = step_inputs["document_ids"]
            if ids.shape[-1] < seen:
                ids = torch.cat([ids, ids[:, -1:].expand(ids.shape[0], seen - ids.shape[-1])], dim=-1)
            kwargs["document_ids"] = step_inputs["document_ids"] = ids[:, :seen]
        if kwargs.get("use_cache") and kwargs.get("prompt_attention_mask") is None and not self.model.mask_strategy_is_causal:
            # A prompt (the first forward, each prefill chunk, an assistant's own prefill) is computed together.
            prompt_block = is_first_iteration or past == 0
            self._check_cache_consistent(attention_mask, past, new, seen, prompt_block, step_inputs,
                                         input_ids if inputs_embeds is None else inputs_embeds, embeds=inputs_embeds is not None)
        if kwargs.get("prompt_attention_mask") is not None:
            step_inputs["prompt_attention_mask"] = kwargs["prompt_attention_mask"]
        token = _STEP_INPUTS.set(step_inputs)
        try:
            kwargs[GENERATE_CACHE_KWARG] = cache
            model_inputs = super().prepare_inputs_for_generation(
                input_ids,
                next_sequence_length=next_sequence_length,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                is_first_iteration=is_first_iteration,
                **kwargs,
            )
        finally:
            _STEP_INPUTS.reset(token)
        if isinstance(model_inputs.get("attention_mask"), dict):
            # Masks built ahead (static cache): the inputs are spent, and a growing document_ids would make a
            # compiled forward recompile at every step.
            for name in step_inputs:
                model_inputs.pop(name, None)
        return model_inputs

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask, cache=None, position_ids=None, **kwargs):
        """The hook generate() calls for compileable (static) caches: the strategy's masks, built before the
        compiled forward, sized from each layer type's own cache layer. The strategy's per-call inputs come from
        generate() (or as keyword arguments, for direct calls)."""
        step_inputs = dict(_STEP_INPUTS.get())
        step_inputs.update({name: kwargs[name] for name in self.mask_strategy.inputs if kwargs.get(name) is not None})
        prompt_mask = step_inputs.pop("prompt_attention_mask", None)
        cache = pop_cache(kwargs, cache)  # generate() passes `cache=` from transformers 5.24, `past_key_values=` before
        masks, _ = build_masks(self.model, inputs_embeds, attention_mask, cache, position_ids, step_inputs, prompt_mask)
        # generate() calls .contiguous() on each value, which a flex BlockMask lacks (stock fails there).
        for layer_type, mask in masks.items():
            if mask is not None and not isinstance(mask, (torch.Tensor, LayerMasks)):
                masks[layer_type] = LayerMasks({idx: (mask, {}) for idx, t in enumerate(config.layer_types) if t == layer_type})
        return masks

    def _check_cache_consistent(self, attention_mask, past: int, new: int, seen: int, first: bool, step_inputs: dict, like, embeds: bool = False) -> None:
        """Raises if a row already computed (cached) may attend to a key this step adds, or, before the first
        token, to the next position: the cache could not honour that. Exact, linear in the sequence per step."""
        batch_size, device = like.shape[0], like.device
        heads = self.config.num_attention_heads
        padding = torch.ones(batch_size, seen + 1, dtype=torch.bool, device=device)
        if attention_mask is not None and attention_mask.dim() == 2:
            width = min(seen, attention_mask.shape[1])
            padding[:, :width] = attention_mask[:, :width].bool()
        inputs = dict(step_inputs)
        if "document_ids" in inputs:  # the probed next position joins the last document
            ids = inputs["document_ids"]
            inputs["document_ids"] = torch.cat([ids, ids[:, -1:]], dim=-1)
        # Keys to check and the rows that must not see them: before the first token, rows computed earlier
        # (a continued cache) against the new keys, and every row against the next position; later, every
        # earlier row against each new key (assisted decoding adds several) and the next position.
        keys = torch.arange(seen if first and not past else past, seen + 1, device=device)
        if first:  # inputs that do not fit the tokens read so far (a prefix past the prompt or the first chunk)
            for strategy, _ in self.model.mask_groups:
                try:
                    strategy.mask_mod(**step_inputs, padding_mask=padding[:, :seen], num_heads=heads, sequence_length=seen, training=False)
                except ValueError as err:
                    raise ValueError(f"{err} (counting the real tokens of the {seen} positions read so far.) In generate(), "
                                     f"it must lie inside the prompt (with prefill_chunk_size, inside the first chunk: a chunk "
                                     f"is cached before the next is read).") from None
        for strategy, _ in self.model.mask_groups:
            mask_mod = strategy.mask_mod(**inputs, padding_mask=padding, num_heads=heads, sequence_length=seen + 1, training=False)
            seen_by = dense_mask(
                mask_mod, batch_size=batch_size, num_heads=heads, q_offset=0, q_length=seen, kv_offset=0, kv_length=0,
                padding_mask=padding, device=device, kv_positions=keys,
            )
            rows = torch.arange(seen, device=device).view(-1, 1)
            earlier = rows < keys.view(1, -1)
            if first:  # the prompt is computed together: its rows may see each other
                earlier &= (rows < past) | (keys.view(1, -1) == seen)
            real_rows = padding[:, :seen].view(batch_size, 1, seen, 1)
            if (seen_by & earlier & real_rows).any():
                fix = (
                    "generate() always caches when given inputs_embeds, so pass input_ids with use_cache=False"
                    if embeds else "Pass use_cache=False to generate() to recompute the whole mask at every step"
                )
                raise UncacheableMaskError(
                    f"Mask strategy {strategy.name!r} lets a token attend to tokens generated after it, which a KV cache "
                    f"filled earlier cannot honour. {fix}, or use a cache-consistent strategy such as 'prefix_lm' "
                    f"(bidirectional prompt, causal continuation) or 'causal'. (Clients that force use_cache=True, "
                    f"such as lm-eval: set config.recompute_when_uncacheable=True.)"
                )


def prompt_lengths(input_ids, inputs_embeds, attention_mask, pad_token_id=None, eos_token_id=None) -> torch.Tensor:
    """(batch,) the real tokens of each row of the prompt: what prefix_lm takes as the prefix when none is given.

    Without an attention_mask, padding is read from the pad id as generate() infers its mask: only when the pad
    id is not also an EOS id (Qwen3's is, so there every token counts, as generate() counts them)."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        return attention_mask.sum(-1).long()
    eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    if input_ids is not None and pad_token_id is not None and pad_token_id not in eos:
        return (input_ids != pad_token_id).sum(-1).long()
    like = input_ids if input_ids is not None else inputs_embeds
    return torch.full((like.shape[0],), like.shape[1], dtype=torch.long, device=like.device)
