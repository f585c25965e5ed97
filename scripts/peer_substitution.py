"""A pytest plugin that runs transformers' own Qwen3 tests on this plugin's classes (test harness only).

Loaded with ``-p peer_substitution`` by scripts/transformers_peer_tests.py: before the test module imports
them, every stock Qwen3 model class transformers exports is replaced by a thin subclass of its
qwen3_custom_mask counterpart that carries the stock name and module (transformers' testers infer the config
class and pick tests by class name), and the Auto classes map a plain ``Qwen3Config`` to them too (tests that
build models through ``AutoModelFor...``). Nothing of this happens in the library, which patches nothing.
"""

import sys

import transformers.models.qwen3.modeling_qwen3 as stock
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GenerationMixin,
    Qwen3Config,
)

import qwen3_custom_mask as plugin

SUBSTITUTES = {
    "Qwen3Model": (plugin.CustomQwen3Model, AutoModel),
    "Qwen3ForCausalLM": (plugin.CustomQwen3ForCausalLM, AutoModelForCausalLM),
    "Qwen3ForSequenceClassification": (plugin.CustomQwen3ForSequenceClassification, AutoModelForSequenceClassification),
    "Qwen3ForTokenClassification": (plugin.CustomQwen3ForTokenClassification, AutoModelForTokenClassification),
    "Qwen3ForQuestionAnswering": (plugin.CustomQwen3ForQuestionAnswering, AutoModelForQuestionAnswering),
}


# Where the tests look classes up: `from transformers import ...` and the testers' inference from the
# base model's package (transformers.models.qwen3). sys.modules holds the module objects imports read.
MODULES = ("transformers", "transformers.models.qwen3", stock.__name__)


def pytest_configure(config):
    import transformers.models.qwen3  # noqa: F401  (in sys.modules before it is patched)

    for name, (ours, auto) in SUBSTITUTES.items():
        # Stock names GenerationMixin among a generative model's direct bases (a test checks that); so does the twin.
        bases = (ours, GenerationMixin) if issubclass(ours, GenerationMixin) else (ours,)
        substitute = type(name, bases, {"__module__": stock.__name__, "__qualname__": name})
        for module in MODULES:
            setattr(sys.modules[module], name, substitute)
        auto._model_mapping.register(Qwen3Config, substitute, exist_ok=True)  # skips register()'s config_class check
