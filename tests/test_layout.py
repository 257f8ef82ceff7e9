"""The tree is the architecture: imports point strictly down the layers
cli → train → run → results → purifiers → models → smoothing → data → registry → errors.

Every import in benchbench/ and purifiers/ is read from the source (function-level ones included, since a lazy
import is still a dependency), so a new upward import fails here before it can tangle the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and any layer below it.
LAYERS = ("benchbench.errors", "benchbench.registry", "benchbench.data", "benchbench.smoothing", "benchbench.models",
          "purifiers", "benchbench.results", "benchbench.run", "benchbench.train", "benchbench.cli")


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the layer ``module`` belongs to; None for ``benchbench`` itself and third-party code."""
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[str]:
    """Every module an import statement in ``source`` names, relative imports resolved against ``module``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from benchbench import plots` imports the submodule benchbench.plots
            found.extend(f"{target}.{alias.name}" if layer_of(target) is None else target for alias in node.names)
    return found


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """``module → target`` for each import of ``source`` that points to a higher layer than ``module``'s."""
    own = layer_of(module)
    if own is None:
        return []
    bad = []
    for target in imported_modules(source, module, is_package):
        rank = layer_of(target)
        if rank is not None and rank > own:
            bad.append(f"{module} → {target} ({LAYERS[own]} may not import {LAYERS[rank]})")
    return bad


def sources() -> list[Path]:
    return sorted(p for pkg in ("benchbench", "purifiers") for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unplaced = [module_name(p) for p in sources() if module_name(p) != "benchbench" and layer_of(module_name(p)) is None]
    assert unplaced == []


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for path in sources():
        bad += upward_imports(path.read_text(), module_name(path), path.name == "__init__.py")
    assert bad == []


@pytest.mark.parametrize("module, source", [
    ("benchbench.smoothing.certify", "from benchbench.run.runner import run\n"),
    ("benchbench.models.store", "def f():\n    import benchbench.results.report\n"),
    ("benchbench.data.dataset", "from benchbench import cli\n"),
    ("benchbench.results.quality", "from ..run import plan\n"),
])
def test_the_checker_catches_an_upward_import(module, source):
    assert len(upward_imports(source, module)) == 1


def test_the_checker_allows_downward_and_sideways_imports():
    source = ("from benchbench.errors import BenchError\nfrom benchbench.run.plan import Task\n"
              "import purifiers.diffusion\nimport torch\n")
    assert upward_imports(source, "benchbench.run.runner") == []


def test_sub_packages_say_what_they_may_import():
    for package in ("smoothing", "data", "models", "results", "run", "train"):
        doc = ast.get_docstring(ast.parse((ROOT / "benchbench" / package / "__init__.py").read_text()))
        assert doc and "import" in doc, package
