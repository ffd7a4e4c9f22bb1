import json

from xnn_lab import zoo
from xnn_lab.chapters import chapter_source, run_chapter
from xnn_lab.cli import main


def test_zoo_list_names_every_model(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in zoo.names())


def test_zoo_check_reports_each_metric(capsys):
    assert main(["zoo", "check", "cancer_mlp"]) == 0
    assert "cancer_mlp: ok test_accuracy" in capsys.readouterr().out


def test_chapters_runs_code_cells_as_a_script(tmp_path, capsys):
    notebook = {"cells": [
        {"cell_type": "markdown", "source": ["# title"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "import os\n", "x = 2"]},
        {"cell_type": "code", "source": "assert x == 2\nopen('ran.txt', 'w').write(os.environ['XNN_LAB_QUICK'])"},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "01_demo.ipynb"
    path.write_text(json.dumps(notebook))
    assert "%matplotlib" not in chapter_source(path)
    assert run_chapter(path, quick=True) >= 0
    assert (tmp_path / "ran.txt").read_text() == "1"
    assert main(["chapters", "--quick", str(path)]) == 0
    assert "01_demo.ipynb" in capsys.readouterr().out
