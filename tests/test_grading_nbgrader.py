"""nbgrader stays a working client of the notebooks: a fresh course releases exactly ``exercises/``
with ``nbgrader generate_assignment``, and ``nbgrader autograde`` gives a solution full marks and
the released exercise zero (chapter 4, the quickest to run; nbgrader runs the visible test cells,
not xnn-lab grade's sandboxed checks)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBGRADER = Path(sys.executable).with_name("nbgrader")
CHAPTER = "04_interpretable_by_design"


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    # nbgrader runs alembic, a command beside it, to create its database.
    env = dict(os.environ, XNN_LAB_QUICK="1", MPLBACKEND="Agg",
               PATH=str(NBGRADER.parent) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run([str(NBGRADER), *args], cwd=course, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    if not NBGRADER.exists():
        pytest.skip(f"nbgrader's command is not installed beside {sys.executable}")
    course = tmp_path_factory.mktemp("course")
    (course / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "xnn"\n')
    (course / "source" / "ps1").mkdir(parents=True)
    for notebook in sorted((ROOT / "solutions").glob("[0-9]*.ipynb")):
        shutil.copyfile(notebook, course / "source" / "ps1" / notebook.name)
    _nbgrader(course, "generate_assignment", "ps1", "--force")
    return course


def test_generate_assignment_releases_exactly_the_exercises(course):
    released = sorted((course / "release" / "ps1").glob("*.ipynb"))
    assert [p.name for p in released] == sorted(p.name for p in (ROOT / "solutions").glob("[0-9]*.ipynb"))
    for path in released:
        assert path.read_text() == (ROOT / "exercises" / path.name).read_text(), f"{path.name} differs"


def test_autograde_gives_solutions_full_marks_and_exercises_zero(course):
    # Only chapter 4 is submitted: the other notebooks of ps1 count as missing (0) for both students.
    for student, folder in (("alice", ROOT / "solutions"), ("bob", course / "release" / "ps1")):
        (course / "submitted" / student / "ps1").mkdir(parents=True)
        shutil.copyfile(folder / f"{CHAPTER}.ipynb", course / "submitted" / student / "ps1" / f"{CHAPTER}.ipynb")
    _nbgrader(course, "autograde", "ps1", "--force")
    _nbgrader(course, "export")
    rows = {row["student_id"]: row for row in csv.DictReader((course / "grades.csv").open())}
    assert float(rows["alice"]["raw_score"]) == 5.0
    assert float(rows["bob"]["raw_score"]) == 0.0
