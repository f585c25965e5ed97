"""Serving and export: the plugin in transformers' own server, and checkpoints for runtimes without it.

    server.py  `qwen3-mask serve`: transformers serve with a model loader that imports the plugin in the
               server's model process (continuous batching itself is model glue: model/paged.py)
    export.py  export_stock: a plain qwen3 checkpoint for vLLM, SGLang, TGI, llama.cpp, where stock config
               fields express the strategy

server.py is torch-free at import: `--help` and the missing-package check answer without torch.
"""

from .server import SERVE_EXTRA, missing_serving_packages, plugin_model_loader, register_with_server, serve  # noqa: F401


def __getattr__(name: str):
    if name == "PluginModelLoader":  # defined on first use (the server's optional packages), as in 0.1.0's serving.py
        return plugin_model_loader()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
