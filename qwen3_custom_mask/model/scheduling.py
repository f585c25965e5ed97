"""Continuous batching for strategies that read each prompt as a whole (``prefix_lm``: the prompt is the prefix).

transformers' engine splits a prompt across forwards to fill its token budget, and shares cache pages between
prompts that begin alike; either would change such a prompt's keys and values. For these strategies only, the
plugin runs the engine with its own scheduler (registered in the engine's ``SCHEDULER_MAPPING``, chosen by name
through ``ContinuousBatchingConfig.scheduler_type``) and with block sharing off:

* a prompt is scheduled whole, in one forward (FIFO otherwise, decoding requests first, as stock's scheduler,
  except that when the oldest prompt cannot fit beside the decoding requests, it goes first);
  a request the engine soft-resets when pages run out comes back as prompt + generated tokens: its prompt is read
  whole again, the generated tokens after it (causal, as generate() reads them);
* a prompt longer than ``max_batch_tokens`` can never be read whole, and several sequences per prompt make the
  engine read a prompt in two forwards: such a request alone fails, in one line naming the fix; the others are
  served.

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
    hooks = ("_process_candidates", "_schedule_request", "add_waiting_request", "schedule_batch")
    if not all(hasattr(FIFOScheduler, name) for name in hooks):
        return None

    def prompt_part(state) -> int:
        """Tokens of ``state`` that must be read together, in one forward: its prompt, while not read yet (0 after).
        A request the engine soft-reset (its cache freed when pages ran out) comes back with prompt + generated
        tokens as its new prompt, read from position 0: only the first ``_true_initial_tokens`` are the prompt."""
        if state.status == RequestStatus.DECODING or state.position_offset > 0:
            return 0
        return getattr(state, "_true_initial_tokens", 0) or len(state.remaining_prefill_tokens)

    class WholePromptScheduler(FIFOScheduler):
        """FIFO, with every prompt read in one forward (see the module docstring)."""

        def add_waiting_request(self, state):
            fresh = not getattr(state, "_true_initial_tokens", 0)  # never raise for the engine's own requeues
            limit = getattr(self.cache, "max_batch_tokens", None)
            length = prompt_part(state)
            if fresh and limit is not None and length > limit:  # the engine fails this request alone, with this message
                raise ValueError(
                    f"This prompt has {length} tokens and the mask strategy reads each prompt as a whole, in one forward, "
                    f"but the engine reads at most {limit} tokens per forward: raise max_batch_tokens "
                    f"(ContinuousBatchingConfig(max_batch_tokens=...), or --cb-max-batch-tokens), or use model.generate()."
                )
            if fresh and getattr(state, "num_children", 0) > 0:
                raise ValueError(
                    "Several sequences per prompt (num_return_sequences > 1) make the engine read a prompt in two "
                    "forwards, and the mask strategy reads each prompt as a whole: send the prompt once per sequence, or "
                    "use model.generate()."
                )
            super().add_waiting_request(state)

        def _process_candidates(self, candidates, token_budget, *args, **kwargs):
            # Stock's FIFO reads the decoding requests first, then splits the oldest prompt to fill the budget. Here a
            # prompt is read whole or not at all: the prompts that fit whole, in order, follow the decoding requests,
            # and the requests whose prompt is read and may be split (a soft-reset request's generated tokens) come
            # last. When the oldest prompt cannot fit beside the decoding requests, it alone goes first (otherwise a
            # long prompt waits until every request decoding beside it has finished, and runs in a second, emptier
            # wave: twice stock's forwards). The decoding requests are always handed on, so that the engine still
            # runs them when a prompt cannot get cache pages.
            parts = [(state, prompt_part(state)) for state in candidates]
            decoding = [state for state, part in parts if state.status == RequestStatus.DECODING]
            prompts = [(state, part) for state, part in parts if part]
            splittable = [state for state, part in parts if not part and state.status != RequestStatus.DECODING]
            left = token_budget - sum(len(state.tokens_to_process) for state in decoding)
            first = prompts[:1] if prompts and prompts[0][1] > left else []
            left -= sum(part for _, part in first)
            whole = []
            for state, part in prompts[len(first):]:
                if part <= left:
                    whole.append(state)
                    left -= part
            return super()._process_candidates([state for state, _ in first] + decoding + whole + splittable, token_budget,
                                               *args, **kwargs)

        def _schedule_request(self, state, request_tokens, token_budget, *args, **kwargs):
            part = prompt_part(state)
            if part and part < len(request_tokens):  # a soft-reset request: its prompt alone in this forward
                token_budget = min(token_budget, part)
            return super()._schedule_request(state, request_tokens, token_budget, *args, **kwargs)

    WholePromptScheduler.__module__, WholePromptScheduler.__qualname__ = __name__, "WholePromptScheduler"
    SCHEDULER_MAPPING[WHOLE_PROMPT] = WholePromptScheduler
    return WholePromptScheduler


def whole_prompt_config(config):
    """A copy of ``config`` (a ContinuousBatchingConfig, or None for the default) that schedules whole prompts and
    shares no cache pages; None where the config has no such settings."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = ContinuousBatchingConfig() if config is None else config
    if not dataclasses.is_dataclass(config) or not {"scheduler_type", "allow_block_sharing"} <= {f.name for f in dataclasses.fields(config)}:
        return None
    return dataclasses.replace(config, scheduler_type=WHOLE_PROMPT, allow_block_sharing=False)


def whole_prompts_servable() -> bool:
    """Whether this transformers' engine can serve whole-prompt strategies (its packed layout and scheduler hooks)."""
    from .compat import paged_layout_known

    return paged_layout_known() and whole_prompt_scheduler() is not None
