"""The recipe schema documents itself: every field has a description, and docs/recipe-reference.md is
exactly what `lrt recipes reference` generates from the schema."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from lrt.recipe_reference import reference_markdown, undocumented

PAGE = Path(__file__).resolve().parents[1] / "docs/recipe-reference.md"


def test_every_recipe_field_has_a_description() -> None:
    assert undocumented() == []


def test_an_undocumented_field_is_found() -> None:
    from lrt.config import Strict

    class Section(Strict):
        documented: int = 1
        """has a docstring."""
        bare: int = 2

    class Top(BaseModel):
        section: Section

    assert undocumented(Top) == ["Top.section", "Section.bare"]


def test_the_committed_page_is_the_generated_one() -> None:
    out = subprocess.run([sys.executable, "-m", "lrt.cli", "recipes", "reference"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == reference_markdown()
    assert PAGE.read_text(encoding="utf-8") == out.stdout, (
        "docs/recipe-reference.md is stale: run `lrt recipes reference > docs/recipe-reference.md`")
    for key in ("`name_or_path`", "`init`", "`config_overrides`", "`tokenizer`", "`max_length`", "`select_best`"):
        assert key in out.stdout
