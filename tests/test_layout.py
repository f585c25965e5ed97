"""The package's folders show its parts: each role folder imports only from the folders below it, modules stay
short, and the paths of the flat 0.1.0 layout still import (with a FutureWarning naming the new place)."""

import ast
import copyreg
import importlib
import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import qwen3_custom_mask
from qwen3_custom_mask import MaskStrategy, resolve_strategy
from qwen3_custom_mask._moved import MOVED
from qwen3_custom_mask.strategy import MaskEntry
from test_registry import scratch_names  # noqa: F401  (fixture)

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
    # __init__.py: the public names; _moved.py: the 0.1.0 paths
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "_moved.py"]
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


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_flat_layouts_paths_still_import_and_say_where_they_went(old):
    new = [importlib.import_module(f"qwen3_custom_mask.{module}") for module in MOVED[old]]
    sys.modules.pop(f"qwen3_custom_mask.{old}", None)
    with pytest.warns(FutureWarning, match=f"qwen3_custom_mask.{old} moved to {new[0].__name__}"):
        alias = importlib.import_module(f"qwen3_custom_mask.{old}")
    for module in new:
        public = [name for name in vars(module) if not name.startswith("__")]
        assert public
        for name in public:
            assert getattr(alias, name) is getattr(module, name) or any(name in vars(m) for m in new[: new.index(module)])
    star = {}
    exec(f"from qwen3_custom_mask.{old} import *", star)  # noqa: S102
    assert set(alias.__all__) <= set(star) and alias.__all__
    with pytest.raises(AttributeError, match="moved to"):
        alias.no_such_name  # noqa: B018
    assert getattr(qwen3_custom_mask, old) is alias  # as an attribute of the package too


@pytest.mark.filterwarnings("ignore:qwen3_custom_mask.compat moved:FutureWarning")
def test_a_write_through_an_old_path_reaches_the_code(monkeypatch):
    """monkeypatch / mock.patch through 0.1.0's path patches what the code calls (not a copy that changes nothing)."""
    from qwen3_custom_mask.model import compat

    monkeypatch.setattr("qwen3_custom_mask.compat.transformers_version", lambda: "999.0.0")
    monkeypatch.delenv("QWEN3_MASK_ASSUME_UNTESTED", raising=False)
    assert compat.transformers_version() == "999.0.0"
    assert "999.0.0" in compat.untested_notice()
    monkeypatch.undo()
    assert compat.transformers_version() != "999.0.0"


def test_an_old_module_runs_with_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "qwen3_custom_mask.finetune", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--recipe" in out.stdout and "moved to qwen3_custom_mask.cli.finetune" in out.stderr


def test_reloading_the_package_keeps_one_finder():
    importlib.reload(qwen3_custom_mask)
    importlib.reload(qwen3_custom_mask)
    assert sum(type(f).__name__ == "MovedModuleFinder" for f in sys.meta_path) == 1


def test_a_users_script_named_like_ours_gets_the_classes_registered(tmp_path):
    """Only the project's own commands skip registering at import; a user's finetune.py loads plugin folders."""
    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    CustomQwen3ForCausalLM(tiny_qwen3_config()).save_pretrained(tmp_path / "ckpt")
    script = tmp_path / "finetune.py"
    script.write_text("import sys, qwen3_custom_mask\nfrom transformers import AutoModelForCausalLM\n"
                      "print(type(AutoModelForCausalLM.from_pretrained(sys.argv[1])).__name__)\n")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "CustomQwen3ForCausalLM"


def test_python_dash_m_cli_answers_without_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "qwen3_custom_mask.cli", "list"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "sliding_window" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "transformers" not in imported


class OldLayoutPickler(pickle.Pickler):
    """Pickles a strategy as 0.1.0 did: by class and state, under the flat layout's module names."""

    def reducer_override(self, obj):
        if isinstance(obj, MaskStrategy):
            return copyreg.__newobj__, (MaskStrategy,), dict(vars(obj))
        if isinstance(obj, MaskEntry):
            return copyreg.__newobj__, (MaskEntry,), dict(vars(obj))
        return NotImplemented


def test_an_old_pickle_of_a_strategy_loads():
    """A strategy pickled under the flat layout (its classes at qwen3_custom_mask.strategy and .registry) loads."""
    strategy = resolve_strategy({"name": "sliding_window", "window": 3})
    buffer = io.BytesIO()
    OldLayoutPickler(buffer, protocol=0).dump(strategy)  # text opcodes: module names can be rewritten in place
    data = buffer.getvalue()
    assert b"qwen3_custom_mask.strategy.spec\n" in data and b"qwen3_custom_mask.strategy.registry\n" in data
    old = data.replace(b"qwen3_custom_mask.strategy.spec\n", b"qwen3_custom_mask.strategy\n")  # 0.1.0's paths
    old = old.replace(b"qwen3_custom_mask.strategy.registry\n", b"qwen3_custom_mask.registry\n")
    sys.modules.pop("qwen3_custom_mask.registry", None)
    with pytest.warns(FutureWarning, match="qwen3_custom_mask.registry moved"):
        loaded = pickle.loads(old)
    assert type(loaded) is MaskStrategy and loaded == strategy


@pytest.mark.parametrize("spec", ["causal", "bidirectional", {"and": ["document", {"name": "sliding_window", "window": 3}]},
                                  {"not": "causal"}, {"layers": {"0": "causal", "1": "prefix_lm"}}])
def test_strategies_and_whole_models_pickle(spec):
    """Strategies pickle as their spec (their registry entries hold lambdas); torch.save of a whole model that has
    run forward and generate() loads and gives the same logits."""
    import torch

    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    strategy = resolve_strategy(spec)
    assert pickle.loads(pickle.dumps(strategy)) == strategy
    model = CustomQwen3ForCausalLM(tiny_qwen3_config()).eval()
    model.set_mask_strategy(spec)
    ids = torch.randint(0, 200, (2, 8))
    inputs = {"prefix_lengths": torch.tensor([3, 5])} if "prefix_lm" in str(spec) else {}
    inputs |= {"document_ids": torch.tensor([[0] * 4 + [1] * 4] * 2)} if "document" in str(spec) else {}
    with torch.no_grad():
        before = model(ids, **inputs).logits
        if strategy.generates and spec == "causal":
            model.generate(ids, max_new_tokens=2, do_sample=False)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.mask_strategy == strategy
    with torch.no_grad():
        assert torch.equal(loaded(ids, **inputs).logits, before)


@pytest.mark.filterwarnings("ignore:qwen3_custom_mask.(masking|modeling) moved:FutureWarning")
def test_mock_patch_through_an_old_path_patches_and_restores_the_real_bindings(monkeypatch):
    """mock.patch's exit deletes what it set where the name did not live on the target: through an old path that
    must put the original back (not delete the real function), on every module that binds it."""
    from unittest import mock

    import torch

    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config
    from qwen3_custom_mask.model import body, heads, masking

    model = CustomQwen3ForCausalLM(tiny_qwen3_config()).eval()
    model.set_mask_strategy({"name": "sliding_window", "window": 3})
    ids = torch.randint(0, 200, (1, 8))
    real, calls = masking.lower, []
    with torch.no_grad():
        before = model(ids).logits
        with mock.patch("qwen3_custom_mask.masking.lower", lambda *a, **k: calls.append(1) or real(*a, **k)):
            model(ids)
        assert calls and masking.lower is real
        assert torch.equal(model(ids).logits, before)

    convert = body.as_custom_config  # bound in body.py and in heads.py: 0.1.0's modeling.py held both
    with mock.patch("qwen3_custom_mask.modeling.as_custom_config", side_effect=convert) as spy:
        assert heads.as_custom_config is spy and body.as_custom_config is spy
        CustomQwen3ForCausalLM(tiny_qwen3_config())
    assert spy.call_count == 2 and body.as_custom_config is convert and heads.as_custom_config is convert

    monkeypatch.delattr("qwen3_custom_mask.masking.lower")
    assert "lower" not in vars(masking)
    monkeypatch.undo()
    assert masking.lower is real
    with mock.patch("qwen3_custom_mask.masking.brand_new", 1, create=True):
        assert masking.brand_new == 1  # a new name lands where the code would read it
    assert not hasattr(masking, "brand_new")


def test_copies_keep_the_entry_the_model_resolved(scratch_names):
    """deepcopy (TRL's reference model) and pickle keep the factory a model resolved, after the registry entry is
    replaced or removed, and a user's own Strategy subclass inside a composition copies as before."""
    import copy

    import torch

    from qwen3_custom_mask import CustomQwen3ForCausalLM, Strategy, register_mask, unregister_mask
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    name = "copied_window"

    @register_mask(name)
    def window_two():
        return lambda b, h, q, kv: (kv <= q) & (q - kv < 2)

    model = CustomQwen3ForCausalLM(tiny_qwen3_config()).eval()
    model.set_mask_strategy(name)
    ids = torch.randint(0, 200, (1, 8))
    with torch.no_grad():
        before = model(ids).logits
        register_mask(name, replace=True)(lambda: lambda b, h, q, kv: kv <= q)
        assert torch.equal(copy.deepcopy(model)(ids).logits, before)
        unregister_mask(name)
        assert torch.equal(copy.deepcopy(model)(ids).logits, before)
    assert copy.copy(model.mask_strategy).entry.factory is window_two  # (pickle: a module-level factory, below)

    class Mine(Strategy):
        name, inputs, generates = "mine", (), True

        def to_dict(self):
            return {"mine": True}

        def mask_mod(self, **inputs):
            return lambda b, h, q, kv: kv <= q

    composed = resolve_strategy({"and": [Mine(), "causal"]})
    assert isinstance(copy.deepcopy(composed).children[0], Mine)


def test_a_whole_model_saved_with_a_users_strategy_loads_in_a_fresh_process(tmp_path, monkeypatch):
    """torch.save names the factory by reference: loading imports the user's module, which registers it."""
    import torch

    from qwen3_custom_mask import CustomQwen3ForCausalLM
    from qwen3_custom_mask.cli.tiny import tiny_qwen3_config

    (tmp_path / "acme_window.py").write_text(
        "from qwen3_custom_mask import register_mask\n\n"
        "@register_mask('acme_window')\n"
        "def acme_window(window: int = 2):\n"
        "    return lambda b, h, q, kv: (kv <= q) & (q - kv < window)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("acme_window")
    try:
        model = CustomQwen3ForCausalLM(tiny_qwen3_config()).eval()
        model.set_mask_strategy({"name": "acme_window", "window": 3})
        ids = torch.randint(0, 200, (1, 8))
        with torch.no_grad():
            expected = model(ids).logits
        torch.save({"model": model, "ids": ids, "logits": expected}, tmp_path / "whole.pt")
    finally:
        qwen3_custom_mask.unregister_mask("acme_window")
        sys.modules.pop("acme_window", None)
    code = ("import sys, torch; saved = torch.load(sys.argv[1], weights_only=False); "
            "print(torch.equal(saved['model'](saved['ids']).logits, saved['logits']), saved['model'].mask_strategy.to_dict())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "whole.pt")], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "True" and "acme_window" in out.stdout
