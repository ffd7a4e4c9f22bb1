"""The grading sandbox: bubblewrap around the kernels' fork server, and the package copies the kernels see.

Every submission's kernel runs in a sandbox (see :mod:`xnn_lab.grading._forkserver` for the
namespaces each kernel enters). This module builds what surrounds them:

- :func:`bwrap_command`: the fork server's bubblewrap command. Only the system's read-only folders,
  the Python installation, the package copies and the kernels' private folders are mounted; there
  is no network. When the grader runs as root, the server drops to an unprivileged uid of its own.
- :func:`build_package_copy`: the ``xnn_lab`` a kernel imports. It is a copy of the package's
  sources without ``xnn_lab.grading`` (the references, the questions and the grader; importing it
  fails with a message), without compiled files, and with the functions a question forbids
  replaced by a stub that raises :class:`NotAllowedError`. The original sources are never mounted,
  so nothing in the sandbox holds the forbidden implementations: not a guard the student could
  undo, an absence.
- :func:`read_bounded`: what a kernel leaves for the grader is read with size limits (no link, no
  FIFO, no file above the limit, no zip whose members expand above it).
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import xnn_lab

PACKAGE = Path(xnn_lab.__file__).resolve().parent
"""The package's folder; each kernel sees its own copy at this path."""
HOME = "/home/student"
"""The kernel's private folder, inside its sandbox."""
RUN_MOUNT = "/xnn-grader"
"""Where the fork server sees the run's folders (covered in every kernel)."""
KERNELS = f"{RUN_MOUNT}/kernels"
COPIES = f"{RUN_MOUNT}/packages"
SERVER = f"{RUN_MOUNT}/forkserver.py"
BASE_UID = 1_500_000_000
"""Fork server ``i`` of a run started by root runs as uid ``BASE_UID + i`` (no account, no rights)."""

#: The folders each sandbox gets fresh and empty: nothing of the host's shows through them.
_PRIVATE = ("/tmp", "/dev/shm")
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "fonts", "ssl", "ca-certificates",
        "passwd", "group", "nsswitch.conf", "hosts", "mime.types", "matplotlibrc")

_GRADING_STUB = '''"""Not available here: the grader's references, questions and code stay outside the sandboxes."""

raise ImportError("xnn_lab.grading is not available inside a graded submission's sandbox: the grader's "
                  "references and questions stay outside it")
'''

_NOT_ALLOWED = '''"""The stub that replaces, in a graded submission's sandbox, what a question asks for."""

import os


class NotAllowedError(RuntimeError):
    """Raised by a function of xnn_lab that implements what a graded question asks for."""


def not_allowed(name, questions):
    path = os.environ.get("XNN_LAB_FORBIDDEN_LOG")
    if path:
        try:
            with open(path, "a") as log:
                log.write(name + "\\n")
        except OSError:
            pass
    raise NotAllowedError(
        f"{name} is not available in this graded notebook: it is xnn_lab's implementation of what "
        f"question {questions} asks you to write, so an answer may not call it, directly or indirectly")
'''


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create the sandbox here (the message says why)."""


def bwrap_path() -> str | None:
    """The ``bwrap`` executable, or ``None``."""
    return shutil.which("bwrap")


def require_bwrap() -> str:
    """The ``bwrap`` executable; :class:`SandboxUnavailable` with the reason and the remedy if there is none."""
    path = bwrap_path()
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (the bwrap command) is not installed, and xnn-lab grade runs every submission in a "
            "bwrap sandbox so that it cannot read other submissions, reach the grader or outlive the run; "
            "install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), or pass "
            "--no-sandbox to grade without isolation (only for submissions you trust)")
    # Each sandbox and each kernel mounts a private, empty /tmp and /dev/shm over the host's, which
    # would hide a Python environment or an xnn_lab checkout that lives there.
    for where in (*_python_roots(), str(PACKAGE)):
        for private in _PRIVATE:
            if where == private or where.startswith(private + "/"):
                raise SandboxUnavailable(
                    f"the Python environment or xnn_lab at {where} lies under {private}, which every "
                    "sandbox replaces by a private, empty folder, so no kernel could start; install "
                    f"xnn_lab outside {' and '.join(_PRIVATE)} (or pass --no-sandbox, only for "
                    "submissions you trust)")
    return path


def _python_roots() -> list[str]:
    """The folders of the Python installation and environment (read-only in the sandbox)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(str(Path(sys.executable).resolve().parent.parent))
    return sorted(r for r in roots if os.path.isdir(r) and r != "/")


def bwrap_command(bwrap: str, run_root: Path, worker: int) -> list[str]:
    """The command that starts fork server ``worker`` of a run in its sandbox.

    ``run_root`` holds ``kernels/`` (each kernel's private folder, created by the grader) and
    ``packages/`` (the package copies); the server sees them under :data:`RUN_MOUNT`.
    """
    command = [bwrap, "--die-with-parent", "--new-session", "--unshare-net", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        command.append("--unshare-user")  # root drops to an unprivileged uid inside instead (see _forkserver)
    for path in _SYSTEM:
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    # Every folder above a mount point readable (bwrap would create them as 0700).
    ancestors = {str(a) for target in (*_python_roots(), str(PACKAGE), "/home/student", RUN_MOUNT + "/x")
                 for a in Path(target).parents if str(a) != "/"}
    for folder in sorted(ancestors, key=lambda a: a.count("/")):
        command += ["--perms", "0755", "--dir", folder]
    command += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC:
        command += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for root in _python_roots():
        command += ["--ro-bind", root, root]
    # The package's own folder is never mounted: each kernel mounts its copy over this empty folder.
    command += ["--tmpfs", str(PACKAGE), "--remount-ro", str(PACKAGE)] if _under_mounted(PACKAGE) else \
        ["--perms", "0755", "--dir", str(PACKAGE)]
    for other in _other_installs():  # any other installed xnn_lab in the mounted folders: covered, empty
        command += ["--tmpfs", other, "--remount-ro", other]
    # The host's /proc (no covered parts): each kernel may then mount a /proc of its own PID namespace.
    command += ["--bind", "/proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
                "--perms", "1777", "--tmpfs", "/tmp", "--perms", "0755", "--dir", "/home/student",
                "--ro-bind", str(run_root / "packages"), COPIES, "--bind", str(run_root / "kernels"), KERNELS,
                "--ro-bind", str(Path(__file__).with_name("_forkserver.py")), SERVER,
                "--chdir", "/", "--setenv", "HOME", "/tmp", "--setenv", "MPLCONFIGDIR", "/tmp/matplotlib",
                "--unsetenv", "PYTHONSTARTUP", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
                sys.executable, "-I", SERVER, "--sandbox"]
    if os.geteuid() == 0:
        command += ["--uid", str(BASE_UID + worker), "--gid", str(BASE_UID + worker)]
    return command


def _under_mounted(path: Path) -> bool:
    """Whether ``path`` lies inside a folder the sandbox mounts (an installed, not an editable, package)."""
    return any(str(path).startswith(root.rstrip("/") + "/") for root in (*_python_roots(), *_SYSTEM))


def _other_installs() -> list[str]:
    """Installed copies of ``xnn_lab`` (with their references) in the folders the sandbox mounts, but ``PACKAGE``."""
    found = set()
    for root in (*_python_roots(), "/usr", "/usr/local"):
        for pattern in ("lib/python3*/site-packages/xnn_lab", "lib/python3*/dist-packages/xnn_lab",
                        "lib/python3/dist-packages/xnn_lab", "lib64/python3*/site-packages/xnn_lab"):
            found.update(str(p.resolve()) for p in Path(root).glob(pattern) if p.is_dir())
    return sorted(f for f in found if f != str(PACKAGE) and _under_mounted(Path(f)))


def sandbox_uid(worker: int) -> int | None:
    """The uid that owns worker ``worker``'s kernels' folders, or ``None`` (the grader's own)."""
    return BASE_UID + worker if os.geteuid() == 0 else None


# ----------------------------------------------------------------------------- package copies


def build_package_copy(root: Path, forbidden: dict[str, tuple[str, ...]]) -> str:
    """Write a copy of ``xnn_lab`` under ``root/<name>/xnn_lab`` with ``forbidden`` stubbed out; return ``name``.

    Args:
        root: the run's package folder.
        forbidden: ``{"xnn_lab.cam.CAM": ("cam", ...)}``: each dotted name (a function, a class, or
            a class's method) replaced by a stub naming the questions that forbid it. A class's
            methods all become stubs.

    The same ``forbidden`` gives the same name (the copy is written once per run).
    """
    key = hashlib.sha256(repr(sorted(forbidden.items())).encode()).hexdigest()[:12]
    target = root / key
    if (target / "xnn_lab").exists():
        return key
    staging = root / f".{key}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    package = staging / "xnn_lab"
    by_file: dict[Path, dict[str, tuple[str, ...]]] = {}
    for name, questions in forbidden.items():
        path, qualname = _locate(name)
        by_file.setdefault(path, {})[qualname] = (name, questions)
    for source in sorted(PACKAGE.rglob("*")):
        relative = source.relative_to(PACKAGE)
        if relative.parts[0] == "grading" or "__pycache__" in relative.parts or source.suffix in (".pyc", ".pyo") \
                or source.is_symlink():
            continue
        destination = package / relative
        if source.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.resolve() in by_file:
            destination.write_text(_stubbed(source, by_file.pop(source.resolve())))
        else:
            shutil.copyfile(source, destination)
    if by_file:
        raise ValueError(f"forbidden names outside xnn_lab's sources: {sorted(by_file)}")
    (package / "grading").mkdir()
    (package / "grading" / "__init__.py").write_text(_GRADING_STUB)
    (package / "_not_allowed.py").write_text(_NOT_ALLOWED)
    for path in (staging, *staging.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    staging.rename(target)
    return key


def _locate(name: str) -> tuple[Path, str]:
    """The source file and qualified name of ``xnn_lab``'s object called ``name`` (dotted)."""
    import importlib
    import inspect

    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        break
    else:
        raise ValueError(f"forbidden: cannot import {name!r}")
    owner = obj
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        owner = getattr(obj, "__func__", None) or getattr(obj, "fget", None)
    if owner is None or not hasattr(owner, "__module__"):
        raise ValueError(f"forbidden: {name!r} is not a function, class or method")
    module = sys.modules[owner.__module__]
    path = Path(inspect.getsourcefile(module)).resolve()
    if PACKAGE not in path.parents:
        raise ValueError(f"forbidden: {name!r} is defined outside xnn_lab ({path})")
    return path, owner.__qualname__


def _stubbed(source: Path, targets: dict[str, tuple[str, tuple[str, ...]]]) -> str:
    """The module's source with each ``qualname`` in ``targets`` replaced by a stub (a class: all its methods)."""
    tree = ast.parse(source.read_text(), str(source))
    found = set()

    def stub(function, name: str, questions: tuple[str, ...]) -> None:
        call = ast.parse(f"from xnn_lab._not_allowed import not_allowed as _not_allowed\n"
                         f"_not_allowed({name!r}, {', '.join(repr(q) for q in questions)!r})").body
        function.body = call

    def visit(body, prefix: str) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            qualname = prefix + node.name
            if qualname in targets:
                found.add(qualname)
                name, questions = targets[qualname]
                if isinstance(node, ast.ClassDef):
                    for member in ast.walk(node):
                        if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            stub(member, f"{name}.{member.name}", questions)
                else:
                    stub(node, name, questions)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, qualname + ".")

    visit(tree.body, "")
    missing = set(targets) - found
    if missing:
        raise ValueError(f"forbidden: {sorted(missing)} not found in {source}")
    return ast.unparse(tree) + "\n"


# ----------------------------------------------------------------------------- reading what a kernel wrote


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; ``ValueError`` otherwise.

    The kernel owns the folder: the file may be a link (to the grader's files), a FIFO (that would
    block), a device or a huge file, or change while it is read. It is opened without following
    links and without blocking, checked to be a regular file, and read through the one descriptor.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ValueError(f"no readable file ({os.strerror(err.errno)})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, more than the limit of {limit}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"more than the limit of {limit} bytes")
    return data


def load_answer(path: str | Path, limit: int):
    """What ``torch.save`` wrote at ``path``, loaded with ``weights_only=True`` and within ``limit`` bytes.

    A torch file is a zip archive whose members ``torch.save`` stores uncompressed: a compressed
    member (which could expand past the limit) is refused, and the declared sizes must add up to at
    most ``limit``.
    """
    import torch

    data = read_bounded(path, limit)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        if any(m.compress_type != zipfile.ZIP_STORED for m in members):
            raise ValueError("it holds compressed members (torch.save stores them uncompressed)")
        if sum(m.file_size for m in members) > limit:
            raise ValueError(f"its members add up to more than the limit of {limit} bytes")
    return torch.load(io.BytesIO(data), weights_only=True)
