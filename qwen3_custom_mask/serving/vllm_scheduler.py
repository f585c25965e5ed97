"""vLLM's scheduler, admitting no more requests than its KV cache holds whole: for prefix_lm checkpoints.

vLLM frees a preempted request's KV cache and later recomputes the prompt *and the tokens generated so far* in
one prefill. Under `PrefillPrefixLMAttention` that prefill is bidirectional, so the generated tokens would see
each other and the prompt would see them: the rest of the request would be generated under another mask. With
chunked prefill and prefix caching off (vLLM turns both off for such a model), a request never holds more than
``ceil(max_model_len / block_size)`` blocks per cache group, so admitting at most as many requests as the cache
holds at that size means nothing is ever preempted. The plugin's config hook (vllm.py) selects this class when
a layer's plan is prefix_lm; vLLM imports it by name in the engine's process.
"""

from __future__ import annotations

import logging

from vllm.v1.core.sched.scheduler import Scheduler

from .vllm import VllmRefusal

logger = logging.getLogger(__name__)


class WholeRequestScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        block_size = self.cache_config.block_size
        groups = max(len(self.kv_cache_config.kv_cache_groups), 1)
        per_request = -(-self.vllm_config.model_config.max_model_len // block_size) * groups
        fits = (self.cache_config.num_gpu_blocks - 1) // per_request  # block 0 is vLLM's null block
        if fits < 1:
            raise VllmRefusal(
                f"vLLM cannot serve the mask strategy 'prefix_lm' here: its KV cache ({self.cache_config.num_gpu_blocks} "
                f"blocks of {block_size}) cannot hold one request of max_model_len "
                f"{self.vllm_config.model_config.max_model_len}, and a preempted prefix_lm request would be recomputed "
                f"under another mask; lower --max-model-len or give the cache more memory.")
        if fits < self.max_num_active_reqs:
            logger.warning("prefix_lm on vLLM: at most %d request(s) run at once (%d blocks of %d hold that many at "
                           "max_model_len %d), so that none is preempted and recomputed under another mask",
                           fits, self.cache_config.num_gpu_blocks, block_size, self.vllm_config.model_config.max_model_len)
            self.max_num_active_reqs = fits
