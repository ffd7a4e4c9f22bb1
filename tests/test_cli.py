import json
import os

import pytest
import torch

from xnn_lab import zoo
from tools import chapters
from tools.chapters import chapter_source, run_chapter, run_chapters
from xnn_lab.cli import main


def test_zoo_list_names_every_model(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in zoo.names())


def test_zoo_check_reports_each_metric(capsys):
    assert main(["zoo", "check", "cancer_mlp"]) == 0
    assert "cancer_mlp: ok test_accuracy" in capsys.readouterr().out


def test_a_chapter_that_changes_the_thread_count_does_not_change_it_for_the_next(tmp_path):
    path = tmp_path / "04_one_thread.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "import torch\ntorch.set_num_threads(1)"}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_chapter(path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


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
    assert chapters.main(["--quick", str(path)]) == 0
    assert "01_demo.ipynb" in capsys.readouterr().out


def _write_notebook(path, *sources):
    cells = [{"cell_type": "code", "source": source} for source in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return str(path)


def test_chapters_in_parallel_run_each_in_its_own_process_and_report_failures(tmp_path, capsys):
    good = _write_notebook(tmp_path / "01_good.ipynb",
                           "import os\nopen('good.txt', 'w').write(os.environ['XNN_LAB_QUICK'] + ' ' + str(os.getpid()))")
    bad = _write_notebook(tmp_path / "02_bad.ipynb", "raise RuntimeError('chapter two is broken')")
    assert chapters.main(["--jobs", "2", good, bad]) == 1
    captured = capsys.readouterr()
    assert "01_good.ipynb" in captured.out and "ok" in captured.out
    assert "02_bad.ipynb" in captured.out and "FAILED" in captured.out
    assert "chapter two is broken" in captured.err and "1 chapter(s) failed" in captured.err
    quick_flag, pid = (tmp_path / "good.txt").read_text().split()
    assert quick_flag == "0" and int(pid) != os.getpid()


def test_chapters_refuse_a_job_count_below_one(tmp_path, capsys):
    good = _write_notebook(tmp_path / "01_good.ipynb", "x = 1")
    assert chapters.main(["--jobs", "0", good]) == 2
    assert "--jobs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="jobs"):
        list(run_chapters([good], jobs=0))
