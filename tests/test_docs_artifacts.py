"""README.md and docs/results.md say what their committed artifacts say.

Rule (docs/results.md): every table is a rendered block (`<!-- results:NAME -->`, spec in
results/tables.yaml) and equals its rendering from the artifact; every prose paragraph with a
measured-looking number (a decimal, a percentage, a ratio like 3.8x, 1e10, ±) cites an existing
artifact file under results/ or benchmarks/results/. README.md: every rendered block equals its
rendering. Editing a number by hand therefore fails this test.
"""

import re
import shutil
from pathlib import Path

import pytest

from forklens.report.artifacts import load_artifact
from forklens.report.tables import BLOCK, check_file, load_specs

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "results" / "tables.yaml"
DOCS = [ROOT / "docs" / "results.md", ROOT / "README.md"]


@pytest.fixture(scope="module")
def specs():
    return load_specs(SPECS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_agree_with_their_artifacts(doc, specs):
    assert check_file(doc, specs, root=ROOT) == []


def test_every_spec_is_rendered_somewhere_and_every_stamped_artifact_loads(specs):
    used = {m.group("name") for doc in DOCS for m in BLOCK.finditer(doc.read_text(encoding="utf-8"))}
    assert used == set(specs)
    for folder in sorted((ROOT / "results").glob("*/artifact.json")):
        art = load_artifact(folder)
        assert not art.stamp["dirty"], f"{folder}: produced from a tree with uncommitted changes"
        assert len(art.stamp["seeds"]) >= 1


def _copy(tmp_path) -> Path:
    """A copy of the repository's docs and artifacts to edit."""
    for sub in ("results", "benchmarks/results"):
        shutil.copytree(ROOT / sub, tmp_path / sub)
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "results.md", tmp_path / "docs" / "results.md")
    return tmp_path / "docs" / "results.md"


def test_editing_a_rendered_number_by_hand_fails(tmp_path):
    doc = _copy(tmp_path)
    specs = load_specs(tmp_path / "results" / "tables.yaml")
    assert check_file(doc, specs, root=tmp_path) == []
    text = doc.read_text(encoding="utf-8")
    block = next(m for m in BLOCK.finditer(text) if m.group("name") == "demo-quick")
    number = re.search(r"\| (\d+)\.(\d)%", block.group("body"))  # the first accuracy in the table
    start = block.start("body") + number.start(2)
    edited = text[:start] + str((int(number.group(2)) + 1) % 10) + text[start + 1:]
    doc.write_text(edited, encoding="utf-8")
    problems = check_file(doc, specs, root=tmp_path)
    assert len(problems) == 1 and "block 'demo-quick' disagrees with its artifact" in problems[0]


def test_a_hand_written_table_or_an_uncited_number_fails(tmp_path):
    doc = _copy(tmp_path)
    specs = load_specs(tmp_path / "results" / "tables.yaml")
    text = doc.read_text(encoding="utf-8")
    doc.write_text(text + "\n| method | accuracy |\n|---|---|\n| GRPO | 100% |\n", encoding="utf-8")
    problems = check_file(doc, specs, root=tmp_path)
    assert len(problems) == 1 and "a table outside a <!-- results:NAME --> block" in problems[0]
    doc.write_text(text + "\nFork-contrast needs 0.96% of GRPO's FLOPs.\n", encoding="utf-8")
    problems = check_file(doc, specs, root=tmp_path)
    assert len(problems) == 1 and "number '0.96' in prose cites no existing artifact" in problems[0]
    doc.write_text(text + "\nThe base reaches 29.0% (`results/demo-quick/artifact.json`).\n", encoding="utf-8")
    assert check_file(doc, specs, root=tmp_path) == []


def test_a_changed_artifact_makes_the_docs_stale(tmp_path):
    doc = _copy(tmp_path)
    memory = tmp_path / "benchmarks" / "results" / "memory.json"
    memory.write_text(memory.read_text(encoding="utf-8").replace('"ratio": 0.0', '"ratio": 0.1', 1), encoding="utf-8")
    problems = check_file(doc, load_specs(tmp_path / "results" / "tables.yaml"), root=tmp_path)
    assert len(problems) == 1 and "block 'memory' disagrees" in problems[0]


def test_render_check_command(monkeypatch, capsys):
    from forklens.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["results", "render", "--check"]) == 0
