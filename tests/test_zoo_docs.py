"""docs/organisms.md lists every organism family and variant of the zoo, with the role the code gives it."""

from pathlib import Path

from forklens.organisms import FAMILIES, zoo_table
from forklens.organisms.zoo import ROLES

DOC = Path(__file__).resolve().parents[1] / "docs" / "organisms.md"


def test_docs_table_matches_the_zoo():
    text = DOC.read_text(encoding="utf-8")
    documented = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[1].startswith("`"):
            documented[(cells[0].strip("`"), cells[1].strip("`"))] = cells[2]
    code = {(r["family"], r["variant"]): r["role"] for r in zoo_table()}
    assert documented == code


def test_every_family_is_sound():
    assert len(FAMILIES) >= 7
    for fam in FAMILIES.values():
        assert fam.summary and fam.can_show and fam.cannot_show, fam.name
        assert fam.claims or all(v.claims for v in fam.variants.values()), fam.name
        for name, var in fam.variants.items():
            assert var.role in ROLES and var.about, (fam.name, name)
            fam.variant_config(name)  # every variant's overrides apply and validate
        assert f"`{fam.name}`" in DOC.read_text(encoding="utf-8")
