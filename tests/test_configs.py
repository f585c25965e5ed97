"""Every preset in configs/ is a commented YAML file that resolves and that a model accepts by path."""

from pathlib import Path

import pytest
import yaml

from qwen3_custom_mask import CustomQwen3ForCausalLM, resolve_strategy

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_the_promised_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"bidirectional_llm2vec", "prefix_lm", "sliding_window_4k", "streaming_sinks", "packed_sft"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_is_commented_and_loads_by_path(path, checkpoint):
    assert path.read_text().startswith("# "), "each preset says when to use it"
    spec = yaml.safe_load(path.read_text())["mask_strategy"]
    assert resolve_strategy(str(path)) == resolve_strategy(spec)
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, mask_strategy=str(path))
    assert model.mask_strategy == resolve_strategy(spec)


def test_missing_spec_file_is_named():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resolve_strategy("configs/nope.yaml")
