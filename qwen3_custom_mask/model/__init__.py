"""The model glue: how `CustomQwen3ForCausalLM` and its siblings use a strategy.

    configuration.py  CustomQwen3Config: the strategy and its parameters in config.json
    body.py           CustomQwen3Model: builds the masks where stock Qwen3Model does, hands them to stock's layers
    heads.py          the causal-LM, classification and QA heads on that body; Auto registration
    masking.py        one forward's masks from the strategy, the inputs and the cache (per layer type / layer)
    packed.py         padding-free packed rows and documents continued across a KV cache
    generation.py     generate(): create_masks_for_generate, the strategy's per-call inputs, caches
    cache.py          BoundedCache: a KV cache that keeps only what a windowed strategy can still see
    speculative.py    draft-tree verification with a KV cache
    paged.py          continuous batching: the strategy's masks in the engine's packed layout
    loss.py           the causal-LM loss in chunks, without the full logits
    compat.py         the contract with transformers' internals: probed, named, checked at construction

Importing heads.py registers the config and the classes with transformers' Auto API (the package root does it
at import). The names below load on first use, so that compat.py stays readable without torch (the CLI).
"""

from importlib import import_module

_EXPORTS = {
    "BoundedCache": "cache",
    "CustomQwen3Config": "heads",  # through heads: registered with AutoConfig
    "CustomQwen3ForCausalLM": "heads",
    "CustomQwen3ForQuestionAnswering": "heads",
    "CustomQwen3ForSequenceClassification": "heads",
    "CustomQwen3ForTokenClassification": "heads",
    "CustomQwen3Model": "heads",  # through heads: a model class is only handed out registered
    "TreeVerification": "speculative",
    "verify_draft_tree": "speculative",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
