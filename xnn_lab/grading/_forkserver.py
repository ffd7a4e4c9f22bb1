"""The grader's kernel factory: one process imports the heavy modules once, then forks a kernel per request.

Starting a fresh Python kernel costs seconds of CPU before the first cell runs (``import torch``
alone takes about 3 s on a small machine); grading a folder of submissions would spend most of
its time there. This server imports torch, xnn_lab, matplotlib and ipykernel once; each request
forks a child that becomes an IPython kernel in a new session (so its whole process group can be
killed), with a cap on its address space (``RLIMIT_AS``) and its own working folder. The child
shares nothing writable with the server or the grader: a submission that monkeypatches a module
changes its own copy only.

Protocol: run as ``python -m xnn_lab.grading._forkserver``; it prints ``ready``, then reads one
JSON request per line on stdin (``connection_file``, ``cwd``, ``memory_bytes``) and answers each
with the kernel's pid on its own line. When stdin closes (the grader finished or died) it kills
the process group of every kernel it forked, and exits.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import sys

# Imported before forking, so every kernel starts with them loaded. Nothing here may start a
# thread (a forked child would inherit a broken copy of it): no torch op runs in the server.
PRELOAD = (
    "numpy", "torch", "torch.nn.functional", "matplotlib", "matplotlib.pyplot",
    "xnn_lab", "xnn_lab.cam", "xnn_lab.metrics", "xnn_lab.trees", "xnn_lab.agnostic", "xnn_lab.models",
    "xnn_lab.data", "xnn_lab.zoo", "xnn_lab.viz", "xnn_lab.influence", "xnn_lab.protopnet", "xnn_lab.senn",
    "xnn_lab.concepts",
    "ipykernel.kernelapp", "ipykernel.ipkernel",
)


def _become_kernel(request: dict) -> None:
    """In the forked child: detach, limit memory, redirect the standard streams, run the kernel."""
    os.setsid()  # a new session and process group: the grader kills the whole group at the end
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the kernel reaps its own children
    memory = request.get("memory_bytes")
    if memory:
        # Soft and hard limits both: the submission cannot raise the soft limit back.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(request["cwd"], ".kernel.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    # No parent poller: a kernel outlives a server that a submission killed; the grader kills it.
    os.environ.pop("JPY_PARENT_PID", None)
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=["-f", request["connection_file"]])


def main() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished kernels are reaped at once, no zombies
    out = sys.stdout
    print("ready", file=out, flush=True)
    kernels = []
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _become_kernel(request)
            finally:
                os._exit(0)
        kernels.append(pid)
        print(pid, file=out, flush=True)
    for pid in filter(_is_my_child, kernels):
        os.killpg(pid, signal.SIGKILL)


def _is_my_child(pid: int) -> bool:
    """Whether ``pid`` is still a kernel forked here (a finished kernel's pid may belong to anyone now)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):  # gone, or no /proc: nothing known to kill
        return False


if __name__ == "__main__":
    main()
