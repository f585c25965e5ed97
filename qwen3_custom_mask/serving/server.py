"""``qwen3-mask serve``: transformers' own OpenAI-compatible server (``transformers serve``) with the plugin.

The server loads each model in a spawned process, by ``getattr(transformers, config.architectures[0])``, with a
copy of its `ModelLoader`. Nothing the parent process imported reaches that child, so the plugin hands the
server a loader of its own (`PluginModelLoader`): pickled by reference to this module, it makes the child import
the plugin (its Auto registrations) before it loads, names `CustomQwen3ForCausalLM` where the server looks
architectures up, loads Qwen3 checkpoints (stock or plugin) into it, and sets ``--strategy`` when given.
Everything else (the endpoints, streaming, continuous batching and its ``--cb-*`` options) is the server's own.
"""

from __future__ import annotations

import contextlib
from importlib.util import find_spec

SERVE_EXTRA = "pip install 'qwen3-custom-mask[serve]'"


def missing_serving_packages() -> list[str]:
    """What transformers' server needs and this environment lacks (without importing them)."""
    return [name for name in ("fastapi", "uvicorn", "openai", "pydantic") if find_spec(name) is None]


def register_with_server() -> None:
    """What the server looks up by model_type, under the plugin's: Qwen3's response template (the `<think>` and
    tool-call parsing of chat answers). Importing modeling registers the config and classes (Auto API)."""
    from ..model import heads  # noqa: F401  (registers the config and classes)

    try:
        from transformers.cli.serving import utils
    except ImportError:
        return
    table = getattr(utils, "_RESPONSE_TEMPLATE_FALLBACKS", None)
    if isinstance(table, dict) and not any("qwen3_custom_mask" in types for types in table):
        qwen3 = next((template for types, template in table.items() if "qwen3" in types), None)
        if qwen3 is not None:
            table[("qwen3_custom_mask",)] = qwen3


@contextlib.contextmanager
def _plugin_names():
    """Inside the model's process: the server's architecture lookup (``getattr(transformers, ...)``) finds the
    plugin's class, for plugin checkpoints and for stock Qwen3 ones (the default strategy is stock exactly). Set on
    the module object the server's own module reads (transformers' lazy module may have been replaced since)."""
    import transformers.cli.serving.model_manager as model_manager

    from ..model import CustomQwen3ForCausalLM

    namespace = model_manager.transformers
    stock = namespace.Qwen3ForCausalLM
    namespace.CustomQwen3ForCausalLM = CustomQwen3ForCausalLM
    namespace.Qwen3ForCausalLM = CustomQwen3ForCausalLM
    try:
        yield
    finally:
        namespace.Qwen3ForCausalLM = stock


def plugin_model_loader():
    """`ModelLoader` of the installed transformers' server, with the plugin (defined on first use: the server's
    module needs its optional packages)."""
    if "PluginModelLoader" in globals():
        return globals()["PluginModelLoader"]
    register_with_server()  # in the model's process too: it unpickles the loader through this function
    from transformers.cli.serving.model_manager import ModelLoader

    global PluginModelLoader

    class PluginModelLoader(ModelLoader):  # noqa: F811  (module-level name: pickled by reference)
        mask_strategy = None  # the serve command's --strategy, copied onto each instance (which the child receives)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.mask_strategy = type(self).mask_strategy

        def _load_model(self, *args, **kwargs):
            with _plugin_names():
                model = super()._load_model(*args, **kwargs)
            if self.mask_strategy is not None:
                model.set_mask_strategy(self.mask_strategy)
            return model

    PluginModelLoader.__module__, PluginModelLoader.__qualname__ = __name__, "PluginModelLoader"
    return PluginModelLoader


def __getattr__(name: str):
    # Unpickling in the model's process looks the class up here before anything defined it.
    if name == "PluginModelLoader":
        return plugin_model_loader()
    raise AttributeError(name)


def serve(model: str, strategy=None, options: list[str] | None = None) -> int:
    """Runs ``transformers serve MODEL OPTIONS`` with the plugin's loader; returns the server's exit code."""
    import transformers.cli.serving.model_manager as model_manager
    from transformers.cli.transformers import app

    import sys
    import warnings

    # transformers serve leaves one semaphore to multiprocessing's resource tracker at shutdown (stock's command
    # prints the same "leaked semaphore objects" warning): harmless, and read as a failure. The tracker process
    # takes its warning filters from sys.warnoptions when it starts.
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    warnings.filterwarnings("ignore", message="resource_tracker", category=UserWarning)
    loader = plugin_model_loader()
    loader.mask_strategy = strategy
    model_manager.ModelLoader = loader  # serve.py reads it from this module when the command starts
    import click

    try:  # the transformers CLI's own command (a typer app, or the click group huggingface_hub builds)
        app(args=["serve", model, *(options or [])], prog_name="qwen3-mask serve", standalone_mode=False)
    except click.ClickException as err:  # an option mistake: one line, as every qwen3-mask mistake
        raise ValueError(f"{err.format_message()} (transformers serve --help lists the options)") from None
    except (KeyboardInterrupt, click.exceptions.Abort):
        return 0
    return 0
