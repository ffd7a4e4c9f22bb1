"""The book's structure: notebooks committed clean, and a build without execution has no warnings."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))


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


def test_book_structure_builds_without_warnings(tmp_path):
    """toc, bibliography, cross-references and API docs, with execution off (nbval runs the code)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config_path = tmp_path / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent))
    result = subprocess.run([jb, "build", str(ROOT), "--config", str(config_path), "--path-output",
                             str(tmp_path / "out"), "--warningiserror", "--keep-going"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "out" / "_build" / "html" / "index.html").exists()
