"""vLLM: the plugin's entry point, and which vLLM attention each layer of a strategy runs on.

vLLM loads ``register`` (the ``vllm.general_plugins`` entry point in pyproject.toml) in every process it
starts; it registers ``CustomQwen3ForCausalLM`` (a plugin checkpoint's architecture) with vLLM's model
registry, lazily, so ``vllm serve CKPT`` and ``vllm.LLM(CKPT)`` serve a plugin checkpoint unchanged. The
model itself is vllm_model.py; this file imports vLLM only inside the hooks vLLM calls.

`layer_plan` decides, per layer, the fastest path that is exactly the strategy, or refuses:

    causal, sliding_window(w), document (one request is one document)   vLLM's decoder attention, own window
    chunked(c)                                                          ChunkedLocalAttention (Llama 4's)
    prefix_lm (the prompt is the prefix)                                PrefillPrefixLMAttention
    bidirectional (pooling runner: LLM.embed, /v1/embeddings)           EncoderOnlyAttention
    other position-only strategies (sinks, dilated, global tokens,
    compositions, per-head windows)                                     FlexAttention's logical_mask_mod
    per-request inputs (document ids, prefix_lengths, tree, user_mask),
    look-ahead in cached generation, bidirectional generation           refused when the engine starts
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from transformers.masking_utils import and_masks

from ..model.masking import sliding_layer_overlay
from .export import served_form

MODEL_CLASS = "qwen3_custom_mask.serving.vllm_model:CustomQwen3ForCausalLM"
SCHEDULER_CLASS = "qwen3_custom_mask.serving.vllm_scheduler.WholeRequestScheduler"
ARCHITECTURE = "CustomQwen3ForCausalLM"
FLEX = "FLEX_ATTENTION"


def register() -> None:
    """The ``vllm.general_plugins`` entry point: vLLM calls it in every process before it loads a model."""
    from vllm import ModelRegistry

    from ..model import CustomQwen3ForCausalLM  # noqa: F401  (model/ registers model_type "qwen3_custom_mask" with AutoConfig)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    try:  # vLLM's per-architecture config hooks (a dict keyed by architecture, as its own models use)
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    except ImportError:  # a vLLM without them: the model's own checks still refuse at start, in the engine's log
        return
    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, ConfigHook)
    MODELS_CONFIG_MAP.setdefault("Qwen3ForCausalLM", StockQwen3Hook)  # vLLM 0.32 has none for its own Qwen3


def is_bidirectional(strategy, num_layers: int) -> bool:
    """Every layer attends both ways: what vLLM calls an encoder-only model (``is_causal: false``)."""
    return all(served_form(strategy.for_layer(idx)) == {"is_causal": False} for idx in range(num_layers))


def _strategy_of(hf_config):
    from ..strategy import resolve_strategy

    config = hf_config.get_text_config()
    return resolve_strategy(getattr(config, "mask_strategy", None)), config


class ConfigHook:
    """vLLM's per-architecture config hooks, run in the user's process before any engine starts: every refusal
    of `layer_plan` surfaces there (not only in an engine process's log), ``is_causal`` for a bidirectional
    pooling model (whether vLLM keeps a KV cache), and what prefix_lm needs of the scheduler."""

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        strategy, config = _strategy_of(model_config.hf_config)
        if is_bidirectional(strategy, config.num_hidden_layers):
            model_config.hf_config.is_causal = False

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        strategy, config = _strategy_of(vllm_config.model_config.hf_config)
        plans = layer_plan(strategy, config, pooling=vllm_config.model_config.runner_type == "pooling")
        backend = getattr(getattr(vllm_config, "attention_config", None), "backend", None)
        chosen = getattr(backend, "name", None)
        if any(plan.needs_flex for plan in plans) and chosen != FLEX and (chosen is not None or _on_cpu()):
            flex = next(plan for plan in plans if plan.needs_flex)
            check_backends([flex], [chosen or "CPU_ATTN"], full_cudagraphs=False, block_size=None)
        if any(plan.kind == "prefix_lm" for plan in plans):
            _whole_prompts(strategy, vllm_config)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _whole_prompts(strategy, vllm_config) -> None:
    """prefix_lm reads each prompt whole and never a generated token bidirectionally: the scheduler that never
    preempts (vllm_scheduler.py), no draft tokens, no split prompts, and a batch budget that holds any prompt."""
    scheduler, model = vllm_config.scheduler_config, vllm_config.model_config
    if scheduler.scheduler_cls not in (None, SCHEDULER_CLASS):
        raise _refuse(strategy, f"a preempted prefix_lm request is recomputed under another mask, which the plugin's "
                                f"scheduler prevents, and --scheduler-cls {scheduler.scheduler_cls} replaces it",
                      "start vLLM without --scheduler-cls")
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise _refuse(strategy, "vLLM verifies draft tokens in one bidirectional pass, so each draft would see the "
                                "drafts after it", "start vLLM without --speculative-config")
    if getattr(scheduler, "long_prefill_token_threshold", 0):
        raise _refuse(strategy, "--long-prefill-token-threshold splits prompts, and each piece would be read "
                                "bidirectionally on its own", "start vLLM without it")
    scheduler.scheduler_cls = SCHEDULER_CLASS
    # vLLM turns chunked prefill off for this model only when the engine starts; a prompt longer than the batch
    # budget would then wait forever, and every request behind it.
    for field in ("max_num_batched_tokens", "max_num_scheduled_tokens"):
        budget = getattr(scheduler, field, None)
        if budget is not None and budget < model.max_model_len:
            setattr(scheduler, field, model.max_model_len)


class StockQwen3Hook:
    """vLLM's own Qwen3 has no mask hook: a ``mask_strategy`` given to it (``--hf-overrides`` without the
    architecture) would be served causal, so it is refused."""

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        spec = getattr(model_config.hf_config, "mask_strategy", None)
        if spec is None:
            return
        strategy, config = _strategy_of(model_config.hf_config)
        if any(strategy.for_layer(idx).flash_form() != {} for idx in range(config.num_hidden_layers)):
            raise _refuse(strategy, "vLLM's own Qwen3ForCausalLM has no mask hook and would serve it causal",
                          "add \"architectures\": [\"CustomQwen3ForCausalLM\"] to --hf-overrides")

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        return


class VllmRefusal(ValueError):
    """A strategy vLLM cannot serve as written; the message is one line naming the strategy and the fix."""


@dataclass(frozen=True)
class LayerPlan:
    """How one layer attends on vLLM. kind: decoder | chunked | prefix_lm | encoder_only | flex."""

    kind: str
    window: int | None = None  # decoder: vLLM's per_layer_sliding_window (same convention as the plugin's)
    chunk_size: int | None = None
    mask_mod: Callable | None = None  # flex: FlexAttention's logical_mask_mod (positions within the request)
    strategy: Any = None

    @property
    def needs_flex(self) -> bool:
        return self.kind == "flex"


def _spec(strategy) -> str:
    import json

    return json.dumps(strategy.to_dict(), separators=(",", ":"))


def _refuse(strategy, why: str, fix: str) -> VllmRefusal:
    return VllmRefusal(f"vLLM cannot serve the mask strategy {_spec(strategy)}: {why}; {fix}.")


SERVE_ELSEWHERE = "serve it with `qwen3-mask serve` (transformers) instead"


def _flex_mask_mod(strategy, num_heads: int, window: int | None):
    """The layer's mask_mod over positions within a request (no padding: vLLM packs requests without it), with
    the config's own sliding window on a sliding layer laid over it exactly as the plugin's body does."""
    mask_mod = strategy.mask_mod(num_heads=num_heads, padding_mask=None, training=False)
    if window is None:
        return mask_mod
    return and_masks(mask_mod, sliding_layer_overlay(served_form(strategy), window))


def _cache_probe(strategy, num_heads: int) -> tuple[bool, bool]:
    from ..strategy.cacheable import _probe

    return _probe([(strategy, None)], num_heads)


def layer_plan(strategy, config, *, pooling: bool) -> list[LayerPlan]:
    """One `LayerPlan` per layer of a model with ``config`` (a Qwen3Config with layer_types and sliding_window),
    for vLLM's generate runner (``pooling=False``: a KV cache, prompts chunked and cached) or its pooling runner
    (one forward over the whole input); raises `VllmRefusal` for what no vLLM path serves exactly."""
    num_heads = config.num_attention_heads
    strategy.check_model(config.num_hidden_layers, num_heads)
    if not strategy.generates:
        raise _refuse(strategy, "it describes one forward over a draft tree, not generation", SERVE_ELSEWHERE)
    plans, flex_mods = [], {}
    for idx in range(config.num_hidden_layers):
        layer = strategy.for_layer(idx)
        own = config.sliding_window if config.layer_types[idx] == "sliding_attention" else None
        plans.append(_plan(layer, own, num_heads, pooling, flex_mods))
    encoder = [plan.kind == "encoder_only" for plan in plans]
    if any(encoder) and not all(encoder):
        raise _refuse(strategy, "vLLM runs every layer of a pooling model bidirectional or none",
                      "embed with the plugin (transformers), or save an all-bidirectional or causal variant")
    return plans


def _plan(layer, own_window: int | None, num_heads: int, pooling: bool, flex_mods: dict) -> LayerPlan:
    if layer.inputs and layer.name not in ("document", "prefix_lm"):
        raise _refuse(layer, f"it needs per-request inputs ({', '.join(layer.inputs)}), and vLLM passes none to a "
                             f"model", SERVE_ELSEWHERE)
    form = served_form(layer)
    if form is not None and form.get("is_causal") is None:  # causal, or one window
        windows = [w for w in (own_window, form.get("sliding_window")) if w]
        return LayerPlan("decoder", window=min(windows) if windows else None, strategy=layer)
    if form == {"is_causal": False}:
        if not pooling:
            raise _refuse(layer, "a bidirectional model has no KV-cacheable form, so vLLM cannot generate text with it",
                          "serve it as an embedding model: `vllm serve CKPT --runner pooling` (LLM(CKPT, "
                          "runner='pooling').embed)")
        if own_window is not None:
            raise _refuse(layer, "bidirectional attention inside the config's sliding window has no vLLM path",
                          SERVE_ELSEWHERE)
        return LayerPlan("encoder_only", strategy=layer)
    if layer.name == "chunked" and own_window is None:  # a registered entry's name (a composition's is and/or/not)
        return LayerPlan("chunked", chunk_size=layer.resolved_params["chunk_size"], strategy=layer)
    if layer.name == "prefix_lm" and own_window is None and not pooling:  # prefix_lengths: none, i.e. the prompt
        return LayerPlan("prefix_lm", strategy=layer)
    if layer.name == "prefix_lm" and own_window is not None:
        raise _refuse(layer, "a bidirectional prompt inside the config's sliding window has no vLLM path", SERVE_ELSEWHERE)
    if layer.name == "prefix_lm" and pooling:
        raise _refuse(layer, "an embedding's whole input is its prompt, so the prefix is all of it",
                      "save the checkpoint with mask_strategy 'bidirectional', which vLLM embeds natively")
    if pooling:
        raise _refuse(layer, "vLLM's pooling runner has a mask hook for bidirectional attention only",
                      "export a bidirectional or causal variant, or embed with the plugin (transformers)")
    looks_ahead, whole_prompt = _cache_probe(layer, num_heads)
    if looks_ahead:
        raise _refuse(layer, "it lets a token see tokens generated after it, which a KV cache filled earlier cannot "
                             "honour", "generate with model.generate(..., use_cache=False) in transformers")
    if whole_prompt:
        raise _refuse(layer, "it reads each prompt as a whole, but vLLM splits prompts into chunks and caches shared "
                             "prefixes", SERVE_ELSEWHERE)
    key = (layer, own_window)
    if key not in flex_mods:  # layers with one strategy share one mask_mod (what full CUDA graphs need)
        flex_mods[key] = _flex_mask_mod(layer, num_heads, own_window)
    return LayerPlan("flex", mask_mod=flex_mods[key], strategy=layer)


def check_backends(plans: list[LayerPlan], backends: list[str], full_cudagraphs: bool, block_size: int | None) -> None:
    """Refuses a flex plan on a backend that would ignore its mask_mod (CPU_ATTN, FLASH_ATTN, FLASHINFER...),
    differing mask_mods under full CUDA graphs (which capture one for every layer), and a chunk vLLM's chunked
    attention cannot lay over its KV blocks (it fails at the first request otherwise)."""
    for plan, backend in zip(plans, backends):
        if plan.kind == "chunked" and block_size and plan.chunk_size % block_size:
            raise _refuse(plan.strategy, f"vLLM's chunked attention needs chunk_size to be a multiple of the KV cache "
                                         f"block size ({block_size})",
                          f"start vLLM with a --block-size that divides {plan.chunk_size} (on CPU, a multiple of 32)")
        if plan.needs_flex and backend != FLEX:
            raise _refuse(plan.strategy, f"it runs on vLLM only through FlexAttention's mask hook, and this engine "
                                         f"selected the {backend} backend, which would ignore it",
                          "start vLLM on a GPU with `--attention-backend FLEX_ATTENTION`, or " + SERVE_ELSEWHERE)
    if full_cudagraphs and any(plan.needs_flex for plan in plans):
        mods = {plan.mask_mod for plan in plans}
        if len(mods) > 1:
            raise _refuse(plans[0].strategy, "full CUDA graphs capture one mask for every layer, and its layers "
                                             "attend differently",
                          "start vLLM with `--compilation-config '{\"cudagraph_mode\": \"PIECEWISE\"}'`")
