"""The shipped presets (``configs/*.yaml``), installed with the package, so a recipe or strategy file is found
by name from any folder: ``--recipe packed_sft``, ``--strategy prefix_lm.yaml``. torch-free.

A path that exists is used as it is; otherwise a bare name, or a ``configs/NAME.yaml`` path that does not exist
here (the README's spelling, run from another folder), resolves to the shipped preset of that name.
"""

from __future__ import annotations

from pathlib import Path

PRESETS = Path(__file__).parents[1] / "configs"  # qwen3_custom_mask/configs: a link to ../configs in a checkout, a copy in a wheel
OBJECTIVES = ("causal_lm", "prefix_lm_sft", "mntp")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def shipped_preset(text: str) -> Path | None:
    """The shipped preset a name or a missing ``configs/NAME.yaml`` path stands for, else None."""
    path = Path(text)
    if path.exists():
        return None
    name = path.stem if path.suffix in (".yaml", ".yml") else path.name
    candidate = PRESETS / f"{name}.yaml"
    return candidate if (path.parent in (Path("."), Path("configs")) and candidate.is_file()) else None


def recipe_path(text: str) -> Path:
    """``--recipe``: an existing file, or a shipped preset by name; else an error listing the presets."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    shipped = shipped_preset(text)
    if shipped is not None:
        return shipped
    raise FileNotFoundError(f"--recipe {text}: no such file and no shipped recipe of that name; shipped: "
                            f"{', '.join(preset_names())} (qwen3-mask finetune --list-recipes)")


def describe() -> str:
    """One line per shipped preset: name, strategy and training section (``--list-recipes``)."""
    import yaml

    lines = []
    for name in preset_names():
        data = yaml.safe_load((PRESETS / f"{name}.yaml").read_text()) or {}
        strategy = data.get("mask_strategy", data if "training" not in data else None)
        training = data.get("training") or {}
        extra = ", ".join(f"{k}={v}" for k, v in training.items())
        lines.append(f"{name:<24}strategy {strategy}" + (f"; {extra}" if extra else ""))
    return "\n".join(lines)
