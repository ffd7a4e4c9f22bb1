"""The book's structure: notebooks committed clean and every chapter in the table of contents
(tests/test_browser.py builds the book and opens it)."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
PAGES = NOTEBOOKS + sorted((ROOT / "exercises").glob("*.ipynb"))
# The book shows code in a box 77 characters of its monospace font wide (684 px at a 1280 px window,
# measured in Chromium by tests/test_browser.py, which checks the real box); longer lines are cut.
CODE_WIDTH = 76
FENCE = re.compile(r"^```.*?$(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"


def test_toc_lists_every_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {entry["file"] for part in toc["parts"] for entry in part["chapters"]}
    chapters = {f"book/{p.stem}" for p in (ROOT / "book").glob("[0-9]*.ipynb")}
    assert chapters and chapters <= files


@pytest.mark.parametrize("path", PAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_code_fits_the_page(path):
    """Every line of a code cell, and of a code block in a markdown cell, fits the book's code box."""
    too_long = []
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        source = "".join(cell["source"])
        code = source if cell["cell_type"] == "code" else "\n".join(FENCE.findall(source))
        too_long += [f"cell {index}: {line}" for line in code.splitlines() if len(line) > CODE_WIDTH]
    assert too_long == [], f"{len(too_long)} lines over {CODE_WIDTH} characters, the first: {too_long[:3]}"
