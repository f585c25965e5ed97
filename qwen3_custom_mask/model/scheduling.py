"""Continuous batching for strategies that read each prompt as a whole (``prefix_lm``: the prompt is the prefix).

transformers' engine splits a prompt across forwards to fill its token budget, and shares cache pages between
prompts that begin alike; either would change such a prompt's keys and values. For these strategies only, the
plugin runs the engine with its own scheduler (registered in the engine's ``SCHEDULER_MAPPING``, chosen by name
through ``ContinuousBatchingConfig.scheduler_type``) and with block sharing off:

* a prompt is scheduled whole, in one forward (FIFO otherwise, decoding requests first, as stock's scheduler);
* a prompt longer than ``max_batch_tokens`` can never be read whole: that request alone fails, in one line
  naming the setting to raise; the others are served.

Causal and every other strategy keep the engine's defaults. Where the engine lacks what this needs (older
releases), whole-prompt strategies stay refused (paged.py).
"""

from __future__ import annotations

import dataclasses

WHOLE_PROMPT = "qwen3_mask_whole_prompt"


def whole_prompt_scheduler():
    """The scheduler class, registered on first use; None where the engine lacks the hooks it overrides."""
    try:
        from transformers.generation.continuous_batching.requests import RequestStatus
        from transformers.generation.continuous_batching.scheduler import SCHEDULER_MAPPING, FIFOScheduler
    except ImportError:
        return None
    if WHOLE_PROMPT in SCHEDULER_MAPPING:
        return SCHEDULER_MAPPING[WHOLE_PROMPT]
    if not all(hasattr(FIFOScheduler, name) for name in ("_process_candidates", "add_waiting_request", "schedule_batch")):
        return None

    class WholePromptScheduler(FIFOScheduler):
        """FIFO, with every prompt read in one forward (see the module docstring)."""

        def add_waiting_request(self, state):
            limit = getattr(self.cache, "max_batch_tokens", None)
            length = len(state.remaining_prefill_tokens)
            if limit is not None and length > limit:  # the engine fails this request alone, with this message
                raise ValueError(
                    f"This prompt has {length} tokens and the mask strategy reads each prompt as a whole, in one forward, "
                    f"but the engine reads at most {limit} tokens per forward: raise max_batch_tokens "
                    f"(ContinuousBatchingConfig(max_batch_tokens=...), or --cb-max-batch-tokens), or use model.generate()."
                )
            super().add_waiting_request(state)

        def _process_candidates(self, candidates, token_budget, *args, **kwargs):
            # Keep only what fits whole, in order: stock's loop then never splits a prompt (each one it takes fits
            # in what is left of the budget), and a prompt that does not fit now waits for a later forward.
            whole, left = [], token_budget
            for state in candidates:
                decoding = state.status == RequestStatus.DECODING
                need = len(state.tokens_to_process) if decoding else len(state.remaining_prefill_tokens)
                if need <= left:
                    whole.append(state)
                    left -= need
            return super()._process_candidates(whole, token_budget, *args, **kwargs)

    WholePromptScheduler.__module__, WholePromptScheduler.__qualname__ = __name__, "WholePromptScheduler"
    SCHEDULER_MAPPING[WHOLE_PROMPT] = WholePromptScheduler
    return WholePromptScheduler


def whole_prompt_config(config):
    """A copy of ``config`` (a ContinuousBatchingConfig, or None for the default) that schedules whole prompts and
    shares no cache pages."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = ContinuousBatchingConfig() if config is None else config
    fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set(vars(config))
    if not {"scheduler_type", "allow_block_sharing"} <= fields:
        return None
    changed = {"scheduler_type": WHOLE_PROMPT, "allow_block_sharing": False}
    return dataclasses.replace(config, **changed) if dataclasses.is_dataclass(config) else _copy_with(config, changed)


def _copy_with(config, changed: dict):
    import copy

    out = copy.copy(config)
    for key, value in changed.items():
        setattr(out, key, value)
    return out


def whole_prompts_servable() -> bool:
    """Whether this transformers' engine can serve whole-prompt strategies (its packed layout and scheduler hooks)."""
    from .compat import paged_layout_known

    return paged_layout_known() and whole_prompt_scheduler() is not None
