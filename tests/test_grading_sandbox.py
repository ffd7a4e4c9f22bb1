"""The grading sandbox against a hostile student, on real sandboxed kernels (bubblewrap).

One grading run (module-scoped, two workers) scores honest submissions side by side with attacks
built from the chapter 2 solution: answers that call the library's implementation (directly,
through another explainer, through the grader's own references, or after trying to undo the
sandbox's stubs), a submission that copies from the batch, one that attaches to the grader with
ptrace, one that leaves a double-forked ``setsid`` daemon behind to rewrite the reports, one that
tries to kill the grader and the other kernels, plants ``numpy.py`` where the next kernels
would import it and forks without end, one that answers with a huge, a compressed and a linked answer file and floods
its output, and a released exercise with changed and deleted locked cells. test_grading.py covers
the attacks the grader already stopped before (fake output, hard-coded answers, monkeypatching,
crashes, memory hogs, loops), now in sandboxes too.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from xnn_lab.grading.grader import grade, write_csv, write_json
from xnn_lab.grading.sandbox import load_answer

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "02_cam"
ESCAPEE = "xnn-escapee"


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _index(nb, grade_id: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if _nbgrader(c).get("grade_id") == grade_id)


def _edited(answers: dict[str, str] = {}, inserts: tuple[str, ...] = (), chapter: str = CHAPTER):
    """The solution with some answer cells replaced and code cells inserted after the imports."""
    nb = nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4)
    for grade_id, source in answers.items():
        nb.cells[_index(nb, grade_id)].source = source
    for source in reversed(inserts):
        nb.cells.insert(2, nbformat.v4.new_code_cell(source))
    return nb


# ----------------------------------------------------------------------------- the attacks

# 1. Answering by calling the library. cam: xnn_lab.cam.CAM itself; cam_from_weights: through a
# helper that runs Grad-CAM (CAM up to a scale on a GAP net); pointing_game: the grader's own
# reference; energy_pointing_game: after trying to undo the stubs (modules dropped and re-imported,
# reloaded, any other copy of the source searched for on the visible disk). cam_hits uses the
# library's CAM and pointing game legitimately (only the CAM and pointing-game questions forbid
# them): it keeps its point, in a kernel that lacks only what cam_hits forbids (nothing).
DELEGATE = _edited({
    "cam": "def cam(model, x, target):\n    from xnn_lab.cam import CAM\n    return CAM(model, 'features')(x, target)\n",
    "cam_from_weights": (
        "def _via_gradcam(activations, weight, target):\n"
        "    from collections import OrderedDict\n    from xnn_lab.cam import GradCAM\n"
        "    head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)\n"
        "    with torch.no_grad():\n        head.weight.copy_(weight)\n        head.bias.zero_()\n"
        "    model = nn.Sequential(OrderedDict(features=nn.Identity(), pool=nn.AdaptiveAvgPool2d(1),\n"
        "                                      flatten=nn.Flatten(), classifier=head))\n"
        "    return GradCAM(model, 'features')(activations, target) * activations.shape[2] * activations.shape[3]\n"
        "def cam_from_weights(activations, weight, target):\n    return _via_gradcam(activations, weight, target)\n"),
    "pointing_game": "def pointing_game(maps, masks):\n"
                     "    from xnn_lab.grading.questions.ch02_cam import pointing_game_reference\n"
                     "    return pointing_game_reference(maps, masks)\n",
    "energy_pointing_game": (
        "def energy_pointing_game(maps, masks):\n"
        "    import importlib, os, sys\n"
        "    for name in [m for m in sys.modules if m.startswith('xnn_lab')]:\n        del sys.modules[name]\n"
        "    import xnn_lab.metrics.ground_truth as gt\n    gt = importlib.reload(gt)\n"
        "    for top in ['/work', '/root', '/home', '/tmp', '/opt', '/srv', '/usr/lib', '/xnn-grader']:\n"
        "      for folder, _, files in os.walk(top):\n"
        "        for path in [os.path.join(folder, f) for f in files if f.startswith('ground_truth')]:\n"
        "            try:\n                source = open(path, errors='replace').read()\n"
        "            except OSError:\n                continue\n"
        "            if 'def energy_pointing_game' in source and 'not_allowed' not in source:\n"
        "                namespace = {}\n                exec(source, namespace)\n"
        "                return namespace['energy_pointing_game'](maps, masks)\n"
        "    return gt.energy_pointing_game(maps, masks)\n"),
    "cam_hits": "from xnn_lab.cam import CAM\nfrom xnn_lab.metrics import pointing_game as library_pointing_game\n"
                "shapes_cnn = zoo.load('shapes_cnn', device='cpu')\n"
                "shapes = make_shapes(64, split='test', seed=1)\n"
                "with torch.no_grad():\n    predicted = shapes_cnn(shapes.images).argmax(1)\n"
                "maps = CAM(shapes_cnn, 'features')(shapes.images, predicted)\n"
                "cam_hits = int(library_pointing_game(maps, shapes.masks).sum())\n",
    "cam_hits_test": "pass",
})


def _copycat(honest: Path):
    """2. Copying from the batch: the honest notebook by its path, any other notebook, trial or answer file."""
    search = (
        "import os, sys\n"
        "def _others():\n"
        "    found = []\n"
        f"    if os.path.exists({str(honest)!r}):\n        found.append({str(honest)!r})\n"
        f"    for top in [{str(honest.parent)!r}, '/xnn-grader', '/tmp', '/home', '/work', '/root', '/var', '/srv',\n"
        "                '/opt', '/mnt']:\n"
        "        for folder, _, files in os.walk(top):\n"
        "            # Its own folder, and the Python installation (the read-only system, no part of the batch).\n"
        "            if os.path.abspath(folder) == os.getcwd() or folder.startswith((sys.prefix, sys.base_prefix)):\n"
        "                continue\n"
        "            found += [os.path.join(folder, f) for f in files if f.endswith(('.ipynb', '.pt'))]\n"
        "    return found\n"
        "raise RuntimeError('SEEN env=%r home=%r root=%r others=%r' % ('XNN_TEST_SECRET' in os.environ, "
        "sorted(os.listdir('.')), sorted(os.listdir('/')), _others()))")
    return _edited({
        "pointing_game": (
            "def pointing_game(maps, masks):\n"
            "    import json\n"
            "    for path in _others():\n"
            "        if path.endswith('.ipynb'):\n"
            "            for cell in json.load(open(path))['cells']:\n"
            "                if cell['source'] and 'def pointing_game' in ''.join(cell['source']):\n"
            "                    namespace = {'torch': torch}\n                    exec(''.join(cell['source']), namespace)\n"
            "                    return namespace['pointing_game'](maps, masks)\n"
            "    raise FileNotFoundError('nothing to copy from')\n"),
    }, (search,))


def _ptrace(grader_pid: int):
    """3. Taking over the grader: attach with ptrace (and open its memory), then kill it if that worked."""
    return _edited(inserts=(
        "import ctypes, os, signal\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"attach = libc.ptrace(16, {grader_pid}, None, None)  # PTRACE_ATTACH\nerrno = ctypes.get_errno()\n"
        f"try:\n    open('/proc/{grader_pid}/mem', 'rb').close()\n    mem = 'opened'\n"
        "except OSError as err:\n    mem = type(err).__name__\n"
        f"if attach == 0:\n    os.kill({grader_pid}, signal.SIGKILL)\n"
        "raise RuntimeError(f'PTRACE attach={attach} errno={errno} mem={mem}')",))


def _daemon(reports: list[Path]):
    """4. Outliving the grader: a double-forked setsid process that waits, then rewrites the reports."""
    return _edited(inserts=(
        "import ctypes, os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        ctypes.CDLL(None).prctl(15, {ESCAPEE.encode()!r}, 0, 0, 0)  # PR_SET_NAME\n"
        "        for _ in range(600):\n            time.sleep(0.1)\n"
        f"            for path in {[str(p) for p in reports]!r}:\n"
        "                try:\n                    open(path, 'w').write('[]')\n                except OSError:\n"
        "                    pass\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)",))


def _wrecker(grader_pid: int, grader_cwd: str):
    """5. Wrecking the run: kill the grader and every kernel in sight; plant numpy.py for later kernels."""
    return _edited(inserts=(
        "import os, signal, sys\nkilled = []\n"
        f"for pid in [{grader_pid}, -1] + [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        killed.append(pid)\n    except OSError:\n        pass\n"
        f"for folder in ['.', '/tmp', {grader_cwd!r}, '/xnn-grader/kernels', '/xnn-grader', sys.path[0] or '.',\n"
        "               os.path.dirname(os.__file__)]:\n"
        "    for name in ('numpy.py', 'torch.py', 'ipykernel.py'):\n"
        "        try:\n            open(os.path.join(folder, name), 'w').write('raise SystemExit(\"planted\")')\n"
        "        except OSError:\n            pass\n"
        "print(killed)",
        # A fork bomb: it stops at the sandbox's process limit, and its children die with the kernel.
        "import os, time\nforked, error = 0, None\ntry:\n    for _ in range(4000):\n"
        "        if os.fork() == 0:\n            time.sleep(2)\n            os._exit(0)\n        forked += 1\n"
        "except OSError as err:\n    error = err.errno\nraise RuntimeError(f'FORKED {forked} {error}')",
        "import time\ntime.sleep(3)\nwhile True:\n    try:\n        if os.waitpid(-1, 0)[0] <= 0:\n            break\n"
        "    except ChildProcessError:\n        break"))


def _oversized(secret: Path):
    """Huge, compressed and linked answers, and a flood of output: read with limits, or refused."""
    return _edited({
        "pointing_game": "def pointing_game(maps, masks):\n    return torch.zeros(2**25 + 1, dtype=torch.float64)\n",
        "energy_pointing_game": (
            "def energy_pointing_game(maps, masks):\n"
            "    import os, zipfile\n    calls = []\n"
            "    def save(obj, path, *args, **kwargs):\n"
            "        calls.append(path)\n"
            "        if len(calls) == 1:  # a zip bomb: 1 GiB of zeros in a few MiB\n"
            "            with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:\n"
            "                with archive.open('archive/data.pkl', 'w', force_zip64=True) as member:\n"
            "                    for _ in range(64):\n                        member.write(bytes(16 << 20))\n"
            f"        else:  # a link to a file of the grader's\n            os.symlink({str(secret)!r}, path)\n"
            "    torch.save = save\n"
            "    return torch.zeros(len(maps), dtype=maps.dtype)\n"),
        # Their visible tests would call them before the grader's checks do.
        "pointing_game_test": "pass", "energy_pointing_game_test": "pass",
    }, ("for _ in range(40):\n    print('x' * (4 << 20))\nprint('y' * (64 << 20))",))


def _tampered():
    """A released exercise, answered, with a locked markdown cell and a grade cell changed, a grade cell
    deleted and one repeated."""
    chapter = "04_interpretable_by_design"
    nb = nbformat.read(ROOT / "exercises" / f"{chapter}.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4)
    for i, cell in enumerate(nb.cells):
        if _nbgrader(cell).get("solution"):
            cell.source = solution.cells[i].source
    nb.cells[_index(nb, "read_only_1")].source += "\n\n(edited)"
    nb.cells[_index(nb, "activation_pattern_test")].source = "pass"
    del nb.cells[_index(nb, "count_regions_test")]
    nb.cells.append(copy.deepcopy(nb.cells[_index(nb, "local_linear_map_test")]))
    return nb


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Grade the attacks and the honest submissions in one run with two workers; write the reports."""
    assert shutil.which("bwrap"), "these tests need bubblewrap: apt-get install bubblewrap"
    folder = tmp_path_factory.mktemp("batch")
    reports = [folder / "grades.json", folder / "grades.csv"]
    secret = folder / "secret.txt"
    secret.write_text("the grader's own file\n")
    honest = folder / f"honest_{CHAPTER}.ipynb"
    notebooks = {
        # Attacks first: the honest notebooks run beside them and after them.
        f"wrecker_{CHAPTER}": _wrecker(os.getpid(), os.getcwd()),
        f"daemon_{CHAPTER}": _daemon(reports),
        f"ptrace_{CHAPTER}": _ptrace(os.getpid()),
        f"copycat_{CHAPTER}": _copycat(honest),
        f"delegate_{CHAPTER}": DELEGATE,
        f"oversized_{CHAPTER}": _oversized(secret),
        f"honest_{CHAPTER}": _edited(),
        "tampered_04_interpretable_by_design": _tampered(),
        f"honest2_{CHAPTER}": _edited(),
        "exercise_04_interpretable_by_design": nbformat.read(ROOT / "exercises" / "04_interpretable_by_design.ipynb",
                                                              as_version=4),
    }
    paths = []
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
        paths.append(folder / f"{name}.ipynb")
    os.environ["XNN_TEST_SECRET"] = "a token of the grader's"  # must not reach any kernel
    started = time.monotonic()
    try:
        results = grade(paths, seed=11, workers=2)
    finally:
        del os.environ["XNN_TEST_SECRET"]
    seconds = time.monotonic() - started
    write_json(results, reports[0])
    write_csv(results, reports[1])
    written = {path: path.read_text() for path in reports}
    return {"results": {Path(r.notebook).stem: r for r in results}, "reports": written, "secret": secret,
            "seconds": seconds, "folder": folder}


def _result(run, name: str):
    return run["results"][name]


def _messages(result) -> dict[str, str]:
    return {q.grade_id: q.message for q in result.questions}


def _points(result) -> dict[str, int]:
    return {q.grade_id: q.points for q in result.questions}


def _full(result) -> bool:
    return result.score == result.max_score > 0


def test_honest_submissions_keep_full_marks_beside_the_attacks(run):
    for name in (f"honest_{CHAPTER}", f"honest2_{CHAPTER}"):
        result = _result(run, name)
        assert _full(result), result.questions
        assert result.kernel_restarts == 0 and result.cell_errors == 0, result.cell_messages
        assert result.sandboxed and result.tampered == [] and not result.error


def test_calling_the_library_scores_zero_and_names_the_function(run):
    result = _result(run, f"delegate_{CHAPTER}")
    points, messages = _points(result), _messages(result)
    assert points == {"cam_from_weights": 0, "cam": 0, "pointing_game": 0, "energy_pointing_game": 0, "cam_hits": 1}
    assert "called xnn_lab.cam.CAM" in messages["cam"] and "not" in messages["cam"], messages["cam"]
    # Indirectly: the answer's helper calls Grad-CAM, whose base class the CAM questions forbid too.
    assert "called xnn_lab.cam." in messages["cam_from_weights"], messages["cam_from_weights"]
    assert "GradCAM" in messages["cam_from_weights"] or "BaseCAM" in messages["cam_from_weights"]
    # The grader's references are not in the sandbox at all.
    assert "xnn_lab.grading is not available" in messages["pointing_game"], messages["pointing_game"]
    # Re-imported, reloaded, searched for on disk: the implementation is not there to be found.
    assert "called xnn_lab.metrics.energy_pointing_game" in messages["energy_pointing_game"], \
        messages["energy_pointing_game"]


def test_copying_from_the_batch_finds_nothing(run):
    result = _result(run, f"copycat_{CHAPTER}")
    assert _points(result)["pointing_game"] == 0
    assert "nothing to copy from" in _messages(result)["pointing_game"]
    (seen,) = [m for m in result.cell_messages if "SEEN" in m]
    # Its folder holds its own notebook and the kernel's files; no other notebook, trial or answer is visible.
    assert "'submission.ipynb'" in seen and "others=[]" in seen and "env=False" in seen, seen
    assert "honest" not in seen and "'xnn-grader'" in seen  # the grader's folder exists, covered


def _ptrace_permitted() -> tuple[bool, str]:
    """Whether a process may PTRACE_ATTACH to another of the same user here (outside any sandbox)."""
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        probe = subprocess.run([sys.executable, "-c", (
            "import ctypes, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"r = libc.ptrace(16, {target.pid}, None, None)\n"
            "print(r, ctypes.get_errno())\n"
            f"libc.ptrace(17, {target.pid}, None, None) if r == 0 else None")],
            capture_output=True, text=True, timeout=30)
        attach, errno = probe.stdout.split()
        return attach == "0", f"PTRACE_ATTACH to a process of the same user fails here (errno {errno})"
    finally:
        target.kill()
        target.wait()


def test_ptrace_cannot_reach_the_grader(run):
    permitted, why = _ptrace_permitted()
    if not permitted:
        pytest.skip(why)
    result = _result(run, f"ptrace_{CHAPTER}")
    (attempt,) = [m for m in result.cell_messages if "PTRACE" in m]
    # The grader is not in the kernel's PID namespace: no such process (ESRCH), no /proc entry.
    assert "attach=-1 errno=3" in attempt and "mem=FileNotFoundError" in attempt, attempt
    assert _full(result), result.questions  # the grader lived to score it


def test_nothing_of_a_submission_outlives_the_grader(run):
    assert _escapees() == []
    time.sleep(1.5)  # the daemon meant to rewrite the reports after 0.1 s steps
    for path, text in run["reports"].items():
        assert path.read_text() == text
    assert _full(_result(run, f"daemon_{CHAPTER}"))


def test_wrecking_the_run_fails(run):
    from xnn_lab.grading._forkserver import PROCESSES

    result = _result(run, f"wrecker_{CHAPTER}")
    assert _full(result), (result.questions, result.cell_messages)  # it could not even kill itself
    (bomb,) = [m for m in result.cell_messages if "FORKED" in m]
    forked, errno = bomb.split("FORKED ")[1].split()
    assert int(forked) < PROCESSES and errno == "11", bomb  # EAGAIN at the limit
    assert not (Path(os.getcwd()) / "numpy.py").exists() and not (Path(os.getcwd()) / "torch.py").exists()
    # Every notebook of the run has a complete result: the grader lived, every later kernel started.
    results = run["results"]
    assert len(results) == 10 and all(r.questions and not r.error for r in results.values())
    assert json.loads(next(t for p, t in run["reports"].items() if p.suffix == ".json"))[0]["notebook"]


def test_oversized_answers_and_output_are_refused(run):
    result = _result(run, f"oversized_{CHAPTER}")
    messages = _messages(result)
    for grade_id in ("pointing_game", "energy_pointing_game", "cam_hits"):
        assert _points(result)[grade_id] == 0 and "does not accept" in messages[grade_id], messages
    assert "limit" in messages["pointing_game"]
    assert "compressed" in messages["energy_pointing_game"]
    assert "no readable file" in messages["cam_hits"] or "not a regular file" in messages["cam_hits"]
    assert _points(result)["cam"] == 2 and _points(result)["cam_from_weights"] == 2
    assert run["secret"].read_text() == "the grader's own file\n"


def test_changed_and_deleted_locked_cells_are_reported(run):
    tampered = _result(run, "tampered_04_interpretable_by_design")
    assert sorted(tampered.tampered) == ["activation_pattern_test: changed", "count_regions_test: deleted",
                                         "local_linear_map_test: duplicated", "read_only_1: changed"]
    assert _full(tampered)  # the score comes from the grader's own checks
    exercise = _result(run, "exercise_04_interpretable_by_design")
    assert exercise.tampered == [] and exercise.score == 0


def test_load_answer_limits(tmp_path):
    import torch

    path = tmp_path / "answer.pt"
    torch.save([torch.ones(3), 2, "x"], path)
    assert load_answer(path, 1 << 20)[1:] == [2, "x"]
    with pytest.raises(ValueError, match="limit"):
        load_answer(path, 100)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="regular file"):
        load_answer(fifo, 1 << 20)  # returns at once: a FIFO would block a plain open()
    link = tmp_path / "link.pt"
    link.symlink_to(path)
    with pytest.raises(ValueError, match="no readable file"):
        load_answer(link, 1 << 20)


# ----------------------------------------------------------------------------- without bwrap


def test_grade_refuses_without_bwrap_and_says_why(tmp_path, monkeypatch):
    from xnn_lab._core.errors import UsageError
    from xnn_lab.grading.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    notebook = tmp_path / "alice_04_interpretable_by_design.ipynb"
    notebook.write_bytes((ROOT / "exercises" / "04_interpretable_by_design.ipynb").read_bytes())
    with pytest.raises(UsageError, match="bubblewrap") as caught:
        main(["grade", str(notebook)])
    assert "apt-get install bubblewrap" in str(caught.value) and "--no-sandbox" in str(caught.value)


@pytest.mark.parametrize("where", ["/tmp/course/.venv", "/dev/shm/env"])
def test_grade_refuses_an_environment_the_sandbox_would_hide(tmp_path, monkeypatch, where):
    """Every sandbox mounts an empty /tmp and /dev/shm: an environment there could not start a kernel."""
    from xnn_lab._core.errors import UsageError
    from xnn_lab.grading import sandbox
    from xnn_lab.grading.cli import main

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr(sandbox, "_python_roots", lambda: ["/usr", where])
    notebook = tmp_path / "alice_04_interpretable_by_design.ipynb"
    notebook.write_bytes((ROOT / "exercises" / "04_interpretable_by_design.ipynb").read_bytes())
    with pytest.raises(UsageError, match=where) as caught:
        main(["grade", str(notebook)])
    assert "--no-sandbox" in str(caught.value) and "private, empty folder" in str(caught.value)


def test_no_sandbox_grades_and_warns(tmp_path, monkeypatch, capsys):
    from xnn_lab.grading.cli import main

    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.path.dirname(sys.executable))
    notebook = tmp_path / "alice_04_interpretable_by_design.ipynb"
    notebook.write_bytes((ROOT / "solutions" / "04_interpretable_by_design.ipynb").read_bytes())
    assert main(["grade", str(notebook), "--no-sandbox", "--seed", "1", "--json", str(tmp_path / "out.json")]) == 0
    captured = capsys.readouterr()
    assert "NOT isolated" in captured.err and "5/5" in captured.out
    assert json.loads((tmp_path / "out.json").read_text())[0]["sandboxed"] is False


def test_grade_command_turns_user_errors_into_usage_errors(tmp_path):
    from xnn_lab._core.errors import UsageError
    from xnn_lab.grading.cli import main

    with pytest.raises(UsageError, match="does not exist"):
        main(["grade", str(tmp_path / "missing.ipynb")])
    with pytest.raises(UsageError, match="--workers"):
        main(["grade", str(tmp_path), "--workers", "0"])


def test_a_killed_grader_takes_every_sandbox_with_it(tmp_path):
    """The grader itself killed (SIGKILL, no cleanup) while a submission's daemon runs: the daemon dies too."""
    notebook = tmp_path / f"daemon_{CHAPTER}.ipynb"
    nb = _daemon([tmp_path / "never.json"])
    nb.cells.insert(3, nbformat.v4.new_code_cell("import time\ntime.sleep(60)"))
    nbformat.write(nb, notebook)
    grader = subprocess.Popen([sys.executable, "-c", "import sys\nfrom xnn_lab.grading.grader import grade\n"
                               "grade(sys.argv[1:], seed=1, workers=1)", str(notebook)],
                              env=dict(os.environ, XNN_LAB_QUICK="1"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _escapees() and time.monotonic() < deadline and grader.poll() is None:
            time.sleep(0.2)
        assert _escapees(), "the daemon never started"
    finally:
        grader.send_signal(signal.SIGKILL)
        grader.wait()
    deadline = time.monotonic() + 10
    while _escapees() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _escapees() == []
    assert not (tmp_path / "never.json").exists()


def _escapees() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry / "comm").read_text().strip() == ESCAPEE:
                found.append(entry.name)
        except OSError:
            continue
    return found
