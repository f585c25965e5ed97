"""Every preset in configs/ is a valid strategy spec that a model accepts."""

import json
from pathlib import Path

import pytest

from qwen3_custom_mask import resolve_strategy

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.json"))


def test_there_are_presets():
    assert PRESETS


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_resolves_and_round_trips(path, model_for):
    spec = json.loads(path.read_text())
    assert resolve_strategy(spec).to_dict() == spec
    assert model_for("sdpa", spec).config.mask_strategy == spec
