"""The grading machinery: Question comparison, exercise generation, and the grader end to end.

One grading run (module-scoped) scores the four solution notebooks of chapters 1-4, their
generated exercises, a half-done submission and adversarial ones built here from the solutions by
editing cells: a crash (os._exit, a segfault), a memory hog, output that claims it passed, an answer
hard-coded to the visible example, and monkeypatching of xnn_lab, torch and the grader inside the
kernel. A second, short-timeout run scores infinite loops (one that ignores the interrupt).
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import nbformat
import pytest
import torch

from xnn_lab.grading import questions
from xnn_lab.grading.generate import exercise_text, generate
from xnn_lab.grading.grader import Limits, grade, write_csv, write_json
from xnn_lab.grading.question import Question, allclose_compare

ROOT = Path(__file__).resolve().parents[1]
MINE = ("01_black_boxes", "02_cam", "03_gradcam", "04_interpretable_by_design")


# ----------------------------------------------------------------------------- allclose_compare


def _fails(result, expected, **kwargs) -> str:
    try:
        allclose_compare(result, expected, **kwargs)
    except AssertionError as err:
        return str(err)
    return ""


def test_allclose_compare_accepts_equal_structures():
    expected = (torch.ones(2, 3), 3, 0.5, {"a": [True, None, "x"]})
    allclose_compare((torch.ones(2, 3) + 1e-8, 3, 0.5 + 1e-9, {"a": [True, None, "x"]}), expected)
    allclose_compare(torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64))
    allclose_compare(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0]))


@pytest.mark.parametrize("result, expected, words", [
    (torch.ones(2, 1), torch.ones(2), "shape"),
    (torch.ones(2, dtype=torch.long), torch.ones(2), "floating"),
    (torch.ones(2) * 1.01, torch.ones(2), "differ"),
    (torch.tensor([True, False]), torch.tensor([True, True]), "differ"),
    ([1.0, 2.0], torch.tensor([1.0, 2.0]), "tensor"),
    (1, True, "True"),
    (True, 1, "number"),
    (2.5, 2, "int"),
    (1.001, 1.0, "expected 1.0"),
    ((1, 2), [1, 2], "list"),
    ([1], [1, 2], "length"),
    ({"a": 1}, {"b": 1}, "keys"),
    ("no", "yes", "expected 'yes'"),
])
def test_allclose_compare_names_the_difference(result, expected, words):
    assert words in _fails(result, expected)


def test_allclose_compare_tolerance_is_adjustable():
    assert _fails(1.0005, 1.0)
    assert not _fails(1.0005, 1.0, rtol=1e-3)


# ----------------------------------------------------------------------------- questions and notebooks


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.mark.parametrize("chapter", questions.chapters())
def test_questions_match_the_solution_notebook(chapter):
    nb = nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4)
    cells = {_nbgrader(c).get("grade_id"): c for c in nb.cells if _nbgrader(c)}
    for question in questions.load(chapter):
        answer = cells[question.grade_id]
        assert _nbgrader(answer)["solution"] and not _nbgrader(answer)["grade"]
        assert "### BEGIN SOLUTION" in answer.source and "### END SOLUTION" in answer.source
        assert question.name in answer.source
        check = cells[f"{question.grade_id}_test"]
        assert _nbgrader(check)["grade"] and _nbgrader(check)["locked"]
        assert _nbgrader(check)["points"] == question.points


def _leaves(value):
    if isinstance(value, torch.nn.Module):
        return [repr(value)] + [v.tolist() for v in value.state_dict().values()]
    if isinstance(value, torch.Tensor):
        return [str(value.dtype), value.tolist()]
    if isinstance(value, (tuple, list)):
        return [_leaves(v) for v in value]
    return value


def _round_trip(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("question", [q for c in MINE for q in questions.load(c) if q.inputs is not None],
                         ids=lambda q: q.name)
def test_trials_are_fresh_and_the_reference_passes_them(question):
    trials = question.inputs(0)
    assert len(trials) >= 3
    assert _leaves(trials) == _leaves(question.inputs(0)), "trials must be reproducible per seed"
    assert _leaves(trials) != _leaves(question.inputs(1)), "trials must change with the seed"
    expected = [question.reference(*pickle.loads(pickle.dumps(t))) for t in trials]
    for trial, want in zip(trials, expected):
        question.compare(_round_trip(question.reference(*pickle.loads(pickle.dumps(trial)))), want)
    # One fixed answer (say, the visible example's) cannot pass every trial.
    assert any(_fails_compare(question, expected[0], other) for other in expected[1:])


def _fails_compare(question: Question, result, expected) -> bool:
    try:
        question.compare(result, expected)
    except AssertionError:
        return True
    return False


def test_chapter_of_reads_the_file_name():
    assert questions.chapter_of("subs/alice_02_cam.ipynb") == "02_cam"
    assert questions.chapter_of("04_interpretable_by_design-bob.ipynb") == "04_interpretable_by_design"
    with pytest.raises(ValueError, match="file name must contain"):
        questions.chapter_of("homework.ipynb")
    with pytest.raises(ValueError, match="chapter must be one of"):
        questions.load("99_nothing")


# ----------------------------------------------------------------------------- exercise generation


def test_exercises_are_in_sync_with_the_solutions(tmp_path):
    written = generate(ROOT / "solutions", tmp_path)
    assert {p.name for p in written} == {p.name for p in (ROOT / "solutions").glob("[0-9]*.ipynb")}
    for path in written:
        committed = ROOT / "exercises" / path.name
        assert committed.exists() and committed.read_text() == path.read_text(), \
            f"{committed} is out of date: run xnn-lab exercises --solutions solutions --exercises exercises"
    assert generate(ROOT / "solutions", tmp_path, check=True) == []


@pytest.mark.parametrize("chapter", MINE)
def test_exercises_keep_the_tests_and_clear_the_solutions(chapter):
    solution = nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4)
    exercise = nbformat.reads(exercise_text(ROOT / "solutions" / f"{chapter}.ipynb"), as_version=4)
    assert len(exercise.cells) == len(solution.cells)
    for before, after in zip(solution.cells, exercise.cells):
        meta = _nbgrader(before)
        if meta.get("solution"):
            assert "BEGIN SOLUTION" not in after.source and "raise NotImplementedError()" in after.source
        else:
            assert after.source == before.source
        assert "checksum" in _nbgrader(after) or not meta
        assert not after.get("outputs")


# ----------------------------------------------------------------------------- submissions built from solutions


def _solution(chapter: str):
    return nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4)


def _index(nb, grade_id: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if _nbgrader(c).get("grade_id") == grade_id)


def _edited(chapter: str, answers: dict[str, str] = {}, inserts: tuple[str, ...] = ()):
    """The solution with some answer cells replaced and code cells inserted after the imports."""
    nb = _solution(chapter)
    for grade_id, source in answers.items():
        nb.cells[_index(nb, grade_id)].source = source
    for source in reversed(inserts):
        nb.cells.insert(2, nbformat.v4.new_code_cell(source))
    return nb


def _half_done():
    """Chapter 1 with occlusion_map and ice solved, the other answers as in the exercise."""
    nb = _solution("01_black_boxes")
    exercise = nbformat.read(ROOT / "exercises" / "01_black_boxes.ipynb", as_version=4)
    for i, cell in enumerate(exercise.cells):
        if _nbgrader(cell).get("grade_id") in ("shapley_values", "shortcut_clean_accuracy"):
            nb.cells[i] = cell
    return nb


ADVERSARIAL = {
    # The kernel dies at a top-level cell, and a function segfaults when called.
    "crash_01_black_boxes": lambda: _edited("01_black_boxes", {
        "ice": "def ice(model, X, feature, grid, target):\n    import ctypes\n    return ctypes.string_at(0)\n",
    }, ("import os\nos._exit(1)",)),
    # A top-level cell and a function ask for more memory than the limit.
    "hog_01_black_boxes": lambda: _edited("01_black_boxes", {
        "occlusion_map": "def occlusion_map(model, x, target, patch, baseline):\n    chunks = []\n"
                         "    while True:\n        chunks.append(torch.ones(2**27))\n",
    }, ("hog = bytearray(64 * 2**30)",)),
    # Output that claims success, from a wrong function and from a cell of its own.
    "passed_01_black_boxes": lambda: _edited("01_black_boxes", {
        "ice": "def ice(model, X, feature, grid, target):\n    print('All tests passed! 6/6 points')\n"
               "    return torch.zeros(len(X), len(grid), dtype=X.dtype)\n",
    }, ('print("passed")\nprint({"score": 6, "max_score": 6, "passed": True})',)),
    # The visible example's answer, hard-coded: its test cell passes.
    "hardcoded_02_cam": lambda: _edited("02_cam", {
        "energy_pointing_game": "def energy_pointing_game(maps, masks):\n"
                                "    return torch.tensor([1.0 / 1.5, 0.0])\n",
    }),
    # A wrong answer, with xnn_lab's reference, torch's comparisons and the grader patched to agree.
    "monkeypatch_02_cam": lambda: _edited("02_cam", {
        "energy_pointing_game": "def energy_pointing_game(maps, masks):\n"
                                "    return torch.zeros(len(maps), dtype=maps.dtype)\n"
                                "import xnn_lab.metrics\nxnn_lab.metrics.energy_pointing_game = energy_pointing_game\n",
    }, ("import math\n"
        "torch.allclose = lambda *args, **kwargs: True\ntorch.equal = lambda *args, **kwargs: True\n"
        "math.isclose = lambda *args, **kwargs: True\n"
        "try:  # in the sandbox the grader's modules are not there to patch\n"
        "    import xnn_lab.grading.grader, xnn_lab.grading.question\n"
        "    xnn_lab.grading.question.allclose_compare = lambda *args, **kwargs: None\n"
        "    xnn_lab.grading.grader.allclose_compare = lambda *args, **kwargs: None\n"
        "    xnn_lab.grading.question.Question.compare = lambda *args, **kwargs: None\n"
        "except ImportError:\n    pass\n",)),
    # The kernel tries to kill the grader's fork server, its parent. In the sandbox the parent is outside
    # its PID namespace (getppid() is 0): the signal goes to its own process group, whose leader is the
    # namespace's init and ignores it. Unsandboxed, the grader would start another server.
    "killserver_02_cam": lambda: _edited("02_cam", inserts=(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",)),
}
# What each adversarial submission must lose; every other question keeps its points.
AFFECTED = {"crash_01_black_boxes": {"ice"}, "hog_01_black_boxes": {"occlusion_map"},
            "passed_01_black_boxes": {"ice"}, "hardcoded_02_cam": {"energy_pointing_game"},
            "monkeypatch_02_cam": {"energy_pointing_game"}, "killserver_02_cam": set()}
# A top-level loop, a function that loops, and one that loops and ignores the interrupt. Their test
# cells are emptied so that the loops run only where this test looks (and the test stays short).
HANGS = {"hang_04_interpretable_by_design": lambda: _edited("04_interpretable_by_design", {
    "local_linear_map": "def local_linear_map(model, x):\n    while True:\n        pass\n",
    "local_linear_map_test": "pass",
    "count_regions": "def count_regions(model, x):\n    import signal\n"
                     "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    while True:\n        pass\n",
    "count_regions_test": "pass",
}, ("while True:\n    pass",))}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the solutions, the exercises, a half-done and the adversarial submissions in one run."""
    folder = tmp_path_factory.mktemp("submissions")
    paths = [ROOT / "solutions" / f"{c}.ipynb" for c in MINE] + [ROOT / "exercises" / f"{c}.ipynb" for c in MINE]
    built = {"half_01_black_boxes": _half_done(), **{name: build() for name, build in ADVERSARIAL.items()}}
    for name, nb in built.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
        paths.append(folder / f"{name}.ipynb")
    (folder / "broken_02_cam.ipynb").write_text("{ this is not a notebook")
    paths.append(folder / "broken_02_cam.ipynb")
    # Graded first, so that the kernels of the others come from the fork server started after it.
    paths.insert(0, paths.pop(paths.index(folder / "killserver_02_cam.ipynb")))
    results = grade(paths, seed=7, workers=2)
    return {Path(r.notebook).parent.name + "/" + Path(r.notebook).stem: r for r in results}


@pytest.fixture(scope="module")
def hangs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hangs")
    for name, build in HANGS.items():
        nbformat.write(build(), folder / f"{name}.ipynb")
    return grade([folder], seed=7, workers=1, limits=Limits(cell_timeout=4, check_timeout=4))[0]


def _by_folder(graded, folder: str) -> dict:
    return {k.split("/")[1]: r for k, r in graded.items() if k.startswith(folder + "/")}


def _points(result) -> dict[str, int]:
    return {q.grade_id: q.points for q in result.questions}


def test_solutions_score_full_marks(graded):
    results = _by_folder(graded, "solutions")
    assert sorted(results) == sorted(MINE)
    for result in results.values():
        assert result.score == result.max_score > 0, result.questions
        assert all(not q.message for q in result.questions)
        assert result.cell_errors == 0 and result.kernel_restarts == 0


def test_exercises_score_zero(graded):
    results = _by_folder(graded, "exercises")
    assert sorted(results) == sorted(MINE)
    for result in results.values():
        assert result.score == 0 and result.max_score > 0
        assert all(q.message for q in result.questions)


def test_half_done_scores_exactly_what_it_solved(graded):
    (result,) = [r for k, r in graded.items() if k.endswith("/half_01_black_boxes")]
    assert _points(result) == {"occlusion_map": 2, "shapley_values": 0, "ice": 1, "shortcut_clean_accuracy": 0}
    assert result.score == 3 and result.max_score == 6


@pytest.mark.parametrize("name", sorted(AFFECTED))
def test_adversarial_submissions_lose_exactly_the_affected_questions(graded, name):
    (result,) = [r for k, r in graded.items() if k.endswith("/" + name)]
    for q in result.questions:
        if q.grade_id in AFFECTED[name]:
            assert q.points == 0 and q.message, q
        else:
            assert q.points == q.max_points, q
    assert result.score == result.max_score - sum(q.max_points for q in result.questions
                                                  if q.grade_id in AFFECTED[name])


def test_what_the_adversarial_submissions_did(graded):
    results = {k.split("/")[1]: r for k, r in graded.items()}
    crash = results["crash_01_black_boxes"]
    assert crash.kernel_restarts >= 3  # the top-level crash, the segfaulting test cell, the check
    assert len(crash.skipped_cells) == 2
    assert {q.grade_id: q.message for q in crash.questions}["ice"] == "the kernel died"
    hog = {q.grade_id: q.message for q in results["hog_01_black_boxes"].questions}["occlusion_map"]
    assert "allocate" in hog or "MemoryError" in hog, hog
    assert results["hog_01_black_boxes"].cell_errors >= 2  # the top-level hog and occlusion_map's test cell
    assert "wrong" in {q.grade_id: q.message for q in results["passed_01_black_boxes"].questions}["ice"]
    # The hard-coded and the monkeypatched answers pass their visible test cells, and still score 0.
    assert results["hardcoded_02_cam"].cell_errors == 0
    patched = ADVERSARIAL["monkeypatch_02_cam"]()
    energy_test = _index(patched, "energy_pointing_game_test")
    assert not any(m.startswith(f"cell {energy_test}:") for m in results["monkeypatch_02_cam"].cell_messages)
    broken = results["broken_02_cam"]
    assert broken.score == 0 and broken.max_score == 7 and "cannot read" in broken.error


def test_infinite_loops_time_out_and_score_zero(hangs):
    points = _points(hangs)
    assert points == {"activation_pattern": 1, "local_linear_map": 0, "count_regions": 0, "reachable_regions": 1}
    messages = {q.grade_id: q.message for q in hangs.questions}
    assert "interrupted" in messages["local_linear_map"]
    assert "ignored the interrupt" in messages["count_regions"]
    # The kernel was killed once (the hung check). reachable_regions, which the first kernel's copy of
    # xnn_lab cannot answer (it lacks the tree the other questions forbid), is checked again in a kernel
    # that has it; the cell report is that run's: the top-level loop timed out once more there.
    assert hangs.kernel_restarts == 1 and hangs.rechecked == ["reachable_regions"]
    assert hangs.cell_timeouts == 1 and hangs.cell_errors == 0


def test_json_and_csv_hold_one_entry_per_notebook(graded, tmp_path):
    results = list(graded.values())
    write_json(results, tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert isinstance(data, list) and len(data) == len(results)
    for entry, result in zip(data, results):
        assert entry["notebook"] == result.notebook and entry["score"] == result.score
        assert entry["max_score"] == result.max_score and entry["seed"] == 7
        assert {"grade_id", "name", "points", "max_points", "message"} <= set(entry["questions"][0])
    write_csv(results, tmp_path / "out.csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == len(results)
    assert [int(row["score"]) for row in rows] == [r.score for r in results]
    row = next(row for row in rows if row["notebook"].endswith("solutions/01_black_boxes.ipynb"))
    assert row["occlusion_map"] == "2" and row["score"] == row["max_score"] == "6"


def test_grade_command_writes_json_and_csv(tmp_path, capsys):
    from xnn_lab.grading.cli import main

    folder = tmp_path / "chapter4"
    folder.mkdir()
    for kind in ("solutions", "exercises"):
        (folder / f"{kind}_04_interpretable_by_design.ipynb").write_bytes(
            (ROOT / kind / "04_interpretable_by_design.ipynb").read_bytes())
    assert main(["grade", str(folder), "--json", str(tmp_path / "out.json"), "--csv", str(tmp_path / "out.csv"),
                 "--seed", "3"]) == 0
    table = capsys.readouterr().out
    assert "total" in table and "5/5" in table and "0/5" in table
    scores = {Path(e["notebook"]).name: e["score"] for e in json.loads((tmp_path / "out.json").read_text())}
    assert scores == {"exercises_04_interpretable_by_design.ipynb": 0, "solutions_04_interpretable_by_design.ipynb": 5}
    assert len(list(csv.DictReader((tmp_path / "out.csv").open()))) == 2


def test_grade_rejects_what_it_cannot_grade(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        grade([tmp_path / "missing.ipynb"])
    with pytest.raises(ValueError, match="at least one notebook"):
        grade([tmp_path])
    (tmp_path / "homework.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="file name must contain"):
        grade([tmp_path / "homework.ipynb"])
