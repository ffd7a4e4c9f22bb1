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
    with pytest.raises(SystemExit) as exit_:
        chapters.main(["--jobs", "0", good])
    assert exit_.value.code == 2 and "--jobs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="jobs"):
        list(run_chapters([good], jobs=0))


def _xnn_lab(*argv: str, env: dict | None = None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "xnn_lab.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_a_user_error_prints_one_line_and_exits_2_and_debug_shows_the_traceback():
    run = _xnn_lab("zoo", "check", "resnet9000")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("xnn-lab: error: unknown zoo model 'resnet9000'")
    run = _xnn_lab("zoo", "check", "resnet9000", "--debug")
    assert run.returncode != 0 and "Traceback" in run.stderr and "UsageError" in run.stderr


def test_help_of_every_subcommand_and_the_version_load_no_pytorch():
    probe = ("import sys, contextlib, io\nfrom xnn_lab.cli import main\n"
             "for argv in ([], ['zoo'], ['bench'], ['grade'], ['exercises']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "        main([*argv, '--help'])\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
             "    main(['--version'])\n"
             "print(out.getvalue().strip(), 'torch' in sys.modules)\n")
    import subprocess
    import sys

    import xnn_lab

    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"xnn-lab {xnn_lab.__version__} False"


def test_a_command_whose_extra_is_missing_names_the_extra(monkeypatch, capsys):
    import importlib.util

    from xnn_lab import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nbgrader" else real(name, *a))
    assert cli.main(["exercises", "--solutions", "solutions", "--exercises", "exercises", "--check"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'xnn_lab[grading]'" in err and "nbgrader" in err
