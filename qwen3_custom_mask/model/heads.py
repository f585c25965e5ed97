"""The heads: stock's causal LM, sequence / token classification and question answering, on the strategy-aware
body (body.py), with the strategies' inputs named in forward()'s signature and the chunked loss; registered with
transformers' Auto classes and name tables at import.
"""

from __future__ import annotations

import functools
import inspect
import logging

from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForQuestionAnswering,
    Qwen3ForSequenceClassification,
    Qwen3ForTokenClassification,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto import modeling_auto
from transformers.models.qwen3.modeling_qwen3 import Qwen3PreTrainedModel
from transformers.utils.generic import can_return_tuple

from ..strategy import Strategy
from . import paged
from .body import (
    BUILTIN_MASK_INPUTS,
    COLLATOR_COLUMNS,
    CustomQwen3Model,
    LoadTimeStrategyMixin,
    as_custom_config,
    register_with_peft,
)
from .configuration import CustomQwen3Config
from .scheduling import WHOLE_PROMPT, whole_prompt_config, whole_prompt_scheduler
from .generation import MaskedGenerationMixin
from .loss import DEFAULT_CHUNK_SIZE, chunkable_head, chunked_causal_lm_loss

logger = logging.getLogger(__name__)


def with_keyword_params(wrapper, forward, names) -> None:
    """Gives ``wrapper`` the signature of ``forward`` plus keyword-only ``names`` (default None) before **kwargs."""
    signature = inspect.signature(forward)
    params = list(signature.parameters.values())
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names if name not in signature.parameters]
    wrapper.__signature__ = signature.replace(parameters=params[:-1] + extra + params[-1:])


def with_mask_inputs(forward):
    """``forward`` with the built-in strategies' inputs in its signature (they still travel in **kwargs).

    Trainer (remove_unused_columns=True, its default) keeps only the dataset columns that forward()'s
    signature names, and PEFT hands Trainer the base model's forward to inspect.
    """

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return forward(self, *args, **kwargs)

    with_keyword_params(wrapper, forward, [*BUILTIN_MASK_INPUTS, *COLLATOR_COLUMNS])
    return wrapper


# The cache's field in CausalLMOutputWithPast: `cache` from transformers 5.24, `past_key_values` before.
OUTPUT_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
LOSS_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")


def with_chunked_loss(forward):
    """``Qwen3ForCausalLM.forward`` that, with ``config.loss_chunk_size`` set, computes a training forward's loss
    from the hidden states in chunks (loss.py) and returns no logits; ``skip_logits=False`` or eval mode: stock's.

    ``skip_logits`` follows Liger-Kernel's convention: None = skip when training with labels.
    """
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    @can_return_tuple
    def wrapper(self, *args, skip_logits: bool | None = None, **kwargs):
        chunk_size = getattr(self.config, "loss_chunk_size", None)
        if skip_logits is False or (skip_logits is None and (chunk_size is None or not self.training)):
            return forward(self, *args, **kwargs)  # stock's path, untouched (generate, eval, compiled decode)
        arguments = signature.bind_partial(self, *args, **kwargs).arguments
        extra = dict(arguments.pop("kwargs", {}))
        labelled = arguments.get("labels") is not None or extra.get("shift_labels") is not None
        if skip_logits is None and not labelled:
            return forward(self, *args, **kwargs)
        if not chunkable_head(self.lm_head):
            if skip_logits is None:  # e.g. LoRA on lm_head: reading its weight would train without the adapter
                logger.warning_once(f"loss_chunk_size is set, but lm_head is a {type(self.lm_head).__name__} (adapter, "
                                    f"hooks or a partitioned weight): the loss is computed from the full logits instead.")
                return forward(self, *args, **kwargs)
            raise ValueError(f"skip_logits=True needs a plain nn.Linear lm_head; this one is a {type(self.lm_head).__name__}.")
        if not labelled:
            raise ValueError("skip_logits=True returns only the loss, so it needs labels (or shift_labels).")
        if not isinstance(arguments.get("logits_to_keep", 0), int) or arguments.get("logits_to_keep", 0) != 0:
            raise ValueError("The chunked loss scores every labelled position; logits_to_keep applies to logits, which "
                             "it does not compute. Drop logits_to_keep or pass skip_logits=False.")
        loss_kwargs = {name: extra.pop(name) for name in LOSS_KWARGS if name in extra}
        body_inputs = {name: value for name, value in arguments.items() if name not in ("self", "labels", "logits_to_keep")}
        outputs = self.model(**body_inputs, **extra)
        chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size  # skip_logits=True on its own
        loss = chunked_causal_lm_loss(outputs.last_hidden_state, self.lm_head, arguments.get("labels"), chunk_size=chunk_size, **loss_kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=None, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{OUTPUT_CACHE_FIELD: getattr(outputs, OUTPUT_CACHE_FIELD, None)},
        )

    with_keyword_params(wrapper, forward, ["skip_logits"])
    return wrapper


class MaskStrategyHeadMixin(LoadTimeStrategyMixin):
    """A head's view of its body's strategy: ``head.mask_strategy``, ``head.set_mask_strategy(spec)``."""

    @property
    def mask_strategy(self) -> Strategy:
        return self.base_model.mask_strategy

    def set_mask_strategy(self, spec: str | dict | Strategy | None) -> Strategy:
        return self.base_model.set_mask_strategy(spec)


class CustomQwen3ForCausalLM(MaskStrategyHeadMixin, MaskedGenerationMixin, Qwen3ForCausalLM):
    """`Qwen3ForCausalLM` on `CustomQwen3Model`: the strategy in every forward and in generate()
    (dynamic, static, bounded caches; compiled decoding; beams; assisted decoding)."""

    config_class = CustomQwen3Config

    def __init__(self, config: Qwen3Config):
        config = as_custom_config(config)
        Qwen3PreTrainedModel.__init__(self, config)
        self.model = CustomQwen3Model(config)  # diff with stock: the strategy-aware body
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    forward = with_mask_inputs(with_chunked_loss(Qwen3ForCausalLM.forward))

    def init_continuous_batching(self, *args, **kwargs):
        """Stock's continuous-batching manager, serving the strategy (paged.py). A strategy that reads each prompt as
        a whole (prefix_lm) gets whole-prompt scheduling and no shared pages (scheduling.py); a strategy the paged
        cache cannot honour is refused here, in one line, before a request is queued."""
        body = self.model
        body.whole_prompt_engine = False
        cached = getattr(self, "_cached_continuous_batching_manager", None)  # a persistent manager, which stock reuses
        if cached is not None:
            body.whole_prompt_engine = getattr(cached.continuous_batching_config, "scheduler_type", None) == WHOLE_PROMPT
            why = paged.refusal(body)
            if why:
                raise ValueError(f"{why} (A persistent manager made for another strategy is reused: call "
                                 f"model.destroy_cached_continuous_batching_manager() first.)")
            return super().init_continuous_batching(*args, **kwargs)
        if paged.reads_whole_prompts(body) and whole_prompt_scheduler() is not None:
            bound = inspect.signature(super().init_continuous_batching).bind_partial(*args, **kwargs)
            given = bound.arguments.get("continuous_batching_config")
            if given is None:  # the deprecated route: a ContinuousBatchingConfig on the generation config
                given = getattr(bound.arguments.get("generation_config"), "continuous_batching_config", None)
            generation = bound.arguments.get("generation_config") or self.generation_config
            if (getattr(generation, "num_return_sequences", None) or 1) > 1:  # the engine forks: a prompt in two reads
                raise ValueError(
                    f"The mask strategy {self.mask_strategy.name!r} reads each prompt as a whole, and several sequences per "
                    f"prompt (num_return_sequences > 1) make the engine read a prompt in two forwards: send the prompt "
                    f"once per sequence, or use model.generate()."
                )
            config = whole_prompt_config(given)
            if config is not None and getattr(given, "scheduler_type", "fifo") not in ("fifo", WHOLE_PROMPT):
                logger.warning(f"The mask strategy {self.mask_strategy.name!r} reads each prompt as a whole: continuous "
                               f"batching uses the whole-prompt scheduler, not {given.scheduler_type!r}.")
            if config is not None:
                bound.arguments["continuous_batching_config"] = config
                body.whole_prompt_engine = True
                args, kwargs = bound.args, bound.kwargs
        why = paged.refusal(body)
        if why:
            raise ValueError(why)
        return super().init_continuous_batching(*args, **kwargs)


class CustomQwen3ForSequenceClassification(MaskStrategyHeadMixin, Qwen3ForSequenceClassification):
    config_class = CustomQwen3Config

    def __init__(self, config: Qwen3Config):
        super().__init__(as_custom_config(config))  # the body comes from AutoModel: CustomQwen3Model

    forward = with_mask_inputs(Qwen3ForSequenceClassification.forward)


class CustomQwen3ForTokenClassification(MaskStrategyHeadMixin, Qwen3ForTokenClassification):
    config_class = CustomQwen3Config

    def __init__(self, config: Qwen3Config):
        super().__init__(as_custom_config(config))

    forward = with_mask_inputs(Qwen3ForTokenClassification.forward)


class CustomQwen3ForQuestionAnswering(MaskStrategyHeadMixin, Qwen3ForQuestionAnswering):
    config_class = CustomQwen3Config

    def __init__(self, config: Qwen3Config):
        super().__init__(as_custom_config(config))

    forward = with_mask_inputs(Qwen3ForQuestionAnswering.forward)


AutoConfig.register(CustomQwen3Config.model_type, CustomQwen3Config)
for _auto, _names, _cls in (
    (AutoModel, "MODEL_MAPPING_NAMES", CustomQwen3Model),
    (AutoModelForCausalLM, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", CustomQwen3ForCausalLM),
    (AutoModelForSequenceClassification, "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", CustomQwen3ForSequenceClassification),
    (AutoModelForTokenClassification, "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", CustomQwen3ForTokenClassification),
    (AutoModelForQuestionAnswering, "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", CustomQwen3ForQuestionAnswering),
):
    _auto.register(CustomQwen3Config, _cls)
    # Auto.register does not reach the name tables that transformers switches behaviour on by class name:
    # Trainer's label smoother shifts labels only for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES; `transformers
    # serve` and the pipelines pick the task by them.
    # Listed under our own model_type, which CONFIG_MAPPING_NAMES lacks, so the Auto lookups themselves are unchanged.
    getattr(modeling_auto, _names).setdefault(CustomQwen3Config.model_type, _cls.__name__)
register_with_peft()
