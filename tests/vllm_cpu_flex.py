"""TEST FIXTURE, never a serving path: vLLM's own FlexAttention backend made to run on CPU, so that the CPU CI job
can prove the plugin's ``logical_mask_mod`` wiring (vLLM's CPU platform offers only CPU_ATTN, which ignores it).

    python tests/vllm_cpu_flex.py JOBS.json OUT.json     (as serving/vllm_run.py; in-process engine only:
                                                         VLLM_ENABLE_V1_MULTIPROCESSING=0)

Three patches, all to this process: the CPU platform hands out FLEX_ATTENTION when asked; flex_attention runs
eagerly (no compile: torch 2.13's CPU inductor is not trusted with flex); the KV cache write, a CUDA op in vLLM,
is done in torch. Eager flex materialises scores over every KV slot, so keep the cache small
(num_gpu_blocks_override). On a GPU, scripts/gpu_check.py runs the real backend.
"""
from vllm.platforms.cpu import CpuPlatform
from vllm.v1.attention.backends.registry import AttentionBackendEnum
import vllm.v1.attention.backends.flex_attention as flex

_orig = CpuPlatform.get_attn_backend_cls.__func__

@classmethod
def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
    if selected_backend == AttentionBackendEnum.FLEX_ATTENTION:
        return AttentionBackendEnum.FLEX_ATTENTION.get_path()
    return _orig(cls, selected_backend, attn_selector_config, num_heads)

CpuPlatform.get_attn_backend_cls = get_attn_backend_cls
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
flex.flex_attention_compiled = flex_attention   # eager: torch 2.13's CPU inductor is not trusted with flex
flex.create_block_mask_compiled = create_block_mask

def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
    """reshape_and_cache_flash (a CUDA op) in torch: write each new token's key and value into its slot."""
    if self.attn_type == flex.AttentionType.ENCODER_ONLY:
        return
    key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)  # (blocks, block, H, hs)
    slots = slot_mapping[: key.shape[0]]
    real = slots >= 0
    block, offset = slots[real] // key_cache.shape[1], slots[real] % key_cache.shape[1]
    key_cache[block, offset] = key[: slots.shape[0]][real].to(key_cache.dtype)
    value_cache[block, offset] = value[: slots.shape[0]][real].to(value_cache.dtype)

flex.FlexAttentionImpl.do_kv_cache_update = do_kv_cache_update

if __name__ == "__main__":
    from qwen3_custom_mask.serving.vllm_run import main
    main()
