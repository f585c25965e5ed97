"""Serving and export: the plugin in transformers' own server, and checkpoints for runtimes without it.

    server.py  `qwen3-mask serve`: transformers serve with a model loader that imports the plugin in the
               server's model process (continuous batching itself is model glue: model/paged.py)
    export.py  export_stock: a plain qwen3 checkpoint for vLLM, SGLang, TGI, llama.cpp, where stock config
               fields express the strategy
    vllm.py    the `vllm.general_plugins` entry point, and which vLLM attention each layer runs on (or why not)
    vllm_model.py      CustomQwen3ForCausalLM for vLLM: vLLM's Qwen3, each layer built from that plan
    vllm_scheduler.py  vLLM's scheduler, never preempting a prefix_lm request (it would come back under another mask)
    vllm_run.py        checkpoints on vLLM's offline engine, one after another (the tests, bench --only vllm)

server.py is torch-free at import: `--help` and the missing-package check answer without torch.
The vllm_* modules import vLLM; only vLLM (through the entry point) and the tests import them.
"""

from .server import SERVE_EXTRA, missing_serving_packages, plugin_model_loader, register_with_server, serve  # noqa: F401


def __getattr__(name: str):
    if name == "PluginModelLoader":  # defined on first use (the server's optional packages), as in 0.1.0's serving.py
        return plugin_model_loader()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
