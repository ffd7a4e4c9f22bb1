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

Every kernel runs in a sandbox (:mod:`xnn_lab.grading.sandbox`): a private folder holding only its
copy of the notebook, no network, no view of the grader or of other kernels, and a copy of
``xnn_lab`` without the grader's modules and without the functions the chapter's questions forbid
(:attr:`Question.forbidden`). The first kernel of a submission lacks every function any question
of the chapter forbids; a question that fails there after the notebook called a function that only
*another* question forbids is checked again in a kernel that lacks only its own (the notebook run
again from the top), so the other questions' building blocks stay available. The grader's state
(references, trials, expected answers, results) never enters a sandbox; what a kernel returns is
read with size limits. Changed or deleted locked and grade cells (nbgrader's checksums) are
reported in ``tampered``; they do not change a score.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import torch

from xnn_lab.grading import questions as question_modules
from xnn_lab.grading.kernel import ForkServer, Kernel, Sandbox, _write_new
from xnn_lab.grading.question import Question
from xnn_lab.grading.sandbox import HOME, build_package_copy, load_answer, read_bounded, require_bwrap

MAX_NOTEBOOK_BYTES = 32 << 20
"""A submitted notebook larger than this is not graded (every question scores 0)."""
MAX_ANSWER_BYTES = 256 << 20
"""The largest answer file the grader reads back from a kernel."""


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
    """code cells that raised an exception (over all runs of the notebook since the last re-check)."""
    cell_messages: list[str] = field(default_factory=list)
    """``"cell N: what happened"`` for each cell that raised, timed out or stopped the kernel."""
    rechecked: list[str] = field(default_factory=list)
    """grade ids checked again in a kernel that lacks only their own forbidden functions (they failed
    after the notebook called what other questions forbid); the cell report is then that of the
    notebook's last run."""
    tampered: list[str] = field(default_factory=list)
    """``"GRADE_ID: changed"`` / ``"GRADE_ID: deleted"`` / ``"GRADE_ID: duplicated"`` for each locked or
    grade cell whose nbgrader checksum does not match (or that is gone, or whose id appears twice);
    informational, the score does not depend on it."""
    sandboxed: bool = True
    """whether the kernels ran in sandboxes (``False`` with ``--no-sandbox``)."""
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


def _forbidden_map(questions) -> dict[str, tuple[str, ...]]:
    """``{forbidden name: grade ids of the questions that forbid it}``."""
    found: dict[str, tuple[str, ...]] = {}
    for question in questions:
        for name in question.forbidden:
            found[name] = found.get(name, ()) + (question.grade_id,)
    return found


def _calls(name: str, forbidden: tuple[str, ...]) -> bool:
    """Whether the stub ``name`` that a kernel logged (a function, or ``Class.method``) is in ``forbidden``."""
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def tampered_cells(nb, questions) -> list[str]:
    """Locked and grade cells whose nbgrader checksum does not match, grade cells that are gone, repeated ids.

    A cell without a checksum (a solution notebook, which nbgrader has not released) is not checked.
    """
    from nbgrader.utils import compute_checksum

    found = []
    present = set()
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if not isinstance(meta, dict) or not meta.get("grade_id"):
            continue
        if meta["grade_id"] in present:
            found.append(f"{meta['grade_id']}: duplicated")
        present.add(meta["grade_id"])
        if not (meta.get("locked") or meta.get("grade")) or "checksum" not in meta:
            continue
        try:
            changed = compute_checksum(cell) != meta["checksum"]
        except Exception:  # metadata nbgrader cannot read (points that are not a number, ...)
            changed = True
        if changed:
            found.append(f"{meta['grade_id']}: changed")
    found += [f"{q.grade_id}_test: deleted" for q in questions if f"{q.grade_id}_test" not in present]
    return found


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


class _Run:
    """What the submissions of one grading run share: servers, the sandbox's folders, package copies."""

    def __init__(self, root: str, limits: Limits, workers: int, sandbox: bool, forbidden_all: dict):
        self.root, self.limits, self.sandboxed = Path(root), limits, sandbox
        self._lock = threading.Lock()
        self._copies: dict = {}
        self.sandbox = None
        if sandbox:
            self.sandbox = Sandbox(require_bwrap(), self.root)
            self.root.chmod(0o711)
            for name, mode in (("kernels", 0o711), ("packages", 0o755), ("private", 0o700)):
                (self.root / name).mkdir(mode=mode)
                (self.root / name).chmod(mode)
        self.servers: queue.Queue[ForkServer] = queue.Queue()
        for worker in range(workers):
            self.servers.put(ForkServer(limits.memory_bytes, self.sandbox, worker))
        for forbidden in forbidden_all:
            self.package_copy(forbidden)

    def package_copy(self, forbidden: dict) -> str | None:
        """The name of the package copy without ``forbidden`` (built once per run)."""
        if self.sandbox is None:
            return None
        key = tuple(sorted(forbidden.items()))
        with self._lock:
            if key not in self._copies:
                self._copies[key] = build_package_copy(self.root / "packages", dict(forbidden))
            return self._copies[key]

    def close(self) -> None:
        while not self.servers.empty():
            self.servers.get().close()


class _Submission:
    """One notebook being graded: its kernels, their re-runs and the checks."""

    def __init__(self, path: Path, chapter: str, prepared: list[_Prepared], seed: int, run: _Run,
                 fork_server: ForkServer):
        self.path, self.chapter, self.prepared, self.limits = path, chapter, prepared, run.limits
        self.run, self.fork_server = run, fork_server
        self.deadline = time.monotonic() + self.limits.notebook_timeout
        self.kernel: Kernel | None = None
        self.folder = ""
        self.forbidden = _forbidden_map(p.question for p in prepared)
        self.variant = run.package_copy(self.forbidden)
        self.calls: list[str] = []  # the stubs the current kernel logged, in order
        self._stub_calls: dict[str, list[str]] = {}  # per question: the stubs logged up to its check
        self._fresh_report = False
        self._log_seen = 0
        self.result = NotebookResult(str(path), chapter, 0, sum(p.question.points for p in prepared), [], seed,
                                     sandboxed=run.sandboxed)

    def grade(self) -> NotebookResult:
        start = time.perf_counter()
        try:
            self.notebook = read_bounded(self.path, MAX_NOTEBOOK_BYTES)
            nb = nbformat.reads(self.notebook.decode(), as_version=4)
            cells = _code_cells(nb)
        except Exception as err:  # not JSON, not a notebook, too big: nothing to run, every question scores 0
            cells, self.result.error = None, f"cannot read the notebook: {type(err).__name__}: {err}"[:300]
        else:
            try:
                self.result.tampered = tampered_cells(nb, [p.question for p in self.prepared])
            except Exception as err:  # the report is informational: never a reason not to grade
                self.result.tampered = [f"the checksums could not be verified: {type(err).__name__}"]
        try:
            messages = {}
            for item in self.prepared:
                messages[item.question.grade_id] = self._score(item, cells)
            # A question that failed after the notebook called what only other questions forbid: again,
            # in a kernel that lacks only its own forbidden functions.
            retry: dict[tuple, list[_Prepared]] = {}
            for item in self.prepared:
                q = item.question
                if cells is not None and messages[q.grade_id] and \
                        any(not _calls(name, q.forbidden) for name in self._calls_of(q.grade_id)):
                    retry.setdefault(tuple(sorted(q.forbidden)), []).append(item)
            for forbidden, items in retry.items():
                self._close_kernel()
                self.variant = self.run.package_copy(
                    {name: self.forbidden[name] for name in forbidden})
                self._fresh_report = True
                self.result.rechecked += [item.question.grade_id for item in items]
                for item in items:
                    messages[item.question.grade_id] = self._score(item, cells)
            for item in self.prepared:
                q = item.question
                message = messages[q.grade_id]
                self.result.questions.append(QuestionResult(q.grade_id, q.name, 0 if message else q.points,
                                                            q.points, message))
        finally:
            self._close_kernel()
        self.result.score = sum(q.points for q in self.result.questions)
        self.result.seconds = round(time.perf_counter() - start, 2)
        return self.result

    def _calls_of(self, grade_id: str) -> list[str]:
        return self._stub_calls.get(grade_id, [])

    def _score(self, item: _Prepared, cells) -> str:
        """The check of one question in the current kernel (started if needed); '' when it passes."""
        if cells is None:
            return self.result.error
        if time.monotonic() > self.deadline:
            return f"the submission used up its {self.limits.notebook_timeout:g} s"
        if self.kernel is None or not self.kernel.alive:
            self._run_notebook(cells)
        if self.kernel is None:
            return "the notebook could not be run"
        before = len(self.calls)
        message = self._check(item)
        self._read_calls()
        q = item.question
        own = [name for name in self.calls[before:] if _calls(name, q.forbidden)]
        if own:
            message = (f"called {own[0]}, which is xnn_lab's implementation of what this question asks you to "
                       f"write: an answer may not use it, directly or indirectly")
        # Every stub the kernel logged so far (notebook cells included) may explain a failure.
        self._stub_calls[q.grade_id] = list(self.calls)
        return message

    def _close_kernel(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        if self.folder and self.run.sandboxed:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = ""

    def _new_folder(self) -> str:
        """A fresh private folder for the next kernel, holding only its copy of the notebook."""
        uid = self.fork_server.sandbox_uid
        if self.run.sandboxed:
            folder = self.run.root / "kernels" / secrets.token_hex(6)
            folder.mkdir(mode=0o700)
            if uid is not None:
                os.chown(folder, uid, uid)
        else:
            folder = Path(tempfile.mkdtemp(dir=self.run.root))
        _write_new(str(folder / "submission.ipynb"), self.notebook, uid)
        return str(folder)

    def _read_calls(self) -> None:
        """The stubs the kernel logged since the last look (its log is in its folder: read with a limit)."""
        if not self.run.sandboxed:
            return
        try:
            data = read_bounded(os.path.join(self.folder, ".forbidden-calls"), 1 << 20)
        except ValueError:
            return
        lines = data.decode(errors="replace").splitlines()
        self.calls += [line[:200] for line in lines[self._log_seen:self._log_seen + 1000]]
        self._log_seen = len(lines)

    def _run_notebook(self, cells: list[tuple[int, str]]) -> None:
        """Run the code cells in a new kernel; restart without a cell that kills or hangs it."""
        if self.kernel is not None or self.folder:
            self.result.kernel_restarts += 1
        if self._fresh_report:  # a re-check's run: its cells, not the stubs' artefacts, are the report
            self.result.cell_errors = self.result.cell_timeouts = 0
            self.result.cell_messages = []
            self._fresh_report = False
        self._close_kernel()
        self.calls, self._log_seen = [], 0
        self.folder = self._new_folder()
        self.kernel = Kernel(self.fork_server, self.folder, variant=self.variant)
        for index, source in cells:
            if index in self.result.skipped_cells:
                continue
            left = self.deadline - time.monotonic()
            if left <= 0:
                return
            outcome = self.kernel.run(source, min(self.limits.cell_timeout, left))
            # A call of a stub is how this sandbox works, not the student's error (see the retry in grade).
            self.result.cell_errors += outcome.status == "error" and not outcome.error.startswith("NotAllowedError")
            if outcome.status != "ok":
                self.result.cell_messages.append(f"cell {index}: {outcome.error}"[:300])
            self.result.cell_timeouts += outcome.status in ("timeout", "hung")
            if outcome.status in ("dead", "hung"):
                self.result.skipped_cells.append(index)
                return self._run_notebook(cells)
        self._read_calls()

    def _check(self, item: _Prepared) -> str:
        """Call the student's object in the kernel and compare; the empty string when it passes."""
        q = item.question
        # Fresh random names (created exclusively): the submission cannot plant or predict them.
        inside = HOME if self.run.sandboxed else self.folder
        inputs = ""
        if item.payload is not None:
            name = f"inputs-{secrets.token_hex(8)}.pt"
            _write_new(os.path.join(self.folder, name), item.payload, self.fork_server.sandbox_uid)
            inputs = os.path.join(inside, name)
        answer_name = f"answer-{secrets.token_hex(8)}.pt"
        source = _CHECK.format(name=q.name, call=item.payload is not None, inputs=inputs,
                               output=os.path.join(inside, answer_name))
        outcome = self.kernel.run(source, min(self.limits.check_timeout, max(1.0, self.deadline - time.monotonic())))
        if outcome.status != "ok":
            return {"error": f"raised {outcome.error}", "timeout": outcome.error, "hung": outcome.error,
                    "dead": "the kernel died"}[outcome.status]
        try:
            answer = load_answer(os.path.join(self.folder, answer_name), MAX_ANSWER_BYTES)
        except Exception as err:
            return f"returned a value the grader does not accept ({type(err).__name__}: {str(err)[:80]}); return " \
                   "tensors, numbers, str, bool, None or tuples/lists/dicts of these"
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
            if isinstance(err, AssertionError):
                return f"wrong: {err}"[:300]
            return f"wrong: {type(err).__name__}: {err}"[:300]
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
          workers: int | None = None, sandbox: bool = True) -> list[NotebookResult]:
    """Grade submissions, several at once, each in its own kernel.

    Args:
        paths: notebooks, or folders whose ``*.ipynb`` are graded.
        chapter: the notebook stem of the chapter they answer (``"02_cam"``); by default read from
            each file name (see :func:`xnn_lab.grading.questions.chapter_of`).
        seed: seeds every question's trials (the same for all submissions of the run); a fresh
            random seed when ``None``, recorded in each result.
        limits: time and memory limits.
        workers: submissions graded at the same time; by default the number of CPUs (at most 4).
        sandbox: run every kernel in its bubblewrap sandbox (``False``: unisolated, for trusted
            notebooks only).

    Returns:
        one :class:`NotebookResult` per notebook, in the order of ``paths``.

    Raises:
        SandboxUnavailable: ``sandbox`` and no ``bwrap`` here.
    """
    notebooks = notebooks_in(paths)
    if not notebooks:
        raise ValueError(f"paths must name at least one notebook, got {list(map(str, paths))}")
    chapters = [chapter or question_modules.chapter_of(path) for path in notebooks]
    seed = secrets.randbelow(2**31) if seed is None else seed
    workers = workers or min(4, os.cpu_count() or 1)
    if sandbox:
        require_bwrap()
    with tempfile.TemporaryDirectory(prefix="xnn-grade-") as root:
        # The servers import their modules while the grader computes the expected answers.
        forbidden_all = [_forbidden_map(question_modules.load(name)) for name in dict.fromkeys(chapters)]
        run = _Run(root, limits, min(workers, len(notebooks)), sandbox, forbidden_all)
        try:
            prepared = {name: prepare(name, seed) for name in dict.fromkeys(chapters)}

            def one(index: int) -> NotebookResult:
                server = run.servers.get()
                try:
                    submission = _Submission(notebooks[index], chapters[index], prepared[chapters[index]], seed,
                                             run, server)
                    try:
                        return submission.grade()
                    except Exception as err:  # the grader's own failure: reported in the result, the others go on
                        result = submission.result
                        result.error = f"grading failed: {type(err).__name__}: {err}"[:300]
                        result.questions = [QuestionResult(p.question.grade_id, p.question.name, 0, p.question.points,
                                                           result.error) for p in submission.prepared]
                        result.score = 0
                        return result
                finally:
                    run.servers.put(server)

            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(one, range(len(notebooks))))
        finally:
            run.close()


def format_table(results: list[NotebookResult]) -> str:
    """A per-question table of each submission, then its total."""
    lines = []
    for result in results:
        notes = [f"{count} {what}" for count, what in ((result.cell_errors, "cells raised"),
                                                        (result.cell_timeouts, "cells timed out"),
                                                        (result.kernel_restarts, "kernel restarts")) if count]
        if not result.sandboxed:
            notes.append("NOT sandboxed")
        lines.append(f"{result.notebook} ({result.chapter}, seed {result.seed}, {result.seconds:.1f} s"
                     + "".join(f", {note}" for note in notes) + ")")
        if result.error:
            lines.append(f"  {result.error}")
        if result.tampered:
            lines.append(f"  tampered (nbgrader checksums): {', '.join(result.tampered)}")
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
