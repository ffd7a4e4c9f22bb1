"""The grader's kernel factory: one process imports the heavy modules once, then forks a kernel per request.

Starting a fresh Python kernel costs seconds of CPU before the first cell runs (``import torch``
alone takes about 2 s on a small machine); grading a folder of submissions would spend most of its
time there. This server imports torch, numpy, matplotlib, captum, scikit-learn and ipykernel once;
each request forks a child that becomes an IPython kernel.

This file imports nothing of ``xnn_lab`` (the server runs it as a plain script inside the sandbox,
where the grader's modules do not exist), and no module of ``xnn_lab`` is loaded before a fork:
each kernel imports the package from the copy that its sandbox mounts (see
:mod:`xnn_lab.grading.sandbox`), so the implementations a question forbids are not in its memory.

Sandboxed (``--sandbox``; the grader starts the server inside bubblewrap, with no network, a
read-only view of the system and no capabilities), each forked child enters namespaces of its own
before any submitted code runs: a user namespace (uid 1000 inside, the server's unprivileged uid
outside), a PID namespace whose init is the kernel (so every process the submission starts dies
with it, and it sees no other process: not the grader, not another kernel), a mount namespace (its
private folder at ``/home/student``, its copy of ``xnn_lab`` at the package's path, fresh ``/proc``,
``/tmp`` and ``/dev/shm``, the grader's folders covered), and network, IPC and UTS namespaces of its
own. Then it drops every capability and sets ``no_new_privs``; the mounts it was given are locked
in place. Without ``--sandbox`` the child only starts a new session (the ``--no-sandbox`` mode).

Protocol: run as ``python _forkserver.py [--sandbox] [--uid N --gid N]``; it prints ``ready``, then
reads one JSON request per line on stdin (``connection_file``, ``cwd``, ``memory_bytes``, and when
sandboxed ``folder``, ``variant``, ``package``, ``hide``) and answers each with the kernel's pid (in
the grader's PID namespace) on its own line, or ``error: ...``. When stdin closes (the grader
finished or died) it kills every kernel it forked, and exits.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import resource
import signal
import sys

# Imported before forking, so every kernel starts with them loaded. Nothing here may start a
# thread (a forked child would inherit a broken copy of it): no torch op runs in the server.
# No module of xnn_lab: each kernel loads it from its own sandbox's copy.
PRELOAD = (
    "numpy", "torch", "torch.nn.functional", "torch.func", "matplotlib", "matplotlib.pyplot", "captum.attr",
    "sklearn.datasets", "ipykernel.kernelapp", "ipykernel.ipkernel",
)

HOME = "/home/student"
SANDBOX_UID = 1000
FILE_BYTES = 1 << 30
"""The largest file a sandboxed kernel may write (RLIMIT_FSIZE)."""
PROCESSES = 256
"""The most processes and threads a sandboxed kernel may have (RLIMIT_NPROC)."""

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sandbox: {what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source} on {target}")


def _bind(source: str, target: str, *, writable: bool) -> None:
    _mount(source, target, None, _MS_BIND | _MS_REC)
    flags = _MS_BIND | _MS_REMOUNT | _MS_NOSUID | _MS_NODEV | (0 if writable else _MS_RDONLY)
    _mount(None, target, None, flags)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """No capability in any set, none to regain (bounding set emptied, no_new_privs)."""
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last
            break
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _enter_sandbox(request: dict) -> int:
    """In the forked child: new namespaces; returns in the kernel (PID 1 of its namespace), never in between.

    The child that called unshare() stays as the kernel's parent: it waits for the kernel and dies with
    the server (and the kernel with it, SIGKILL on parent death), so no sandbox outlives the grader.
    """
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC
                         | _CLONE_NEWUTS), "unshare")
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"{SANDBOX_UID} {uid} 1")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"{SANDBOX_UID} {gid} 1")
    alive_r, alive_w = os.pipe()
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid:  # the kernel's parent, outside its PID namespace: relays the kernel's status, then waits
        os.close(alive_r)
        os.close(status_w)
        with os.fdopen(status_r, "rb") as status:
            line = status.readline().decode(errors="replace").strip()
        answer = f"{pid}" if line == "ok" else (line or "error: the sandbox failed")
        os.write(request["_report"], (answer + "\n").encode())
        os.close(request["_report"])
        try:
            while True:
                try:
                    os.waitpid(pid, 0)
                    break
                except InterruptedError:
                    continue
        finally:
            os._exit(0)
    # The kernel: PID 1 of its namespace. It dies when its parent does.
    os.close(request["_report"])
    os.close(alive_w)
    os.close(status_r)
    request["_report"] = status_w
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    os.set_blocking(alive_r, False)
    try:
        if os.read(alive_r, 1) == b"":  # the parent is gone already
            os._exit(1)
    except BlockingIOError:
        pass
    os.close(alive_r)
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    _bind(request["variant"], request["package"], writable=False)
    _bind(request["folder"], HOME, writable=True)
    for hidden in request["hide"]:  # the grader's folders: every other kernel's, every package copy
        _mount("tmpfs", hidden, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY, "size=4k,mode=000")
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1g,mode=1777")
    _mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=256m,mode=1777")
    _drop_capabilities()
    os.environ.update(HOME=HOME, TMPDIR="/tmp", MPLCONFIGDIR="/tmp/matplotlib", USER="student",
                      XNN_LAB_FORBIDDEN_LOG=os.path.join(HOME, ".forbidden-calls"))


def _become_kernel(request: dict, sandbox: bool) -> None:
    """In the forked child: isolate, limit, redirect the standard streams, run the kernel."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the kernel reaps its own children
    if sandbox:
        _enter_sandbox(request)
    os.setsid()  # a new session and process group
    memory = request.get("memory_bytes")
    if memory:
        # Soft and hard limits both: the submission cannot raise the soft limit back.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if sandbox:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
        # Counted per user in the kernel's own user namespace: a fork bomb stops here.
        resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))
    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(request["cwd"], ".kernel.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.pop("JPY_PARENT_PID", None)
    from ipykernel.kernelapp import IPKernelApp

    if sandbox:  # set up: the kernel's parent reports its pid to the grader
        os.write(request["_report"], b"ok\n")
        os.close(request["_report"])

    IPKernelApp.launch_instance(argv=["-f", request["connection_file"]])


def _drop_to(uid: int, gid: int) -> None:
    """From root: become the unprivileged ``uid``/``gid`` for good (no capabilities left)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # the kernels write their own /proc/self/uid_map


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sandbox = "--sandbox" in argv
    if "--uid" in argv:
        _drop_to(int(argv[argv.index("--uid") + 1]), int(argv[argv.index("--gid") + 1]))
    if sandbox:
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library missing: the kernels import what they need themselves
            pass
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished children are reaped at once, no zombies
    out = sys.stdout
    print("ready", file=out, flush=True)
    children = []
    for line in sys.stdin:
        request = json.loads(line)
        report_r, report_w = os.pipe()
        request["_report"] = report_w
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            try:
                if sandbox:
                    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
                else:
                    os.write(report_w, f"{os.getpid()}\n".encode())
                    os.close(report_w)
                _become_kernel(request, sandbox)
            except BaseException as err:  # reported to the grader through the pipe, if still open
                try:
                    os.write(request["_report"], f"error: {type(err).__name__}: {err}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(0)
        os.close(report_w)
        children.append(pid)
        with os.fdopen(report_r, "rb") as report:
            answer = report.readline().decode(errors="replace").strip()
        print(answer or "error: the kernel's process exited before it started", file=out, flush=True)
    for pid in filter(_is_my_child, children):
        try:
            os.killpg(pid, signal.SIGKILL) if not sandbox else os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _is_my_child(pid: int) -> bool:
    """Whether ``pid`` is still a process forked here (a finished child's pid may belong to anyone now)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):  # gone, or no /proc: nothing known to kill
        return False


if __name__ == "__main__":
    main()
