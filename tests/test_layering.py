"""The layer rule of docs/architecture.md: imports point down the layers, never up.

Every module under ``src/forklens`` is parsed with ``ast``; every ``import forklens...`` and ``from
forklens... import`` in it (at the top of the module *and* inside functions) is checked against the
layer order below. A package may import itself (``train/`` modules import each other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import forklens

SRC = Path(forklens.__file__).resolve().parent

#: top to bottom; a module may import only packages strictly below its own (or its own package)
LAYERS: list[set[str]] = [
    {"cli"},
    {"commands"},
    {"experiments"},
    {"organisms"},
    {"train"},
    {"analysis"},
    {"objectives"},
    {"rewards"},
    {"tasks"},
    {"policy"},
    {"report", "audit"},
    {"config", "dist", "rollouts", "runfolder"},
    {"errors", "__init__"},
    {"models"},  # Hugging Face model classes: torch and transformers only
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit_of(path: Path, root: Path = SRC) -> str:
    """The layer unit of a source file: its subpackage, or its module name for top-level modules."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def forklens_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported unit) for every import of a forklens module in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "forklens" else [f"forklens.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative imports hide the graph: not allowed
            out.append((node.lineno, "<relative>"))
            continue
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "forklens":
                out.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return out


def upward_imports(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        unit = unit_of(path, root)
        for line, target in forklens_imports(path):
            if target == "<relative>":
                bad.append(f"{path.relative_to(root)}:{line}: relative import")
            elif target == "__version__":
                continue  # `from forklens import __version__`: the package root
            elif target != unit and LEVEL.get(target, -1) <= LEVEL[unit]:
                bad.append(f"{path.relative_to(root)}:{line}: {unit} imports {target}")
    return bad


def test_every_module_is_in_a_layer():
    units = {unit_of(p) for p in SRC.rglob("*.py")}
    assert units <= set(LEVEL), f"modules outside the layer list: {sorted(units - set(LEVEL))}"


def test_imports_point_down_the_layers():
    assert upward_imports() == []


@pytest.mark.parametrize("lower, upper", [("tasks", "train"), ("analysis", "experiments"), ("experiments", "commands"),
                                          ("objectives", "train"), ("policy", "tasks")])
def test_the_check_catches_an_upward_import(tmp_path, lower, upper):
    (tmp_path / lower).mkdir()
    (tmp_path / lower / "mod.py").write_text(f"def f():\n    from forklens.{upper}.x import y\n    return y\n")
    assert upward_imports(tmp_path) == [f"{lower}/mod.py:2: {lower} imports {upper}"]


def test_the_check_allows_imports_within_a_package_and_downwards(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.py").write_text("import forklens.train.b\nfrom forklens import dist\n"
                                             "from forklens.policy import Policy\n")
    assert upward_imports(tmp_path) == []
