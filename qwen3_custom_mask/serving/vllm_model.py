"""``CustomQwen3ForCausalLM`` for vLLM: vLLM's own Qwen3, each layer built with the attention its plan names.

Registered by the plugin's entry point (vllm.py), never imported by the rest of the package: it needs vLLM.
Everything but the attention layers (weights, tensor and pipeline parallelism, LoRA, sampling) is vLLM's
native Qwen3 (`# diff with vLLM's Qwen3` marks the changes), so a causal checkpoint runs exactly as stock.
"""

from __future__ import annotations

import contextvars
import functools

from vllm.config import VllmConfig, get_current_vllm_config
from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank
from vllm.model_executor.layers.attention.chunked_local_attention import ChunkedLocalAttention
from vllm.model_executor.layers.attention.encoder_only_attention import EncoderOnlyAttention
from vllm.model_executor.layers.attention.prefill_prefix_lm_attention import PrefillPrefixLMAttention
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.qwen3 import Qwen3DecoderLayer, Qwen3ForCausalLM as VllmQwen3ForCausalLM, Qwen3Model
from vllm.model_executor.models.utils import PPMissingLayer, extract_layer_index, maybe_prefix
from vllm.v1.attention.backend import AttentionType

from ..strategy import resolve_strategy
from .vllm import LayerPlan, _refuse, check_backends, layer_plan

_PLANS: contextvars.ContextVar[list[LayerPlan]] = contextvars.ContextVar("qwen3_custom_mask_vllm_plans")


def causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


@functools.lru_cache(maxsize=None)  # one function per (mask_mod, rank): full CUDA graphs need one for all layers
def _offset_heads(mask_mod, offset: int):
    """Tensor parallelism hands each rank its own heads, numbered from 0: the strategy's head index is global."""
    if offset == 0:
        return mask_mod

    def on_rank(b, h, q_idx, kv_idx):
        return mask_mod(b, h + offset, q_idx, kv_idx)

    return on_rank


class CustomQwen3DecoderLayer(Qwen3DecoderLayer):
    def __init__(self, config, cache_config=None, quant_config=None, prefix: str = "", **kwargs) -> None:
        plan = _PLANS.get()[extract_layer_index(prefix)]
        # diff with vLLM's Qwen3: each layer's own window (vLLM's Qwen2Model never passes one)
        super().__init__(config, cache_config, quant_config, prefix, per_layer_sliding_window=plan.window, **kwargs)
        attn = self.self_attn.attn
        if plan.kind in ("chunked", "prefix_lm", "encoder_only"):
            # Another attention class: drop the one just built from vLLM's forward context (it registered its
            # name there) and build the plan's in its place, with the same heads, cache and quantization.
            get_current_vllm_config().compilation_config.static_forward_context.pop(attn.layer_name, None)
            common = dict(num_kv_heads=attn.num_kv_heads, cache_config=cache_config, quant_config=quant_config,
                          prefix=attn.layer_name)
            if plan.kind == "chunked":
                attn = ChunkedLocalAttention(attn.num_heads, attn.head_size, self.self_attn.scaling,
                                             attention_chunk_size=plan.chunk_size, **common)
            elif plan.kind == "prefix_lm":
                attn = PrefillPrefixLMAttention(attn.num_heads, attn.head_size, self.self_attn.scaling, **common)
            else:
                attn = EncoderOnlyAttention(attn.num_heads, attn.head_size, self.self_attn.scaling,
                                            attn_type=AttentionType.ENCODER_ONLY, **common)
            self.self_attn.attn = attn
        elif plan.kind == "flex":
            # FlexAttention's hook: the mask over positions within each request (vLLM passes b = 0).
            offset = get_tensor_model_parallel_rank() * attn.num_heads
            attn.logical_mask_mod = _offset_heads(plan.mask_mod, offset)
        elif any(other.kind == "flex" for other in _PLANS.get()):
            # Layers of one KV-cache group share vLLM's FlexAttention metadata, whose mask a layer replaces only
            # when it has a hook of its own: a causal layer after a flex one would run the flex layer's mask.
            attn.logical_mask_mod = causal  # (its window, if any, vLLM ANDs in from the layer's sliding_window)
        self.backend_name = attn.attn_backend.get_name()


class CustomQwen3Model(Qwen3Model):
    decoder_layer_type = CustomQwen3DecoderLayer

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        config = vllm_config.model_config.hf_config.get_text_config()
        strategy = resolve_strategy(getattr(config, "mask_strategy", None))
        plans = layer_plan(strategy, config, pooling=vllm_config.model_config.runner_type == "pooling")
        encoder_only = all(plan.kind == "encoder_only" for plan in plans)
        if encoder_only == getattr(config, "is_causal", True):  # vLLM reads it for the whole model; the plan decides
            raise _refuse(strategy, f"with is_causal: {not encoder_only}, vLLM would run every layer "
                                    f"{'causal with a KV cache' if encoder_only else 'bidirectional'}",
                          "start it with --hf-overrides '{\"is_causal\": false}'" if encoder_only
                          else "drop is_causal from --hf-overrides (the mask strategy says how each layer attends)")
        token = _PLANS.set(plans)
        # Qwen2Model asserts that sliding layers are all or none because it gives every layer the model's one
        # window; these layers get their own (`CustomQwen3DecoderLayer`), so the assertion is lifted while they
        # are built, and the config is left as it was.
        max_window_layers = getattr(config, "max_window_layers", None)
        if len(set(config.layer_types)) > 1:
            config.max_window_layers = config.num_hidden_layers
        try:
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        finally:
            _PLANS.reset(token)
            if max_window_layers is not None:
                config.max_window_layers = max_window_layers
        built = [layer for layer in self.layers if not isinstance(layer, PPMissingLayer)]
        mine = plans[self.start_layer:self.end_layer]
        graphs = vllm_config.compilation_config.cudagraph_mode
        check_backends(mine, [layer.backend_name for layer in built],
                       full_cudagraphs=graphs is not None and graphs.has_full_cudagraphs(),
                       block_size=vllm_config.cache_config.block_size)
        self.mask_plans = plans


class CustomQwen3ForCausalLM(VllmQwen3ForCausalLM):
    """vLLM's Qwen3ForCausalLM with the body above; loads the plugin's checkpoints (same weight names)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super(VllmQwen3ForCausalLM, self).__init__()  # diff with vLLM's Qwen3: CustomQwen3Model, the rest as is
        config = vllm_config.model_config.hf_config
        self.config = config
        self.vllm_config = vllm_config
        self.quant_config = vllm_config.quant_config
        self.model = CustomQwen3Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=self.quant_config,
                                          prefix=maybe_prefix(prefix, "lm_head"))
            if config.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        else:
            self.lm_head = PPMissingLayer()
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
