"""The autograder: run each submission in its own kernel, then score every question on fresh inputs.

For each notebook a fresh kernel (forked by :class:`~xnn_lab.grading.kernel.ForkServer`, with an
address-space limit) runs the code cells in order, each with a time limit; a cell that fails or
times out does not stop the run, as with nbgrader's ``allow_errors``. A cell that kills the kernel,
or hangs and ignores the interrupt, is marked skipped and the notebook is run again from the top
in a new kernel without it.

Then each :class:`~xnn_lab.grading.question.Question` is checked. The grader, in its own process,
draws the trials (``question.inputs(seed)``) and computes the expected answers with
``question.reference``; the trials go to the kernel in a file, a short snippet calls the student's
function on each and saves what it returns with ``torch.save``; the grader loads it with
``torch.load(weights_only=True)`` (plain tensors, numbers, strings and containers only) and
compares with ``question.compare``. What the submission prints, its visible test cells and any
monkeypatching it does (of ``xnn_lab``, ``torch`` or this module, in its kernel) play no part. A
question scores its points only if every trial passes; an error, a time-out, a missing name or a
result of another type scores 0. A kernel that dies or hangs during a check scores 0 for that
question, and the notebook is run again in a new kernel before the next question.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import secrets
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import torch

from xnn_lab.grading import questions as question_modules
from xnn_lab.grading.kernel import ForkServer, Kernel
from xnn_lab.grading.question import Question


@dataclass(frozen=True)
class Limits:
    """Time and memory limits of a grading run.

    Attributes:
        cell_timeout: seconds each notebook cell may run.
        check_timeout: seconds the student's code may take for all trials of one question.
        memory_bytes: the address-space limit of each kernel (``RLIMIT_AS``), ``None`` for none;
            it must leave room for torch itself (about 3.5 GiB of address space once imported).
        notebook_timeout: seconds for one submission in all; after that its remaining cells are
            skipped and its remaining questions score 0.
    """

    cell_timeout: float = 60
    check_timeout: float = 30
    memory_bytes: int | None = 6 << 30
    notebook_timeout: float = 600


@dataclass
class QuestionResult:
    """The score of one question of one submission."""

    grade_id: str
    name: str
    points: int
    max_points: int
    message: str = ""
    """empty when passed; otherwise why not."""


@dataclass
class NotebookResult:
    """The score of one submission."""

    notebook: str
    chapter: str
    score: int
    max_score: int
    questions: list[QuestionResult]
    seed: int
    seconds: float = 0.0
    cell_errors: int = 0
    """code cells that raised an exception (over all runs of the notebook)."""
    cell_messages: list[str] = field(default_factory=list)
    """``"cell N: what happened"`` for each cell that raised, timed out or stopped the kernel."""
    cell_timeouts: int = 0
    """code cells stopped at the time limit (over all runs of the notebook)."""
    skipped_cells: list[int] = field(default_factory=list)
    """indices (in the notebook) of cells that killed or hung the kernel and were left out of re-runs."""
    kernel_restarts: int = 0
    error: str = ""
    """why the notebook could not be graded at all (for example, not a notebook)."""

    def to_dict(self) -> dict:
        """The result as JSON-ready data."""
        return asdict(self)


@dataclass
class _Prepared:
    """A question with its trials (serialized for the kernel) and the expected answers."""

    question: Question
    payload: bytes | None
    expected: object


def prepare(chapter: str, seed: int) -> list[_Prepared]:
    """Draw every question's trials for ``seed`` and compute the expected answers, in this process."""
    prepared = []
    for question in question_modules.load(chapter):
        if question.inputs is None:
            prepared.append(_Prepared(question, None, question.reference()))
            continue
        trials = question.inputs(seed)
        buffer = io.BytesIO()
        torch.save(trials, buffer)  # before the reference runs, in case it changes its arguments
        expected = [question.reference(*copy.deepcopy(trial)) for trial in trials]
        prepared.append(_Prepared(question, buffer.getvalue(), expected))
    return prepared


# Run in the student's kernel. It only calls the student's object and saves what comes back; the
# comparison happens in the grader, so nothing the submission redefines can change a score.
_CHECK = """\
def _xnn_grade_check():
    import torch
    if {name!r} not in globals():
        raise NameError("the notebook does not define {name}")
    answer = globals()[{name!r}]
    if {call}:
        answer = [answer(*trial) for trial in torch.load({inputs!r}, weights_only=False)]
    torch.save(answer, {output!r})
_xnn_grade_check()
"""


def _code_cells(nb) -> list[tuple[int, str]]:
    return [(i, cell.source) for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and cell.source.strip()]


class _Submission:
    """One notebook being graded: its kernel, its re-runs and its checks."""

    def __init__(self, path: Path, chapter: str, prepared: list[_Prepared], seed: int, limits: Limits,
                 fork_server: ForkServer, workdir: str):
        self.path, self.chapter, self.prepared, self.limits = path, chapter, prepared, limits
        self.fork_server, self.workdir = fork_server, workdir
        self.deadline = time.monotonic() + limits.notebook_timeout
        self.kernel: Kernel | None = None
        self.result = NotebookResult(str(path), chapter, 0, sum(p.question.points for p in prepared), [], seed)

    def grade(self) -> NotebookResult:
        start = time.perf_counter()
        try:
            cells = _code_cells(nbformat.read(self.path, as_version=4))
        except Exception as err:  # not JSON, not a notebook: nothing to run, every question scores 0
            cells, self.result.error = None, f"cannot read the notebook: {type(err).__name__}: {err}"[:300]
        try:
            for item in self.prepared:
                if cells is None:
                    message = self.result.error
                elif time.monotonic() > self.deadline:
                    message = f"the submission used up its {self.limits.notebook_timeout:g} s"
                else:
                    if self.kernel is None or not self.kernel.alive:
                        self._run_notebook(cells)
                    message = self._check(item) if self.kernel is not None else "the notebook could not be run"
                q = item.question
                self.result.questions.append(QuestionResult(q.grade_id, q.name, 0 if message else q.points,
                                                            q.points, message))
        finally:
            if self.kernel is not None:
                self.kernel.close()
        self.result.score = sum(q.points for q in self.result.questions)
        self.result.seconds = round(time.perf_counter() - start, 2)
        return self.result

    def _run_notebook(self, cells: list[tuple[int, str]]) -> None:
        """Run the code cells in a new kernel; restart without a cell that kills or hangs it."""
        if self.kernel is not None:
            self.result.kernel_restarts += 1
        self.kernel = Kernel(self.fork_server, self.workdir)
        for index, source in cells:
            if index in self.result.skipped_cells:
                continue
            left = self.deadline - time.monotonic()
            if left <= 0:
                return
            outcome = self.kernel.run(source, min(self.limits.cell_timeout, left))
            self.result.cell_errors += outcome.status == "error"
            if outcome.status != "ok":
                self.result.cell_messages.append(f"cell {index}: {outcome.error}"[:300])
            self.result.cell_timeouts += outcome.status in ("timeout", "hung")
            if outcome.status in ("dead", "hung"):
                self.result.skipped_cells.append(index)
                return self._run_notebook(cells)

    def _check(self, item: _Prepared) -> str:
        """Call the student's object in the kernel and compare; the empty string when it passes."""
        q = item.question
        # Fresh random names (created exclusively): the submission cannot plant or predict them.
        os.makedirs(self.workdir, exist_ok=True)
        inputs = ""
        if item.payload is not None:
            with tempfile.NamedTemporaryFile(dir=self.workdir, suffix=".pt", delete=False) as handle:
                handle.write(item.payload)
                inputs = handle.name
        output = os.path.join(self.workdir, f"answer-{secrets.token_hex(8)}.pt")
        source = _CHECK.format(name=q.name, call=item.payload is not None, inputs=inputs, output=output)
        outcome = self.kernel.run(source, min(self.limits.check_timeout, max(1.0, self.deadline - time.monotonic())))
        if outcome.status != "ok":
            return {"error": f"raised {outcome.error}", "timeout": outcome.error, "hung": outcome.error,
                    "dead": "the kernel died"}[outcome.status]
        try:
            answer = torch.load(output, weights_only=True)
        except Exception as err:
            return f"returned a value the grader does not accept ({type(err).__name__}); return tensors, numbers, " \
                   "str, bool, None or tuples/lists/dicts of these"
        try:
            if item.payload is None:
                q.compare(answer, item.expected)
            else:
                for trial, (got, want) in enumerate(zip(answer, item.expected, strict=True), 1):
                    try:
                        q.compare(got, want)
                    except AssertionError as err:
                        raise AssertionError(f"trial {trial}: {err}") from None
        except Exception as err:
            return f"wrong: {err}"[:300] if isinstance(err, AssertionError) else f"wrong: {type(err).__name__}: {err}"[:300]
        return ""


def notebooks_in(paths) -> list[Path]:
    """The notebooks named by ``paths``: files as given, folders as their ``*.ipynb`` (sorted, not recursive)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.glob("*.ipynb") if p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise ValueError(f"paths must be notebooks or folders of notebooks; {str(path)!r} does not exist")
    return found


def grade(paths, *, chapter: str | None = None, seed: int | None = None, limits: Limits = Limits(),
          workers: int | None = None) -> list[NotebookResult]:
    """Grade submissions, several at once, each in its own kernel.

    Args:
        paths: notebooks, or folders whose ``*.ipynb`` are graded.
        chapter: the notebook stem of the chapter they answer (``"02_cam"``); by default read from
            each file name (see :func:`xnn_lab.grading.questions.chapter_of`).
        seed: seeds every question's trials (the same for all submissions of the run); a fresh
            random seed when ``None``, recorded in each result.
        limits: time and memory limits.
        workers: submissions graded at the same time; by default the number of CPUs (at most 4).

    Returns:
        one :class:`NotebookResult` per notebook, in the order of ``paths``.
    """
    notebooks = notebooks_in(paths)
    if not notebooks:
        raise ValueError(f"paths must name at least one notebook, got {list(map(str, paths))}")
    chapters = [chapter or question_modules.chapter_of(path) for path in notebooks]
    seed = secrets.randbelow(2**31) if seed is None else seed
    workers = workers or min(4, os.cpu_count() or 1)
    with ForkServer(limits.memory_bytes) as server, tempfile.TemporaryDirectory(prefix="xnn-grade-") as root:
        prepared = {name: prepare(name, seed) for name in dict.fromkeys(chapters)}

        def one(index: int) -> NotebookResult:
            submission = _Submission(notebooks[index], chapters[index], prepared[chapters[index]], seed, limits,
                                     server, tempfile.mkdtemp(dir=root))
            try:
                return submission.grade()
            except Exception as err:  # the grader's own failure: reported in the result, the others go on
                result = submission.result
                result.error = f"grading failed: {type(err).__name__}: {err}"[:300]
                result.questions = [QuestionResult(p.question.grade_id, p.question.name, 0, p.question.points,
                                                   result.error) for p in submission.prepared]
                result.score = 0
                return result

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(len(notebooks))))


def format_table(results: list[NotebookResult]) -> str:
    """A per-question table of each submission, then its total."""
    lines = []
    for result in results:
        notes = [f"{count} {what}" for count, what in ((result.cell_errors, "cells raised"),
                                                        (result.cell_timeouts, "cells timed out"),
                                                        (result.kernel_restarts, "kernel restarts")) if count]
        lines.append(f"{result.notebook} ({result.chapter}, seed {result.seed}, {result.seconds:.1f} s"
                     + "".join(f", {note}" for note in notes) + ")")
        if result.error:
            lines.append(f"  {result.error}")
        for q in result.questions:
            lines.append(f"  {q.grade_id:28s} {q.points:>3d}/{q.max_points:<3d} {q.message}".rstrip())
        lines.append(f"  {'total':28s} {result.score:>3d}/{result.max_score:<3d}")
    return "\n".join(lines)


def write_json(results: list[NotebookResult], path: str | Path) -> None:
    """Write a list with one object per notebook (``notebook``, ``score``, ``max_score``, ``questions``, ...)."""
    Path(path).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")


def write_csv(results: list[NotebookResult], path: str | Path) -> None:
    """Write one row per submission: notebook, chapter, score, max_score, then the points of each grade_id."""
    grade_ids = list(dict.fromkeys(q.grade_id for r in results for q in r.questions))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["notebook", "chapter", "score", "max_score", *grade_ids])
        for r in results:
            points = {q.grade_id: q.points for q in r.questions}
            writer.writerow([r.notebook, r.chapter, r.score, r.max_score, *(points.get(g, "") for g in grade_ids)])
