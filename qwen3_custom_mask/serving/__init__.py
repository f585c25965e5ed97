"""Serving and export: the plugin in transformers' own server, and checkpoints for runtimes without it.

    server.py  `qwen3-mask serve`: transformers serve with a model loader that imports the plugin in the
               server's model process (continuous batching itself is model glue: model/paged.py)
    export.py  export_stock: a plain qwen3 checkpoint for vLLM, SGLang, TGI, llama.cpp, where stock config
               fields express the strategy

server.py is torch-free at import: `--help` and the missing-package check answer without torch.
"""

from .server import SERVE_EXTRA, missing_serving_packages, plugin_model_loader, register_with_server, serve  # noqa: F401
