"""The package's folders show its parts: each role folder imports only from the folders below it, modules stay
short, and the paths of the flat 0.1.0 layout still import (with a FutureWarning naming the new place)."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

import qwen3_custom_mask

PACKAGE = Path(qwen3_custom_mask.__file__).parent
# Lowest first. A folder may import from its own and from lower layers; training and serving sit side by side
# and do not import each other.
LAYERS = {"strategy": 0, "masks": 1, "model": 2, "training": 3, "serving": 3, "cli": 4}
LONGEST_MODULE = 400


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def imported(path: Path) -> list[tuple[int, str]]:
    """Every ``qwen3_custom_mask...`` module ``path`` imports (top-level, lazy and TYPE_CHECKING alike)."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = here if here[-1] == "__init__" else here[:-1]
    package = package[:-1] if package[-1] == "__init__" else package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "qwen3_custom_mask"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] != "qwen3_custom_mask":
                continue
            if module == "qwen3_custom_mask":  # `from .. import masks`: the submodules themselves
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def test_the_package_root_holds_only_role_folders():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = path.relative_to(PACKAGE).parts[0]
    for line, module in imported(path):
        parts = module.split(".")
        assert len(parts) > 1 and parts[1] in LAYERS, (
            f"{path.relative_to(PACKAGE)}:{line} imports {module}: import from a role folder, not the package root")
        other = parts[1]
        assert other == own or LAYERS[other] < LAYERS[own], (
            f"{path.relative_to(PACKAGE)}:{line} ({own}/, layer {LAYERS[own]}) imports {module} "
            f"({other}/, layer {LAYERS[other]}): move the code down, or pass it in")


def test_the_layer_check_catches_an_upward_import(tmp_path):
    fake = PACKAGE / "model" / "upward_probe.py"  # the checker's own input: a file it must refuse
    assert not fake.exists()
    fake.write_text("from ..cli.tiny import tiny_qwen3_config\n")
    try:
        with pytest.raises(AssertionError, match="imports qwen3_custom_mask.cli.tiny"):
            test_no_module_imports_from_a_layer_above_its_own(fake)
    finally:
        fake.unlink()


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_short(path):
    assert len(path.read_text().splitlines()) <= LONGEST_MODULE, f"{path.name}: split it by what its parts do"


@pytest.mark.parametrize("old", sorted(qwen3_custom_mask.MOVED))
def test_the_flat_layouts_paths_still_import_and_say_where_they_went(old):
    new = importlib.import_module(f"qwen3_custom_mask.{qwen3_custom_mask.MOVED[old]}")
    sys.modules.pop(f"qwen3_custom_mask.{old}", None)
    with pytest.warns(FutureWarning, match=f"qwen3_custom_mask.{old} moved to {new.__name__}"):
        alias = importlib.import_module(f"qwen3_custom_mask.{old}")
    public = [name for name in vars(new) if not name.startswith("__")]
    assert public
    for name in public:
        assert getattr(alias, name) is getattr(new, name)
    with pytest.raises(AttributeError):
        alias.no_such_name  # noqa: B018


def test_an_old_pickle_of_a_strategy_loads():
    """A strategy pickled under the flat layout (its classes at qwen3_custom_mask.strategy and .registry) loads."""
    import pickle

    from qwen3_custom_mask import resolve_strategy

    strategy = resolve_strategy({"name": "sliding_window", "window": 3})
    data = pickle.dumps(strategy, protocol=0)  # text opcodes: module names can be rewritten in place
    assert b"qwen3_custom_mask.strategy.spec\n" in data and b"qwen3_custom_mask.strategy.registry\n" in data
    old = data.replace(b"qwen3_custom_mask.strategy.spec\n", b"qwen3_custom_mask.strategy\n")  # 0.1.0's paths
    old = old.replace(b"qwen3_custom_mask.strategy.registry\n", b"qwen3_custom_mask.registry\n")
    sys.modules.pop("qwen3_custom_mask.registry", None)
    with pytest.warns(FutureWarning, match="qwen3_custom_mask.registry moved"):
        loaded = pickle.loads(old)
    assert loaded.to_dict() == strategy.to_dict()
    assert type(loaded) is type(strategy)
