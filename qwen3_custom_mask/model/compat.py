"""The contract with transformers' internals, probed once from the installed version's signatures.

transformers renames what this plugin builds on between minor releases (5.24: ``past_key_values`` became
``cache`` in every forward, in generate's hooks and in the mask builders; a body that kept the old name
built every cached mask from an empty cache, silently). Every other module asks this one which name the
installed version uses instead of checking version strings, and `check_internals` refuses to build a model
on a version whose hooks it cannot find, naming what is missing.

Tested range (CI): `TESTED` below. A newer transformers is not an error: the probe below decides whether the
plugin can run, and `untested_notice` says once per process, where it helps (model construction in Python,
``qwen3-mask selfcheck`` and ``-v``), that it has not been proven there. It never prints on a CLI answer, so a
new release cannot turn a test of the CLI's output red by itself. ``QWEN3_MASK_ASSUME_UNTESTED=1`` makes the
installed version count as untested (CI runs the whole suite so).

Every transformers (and torch) internal the plugin relies on, and why. Public API (``masking_utils`` mask
functions, ``create_masks_for_generate``, ``GenerationConfig``, ``Cache.get_seq_length``, the Auto classes) is
not listed. "probed" = `internals` checks it when a model is built and names it if it moved.

| internal                                                          | where           | why                                     | check      |
|-------------------------------------------------------------------|-----------------|-----------------------------------------|------------|
| the cache keyword (``cache`` / ``past_key_values``) of             | body, heads,    | hand the cache on under the name the    | probed     |
| ``Qwen3Model.forward``, the mask builders, generate's hooks       | masking, gen.   | installed version reads                 |            |
| ``Qwen3Model.forward`` uses a ready ``{layer_type: mask}`` dict   | body            | the body's masks reach stock's layers   | selfcheck  |
| decoder layers forward ``**kwargs`` to the attention function     | masking         | per-layer masks/kwargs (pre-hook)       | probed     |
| ``GenerationMixin._prepare_position_ids_for_generation``          | generation      | documents: the prompt's own positions   | probed     |
| ``GenerationMixin._validate_model_kwargs``                        | generation      | registered strategies' per-call inputs  | probed     |
| ``GenerationMixin._get_candidate_generator(model_kwargs=)``       | generation      | a draft model gets no mask inputs       | probed     |
| ``prepare_inputs_for_generation(next_sequence_length,             | generation      | the tokens a step adds (cache check)    | probed     |
| is_first_iteration)`` keyword names                               |                 |                                         |            |
| ``Cache.get_mask_sizes(query_length, layer_idx)`` -> (len, offset)| masking         | masks sized per layer type              | probed     |
| ``config._attn_implementation``                                   | masking         | which lowering (stock's own convention) | probed     |
| ``Qwen3Attention.sliding_window`` / ``.layer_type``               | body            | flash reads the window off the module   | probed     |
| ``CausalLMOutputWithPast``'s cache field name                     | heads           | the chunked loss's output               | read       |
| ``DynamicLayer`` (``lazy_initialization``, ``keys``, ``values``)  | cache           | BoundedCache's layers                   | probed     |
| continuous batching's packed layout (``cu_seq_lens_q/k``,          | paged           | a strategy's masks for the engine       | probed     |
| ``position_ids``, ``PagedAttentionCache.update(..., kwargs)``)     |                 | (older layouts: causal only)            |            |
| flash kwargs ``cu_seq_lens_q/k``, ``max_length_q/k``, ``is_causal``| masking         | packed documents under flash (varlen)   | GPU check  |
| ``utils.generic.can_return_tuple``, ``merge_with_config_defaults``| body, heads     | the heads' forward as stock decorates it| import     |
| ``TrainingArguments`` checkpointing field (renamed in 5.2x)       | finetune        | the recipe's checkpointing switch       | read       |
| ``MODEL_*_MAPPING_NAMES`` (the Auto name tables)                  | heads           | Trainer's label smoother, serve: by name| tested     |
| continuous batching's ``SCHEDULER_MAPPING``, ``FIFOScheduler``     | scheduling      | prefix_lm: whole prompts, no shared     | probed,    |
| (``_process_candidates``, ``add_waiting_request``), request states,|                 | pages (else refused)                    | tested     |
| ``ContinuousBatchingConfig.scheduler_type``/``allow_block_sharing``|                 |                                         |            |
| PEFT's ``peft.utils.constants`` model_type tables                 | clients         | LoRA/IA3 default target modules         | tested     |
| ``cli.serving.model_manager.ModelLoader._load_model``,            | serving.server  | ``qwen3-mask serve``'s loader; Qwen3's  | tested     |
| ``cli.serving.utils._RESPONSE_TEMPLATE_FALLBACKS``                 |                 | response parser by model_type           |            |
| ``PreTrainedModel._tied_weights_keys``                            | fsdp            | re-tie weights after FSDP2 sharding     | FSDP test  |
| torch ``_create_sparse_block_from_block_mask``                    | lowering        | BlockMask from interval block indices   | probed     |
| torch ``_dynamo.config.automatic_dynamic_shapes``                 | body            | CPU flex static shapes (torch 2.13 bug) | import     |

Replaced by public API (5.25 pass): ``GenerationMixin._prepare_generation_config`` (-> ``GenerationConfig.update``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from importlib.metadata import version

logger = logging.getLogger(__name__)

# The transformers releases CI proves (floor and newest; .ci/run installs both). Lift the upper one when a
# new release passes the suite and `qwen3-mask selfcheck`.
TESTED = ("5.4.0", "5.25.0")
CACHE_NAMES = ("cache", "past_key_values")  # newest first


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def transformers_version() -> str:
    return version("transformers")


def untested_notice() -> str | None:
    """What to tell a user whose transformers lies outside `TESTED` (None inside it); torch-free."""
    try:
        installed = transformers_version()
    except Exception:  # not installed: the import of model/ says so
        return None
    inside = _release(TESTED[0]) <= _release(installed) <= _release(TESTED[1])
    if inside and os.environ.get("QWEN3_MASK_ASSUME_UNTESTED", "") in ("", "0"):
        return None
    return (
        f"qwen3-custom-mask is tested with transformers {TESTED[0]} to {TESTED[1]}; {installed} is installed. Run "
        f"`qwen3-mask selfcheck` (seconds, on CPU) before you rely on it: it checks the default strategy against "
        f"stock and cached decoding against the uncached forward."
    )


_notice = {"muted": False, "said": False}


def mute_untested_notice() -> None:
    """The CLI's quiet mode: its answers stay one line (``-v`` and ``selfcheck`` still say it)."""
    _notice["muted"] = True


def warn_if_untested() -> None:
    """Logs `untested_notice` once per process (called where a model is built), unless muted."""
    if _notice["muted"] or _notice["said"]:
        return
    notice = untested_notice()
    if notice:
        _notice["said"] = True
        logger.warning(notice)


def _parameters(func) -> dict:
    """The parameters the function really reads. ``inspect.unwrap`` first: a signature a decorator exposes may
    add a deprecated alias (5.25's ``deprecate_kwarg(..., expose_in_signature=True)`` puts ``past_key_values``
    back beside ``cache``), and an alias must never be taken for the name the function uses."""
    return dict(inspect.signature(inspect.unwrap(func)).parameters)


def _cache_name(func, where: str, missing: list[str]) -> str:
    params = _parameters(func)
    for name in CACHE_NAMES:
        if name in params:
            return name
    missing.append(f"{where} takes none of {list(CACHE_NAMES)} (its parameters: {list(params)})")
    return CACHE_NAMES[0]


@functools.cache
def internals() -> dict:
    """``{"forward": name, "masks": name, "generate": name, "missing": [...]}``: the cache keyword the installed
    transformers' Qwen3 forward, mask builders and generate hooks take, and what could not be found."""
    from transformers import GenerationMixin, Qwen3Model
    from transformers import masking_utils
    from transformers.cache_utils import Cache, DynamicLayer
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    missing: list[str] = []
    found = {
        "forward": _cache_name(Qwen3Model.forward, "Qwen3Model.forward", missing),
        "generate": _cache_name(GenerationMixin.prepare_inputs_for_generation, "GenerationMixin.prepare_inputs_for_generation", missing),
    }
    builders = ("create_causal_mask", "create_sliding_window_causal_mask", "create_masks_for_generate")
    names = set()
    for builder in builders:
        func = getattr(masking_utils, builder, None)
        if func is None:
            missing.append(f"transformers.masking_utils.{builder}")
            continue
        names.add(_cache_name(func, f"masking_utils.{builder}", missing))
        required = [n for n, p in _parameters(func).items() if p.default is p.empty and p.kind is not p.VAR_KEYWORD]
        unknown = set(required) - {"config", "inputs_embeds", "attention_mask", *CACHE_NAMES}
        if unknown:  # 5.0-5.3 required cache_position, which this plugin does not pass
            missing.append(f"masking_utils.{builder} requires {sorted(unknown)}")
    found["masks"] = names.pop() if len(names) == 1 else CACHE_NAMES[0]
    sizes = _parameters(Cache.get_mask_sizes)
    if list(sizes)[1:3] != ["query_length", "layer_idx"]:
        missing.append(f"Cache.get_mask_sizes(query_length, layer_idx) (found {list(sizes)[1:]})")
    for hook in ("_prepare_position_ids_for_generation", "_validate_model_kwargs", "_get_candidate_generator", "create_masks_for_generate"):
        if not hasattr(GenerationMixin, hook) and not hasattr(masking_utils, hook):
            missing.append(f"GenerationMixin.{hook}")
    step = _parameters(GenerationMixin.prepare_inputs_for_generation)
    for name in ("next_sequence_length", "is_first_iteration"):
        if name not in step:
            missing.append(f"GenerationMixin.prepare_inputs_for_generation({name}=) (its parameters: {list(step)})")
    layer = _parameters(Qwen3DecoderLayer.forward)
    if not any(p.kind is p.VAR_KEYWORD for p in layer.values()):
        missing.append("Qwen3DecoderLayer.forward(**kwargs), which hands per-layer attention kwargs on")
    for attribute in ("lazy_initialization", "update", "get_seq_length"):
        if not hasattr(DynamicLayer, attribute):
            missing.append(f"transformers.cache_utils.DynamicLayer.{attribute}")
    try:
        from torch.nn.attention.flex_attention import _create_sparse_block_from_block_mask  # noqa: F401
    except ImportError:
        missing.append("torch.nn.attention.flex_attention._create_sparse_block_from_block_mask")
    found["missing"] = missing
    return found


def check_internals() -> None:
    """Raises, naming what is missing, if the installed transformers lacks a hook this plugin builds on."""
    missing = internals()["missing"]
    if missing:
        raise RuntimeError(
            f"qwen3-custom-mask cannot find these transformers {transformers_version()} internals: "
            + "; ".join(missing)
            + f". It is tested with transformers {TESTED[0]} to {TESTED[1]}: install one of those "
            f"(pip install 'transformers>={TESTED[0]},<={TESTED[1]}') or upgrade qwen3-custom-mask."
        )


@functools.cache
def paged_layout_known() -> bool:
    """Whether continuous batching runs the layout paged.py builds masks for: the layers' own cache update reads the
    engine's indices from their kwargs (``PagedAttentionCache.update(..., kwargs)``), the attention is the stock
    one over each request's keys in ``cu_seq_lens_k`` order. Older engines (a separate ``cache=`` beside
    ``past_key_values``, read/write indices as arguments) serve the 'causal' strategy only."""
    try:
        from transformers.generation.continuous_batching.cache import PagedAttentionCache
    except ImportError:
        return False
    return "kwargs" in _parameters(PagedAttentionCache.update)


def check_model_internals(model) -> None:
    """The internals only a built model shows: each attention module carries ``sliding_window`` and ``layer_type``
    (flash-attention reads the window there), and the config names its backend in ``_attn_implementation``."""
    missing = []
    if not hasattr(model.config, "_attn_implementation"):
        missing.append("config._attn_implementation")
    attn = model.layers[0].self_attn if len(model.layers) else None
    for name in ("sliding_window", "layer_type"):
        if attn is not None and not hasattr(attn, name):
            missing.append(f"Qwen3Attention.{name}")
    if missing:
        raise RuntimeError(
            f"qwen3-custom-mask cannot find these transformers {transformers_version()} internals: {'; '.join(missing)}. "
            f"It is tested with transformers {TESTED[0]} to {TESTED[1]}: install one of those or upgrade qwen3-custom-mask."
        )


def forward_cache_kwarg() -> str:
    """The keyword stock Qwen3 forwards take the KV cache by: ``"cache"`` (5.24+) or ``"past_key_values"``."""
    return internals()["forward"]


def generate_cache_kwarg() -> str:
    return internals()["generate"]


def mask_cache_kwarg() -> str:
    return internals()["masks"]


def checkpointing_argument() -> str:
    """TrainingArguments' switch for activation (gradient) checkpointing: renamed in 5.2x, the old name deprecated."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def pop_cache(kwargs: dict, given=None):
    """The cache a caller passed under either name (taken out of ``kwargs``); both at once is an error."""
    found = [(name, kwargs.pop(name)) for name in CACHE_NAMES if kwargs.get(name) is not None]
    for name in CACHE_NAMES:
        kwargs.pop(name, None)
    if given is not None:
        found.insert(0, ("cache", given))
    if len(found) > 1:
        raise ValueError(f"Pass the KV cache once: got both {found[0][0]}= and {found[1][0]}=.")
    return found[0][1] if found else None
