"""The docs site's examples run exactly as printed (docs/*.md and the README, every python block of a page in
order, in one namespace, in a fresh folder): nothing is substituted, so a block that needs the Hub or a GPU to
run would fail here. A block that cannot run in CI carries a `<!-- not run: why -->` marker and says so on the page."""

import importlib
import re
from pathlib import Path

import pytest

import qwen3_custom_mask

DOCS = Path(__file__).parent.parent / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md"]
MARKER = "<!-- not run:"


def python_blocks(text: str) -> list[tuple[str, bool]]:
    """(code, runs) for every python block; a block followed by the marker does not run."""
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```\n", text, flags=re.S):
        after = text[match.end():].lstrip("\n")
        blocks.append((match.group(1), not after.startswith(MARKER)))
    return blocks


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_of_the_page_runs_as_written(page, tmp_path, monkeypatch):
    blocks = python_blocks((DOCS / page).read_text())
    if not any(runs for _, runs in blocks):
        pytest.skip(f"{page} has no python block to run")
    from qwen3_custom_mask.strategy.registry import _MASKS

    monkeypatch.chdir(tmp_path)
    registered = dict(_MASKS)  # a page's own strategies (register_mask examples) leave with it
    namespace = {"__name__": f"docs_{page}"}
    try:
        for code, runs in blocks:
            if runs:
                exec(compile(code, str(DOCS / page), "exec"), namespace)
    finally:
        _MASKS.clear()
        _MASKS.update(registered)


def test_a_block_that_does_not_run_says_so_on_the_page():
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        for match in re.finditer(re.escape(MARKER) + r".*?-->\n(.*)\n", text):
            assert match.group(1).startswith("*"), f"{page.name}: a not-run marker without its visible note"


def test_every_documented_name_imports():
    for name in qwen3_custom_mask.__all__:
        assert getattr(qwen3_custom_mask, name) is not None, name
    from qwen3_custom_mask.training import PackingCollator  # noqa: F401  (the name the docs use)

    for target in re.findall(r"^::: ([\w.]+)", (DOCS / "reference.md").read_text(), flags=re.M):
        module, _, attribute = target.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), target


def test_the_readme_stays_short_and_links_into_the_docs():
    readme = (DOCS.parent / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for link in re.findall(r"\]\((docs/[\w./-]+\.md)", readme):
        assert (DOCS.parent / link).is_file(), link
