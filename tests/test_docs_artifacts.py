"""README.md and every page under docs/ say what their committed artifacts say.

Rule (docs/results.md): every table is a rendered block (`<!-- results:NAME -->`, spec in
results/tables.yaml) and equals its rendering from the artifact; every prose paragraph with a
measured-looking number (a decimal, a percentage, a ratio like 3.8x, 1e10, ±) cites an existing
artifact file under results/ or benchmarks/results/. The other pages and README.md: every rendered
block equals its rendering, and a paragraph or table with a measured-looking number outside `code`
(settings) and arXiv ids cites an artifact or is marked `<!-- not measured -->` (settings, versions,
the papers' own figures). Editing a number by hand therefore fails this test.
"""

import re
import shutil
from pathlib import Path

import pytest

from forklens.report.artifacts import load_artifact
from forklens.report.tables import BLOCK, check_file, load_specs

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "results" / "tables.yaml"
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.fixture(scope="module")
def specs():
    return load_specs(SPECS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_agree_with_their_artifacts(doc, specs):
    assert check_file(doc, specs, root=ROOT) == []  # results rules for results.md, the docs rules elsewhere


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


def test_the_docs_rules_of_the_other_pages(tmp_path):
    """Settings in `code`, arXiv ids and marked paragraphs pass; a bare measured number needs an artifact;
    a hand-written table is allowed only without measured numbers; a marker quoted in code is no block."""
    from forklens.report.tables import check_text

    shutil.copytree(ROOT / "results", tmp_path / "results")
    specs = load_specs(tmp_path / "results" / "tables.yaml")

    def problems(text):
        return check_text(text, specs, "page.md", strict="docs", root=tmp_path)

    assert problems("GRPO at `lr 3e-4` (arXiv 2402.03300, arXiv\n2503.14476v2) with `p = 0.6`.\n") == []
    assert problems("The teacher stops with probability 0.5. <!-- not measured -->\n") == []
    assert problems("Base accuracy 29.0% (`results/demo-quick/artifact.json`).\n") == []
    assert problems("| variant | p |\n|---|---|\n| `deep` | `0.2` |\n") == []
    assert problems("`forklens results render` fills `<!-- results:NAME -->` blocks.\n") == []
    got = problems("Intro.\n\nThe base reaches 29.0% after 600 steps.\n")
    assert len(got) == 1 and got[0].startswith("page.md:3: number '29.0'") and "<!-- not measured -->" in got[0]
    got = problems("| method | peak |\n|---|---|\n| forklens | 0.82 GiB |\n")
    assert len(got) == 1 and "number '0.82'" in got[0]
    # a folder counts only if it holds an artifact; a committed predictions file is a record
    got = problems("The pilot gave 26% (results/predictions/).\n")
    assert len(got) == 1 and "number '6%' in prose cites no existing artifact" in got[0]
    assert problems("The pilot gave 26% (`results/predictions/shortcut-rewards-premature.yaml`).\n") == []
    # the marker waives only its own paragraph; a missing artifact is no citation
    got = problems("Setting 0.5. <!-- not measured -->\n\nMeasured 0.7 (`results/no-such-run/`).\n")
    assert len(got) == 1 and got[0].startswith("page.md:3: number '0.7'")
    # results.md keeps its stricter rules: no hand-written table, and the marker does not waive a number
    assert len(check_text("| a | b |\n|---|---|\n| `x` | y |\n", specs, "results.md", strict=True,
                          root=tmp_path)) == 1
    assert len(check_text("Measured 0.7. <!-- not measured -->\n", specs, "results.md", strict=True,
                          root=tmp_path)) == 1
