"""Kernels for grading: forked from a :mod:`~xnn_lab.grading._forkserver`, driven by nbclient.

:class:`ForkServer` owns the server process (inside its bubblewrap sandbox, or plain with
``sandbox=None``); :class:`Kernel` is one submission's kernel with ``run(source, timeout)``, which
never raises for what the code does: an error, a time-out (the kernel is interrupted), a kernel
that ignores the interrupt (``"hung"``) and a kernel that died (``"dead"``) are all outcomes.
``close`` kills the kernel; sandboxed, that ends its PID namespace, so every process it started ends.

A sandboxed kernel talks to the grader over Unix sockets in its private folder (it has no network).
What it sends is read with limits: no message above :data:`MAX_MESSAGE_BYTES` is taken in, and of a
cell's outputs only the error is kept, so a kernel cannot fill the grader's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import nbformat
import zmq
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.utils import ensure_event_loop, run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

# How long a kernel may take to answer after an interrupt before it counts as hung and is killed.
INTERRUPT_GRACE_S = 3
# The largest message the grader takes from a kernel; a larger one is dropped by ZeroMQ.
MAX_MESSAGE_BYTES = 8 << 20

# nbclient logs every time-out and dead kernel as an error; here they are outcomes, reported as such.
_QUIET = logging.getLogger("xnn_lab.grading.nbclient")
_QUIET.setLevel(logging.CRITICAL + 1)


def kernel_environment(sandboxed: bool = False) -> dict[str, str]:
    """The environment of the grading kernels: one thread each (they run side by side), no display, no GPU.

    The exercises are small, and CUDA reserves far more address space than the kernels' memory
    limit allows, so the kernels see no GPU (``xnn_lab.device()`` is the CPU there). Sandboxed, the
    kernels get only the locale, ``PATH`` and ``XNN_LAB_*`` of the grader's environment (none of its
    tokens or other variables).
    """
    if sandboxed:
        env = {key: value for key, value in os.environ.items()
               if key in ("PATH", "LANG", "LANGUAGE", "TZ", "TERM") or key.startswith(("LC_", "XNN_LAB_"))}
    else:
        env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1",
               CUDA_VISIBLE_DEVICES="")
    return env


class ForkServer:
    """The process that forks grading kernels (see :mod:`xnn_lab.grading._forkserver`).

    Args:
        memory_bytes: the address-space limit of each kernel (``RLIMIT_AS``); ``None`` for none.
        sandbox: the run's :class:`Sandbox` (the server runs in bubblewrap and every kernel in
            namespaces of its own); ``None`` runs the kernels unisolated (``--no-sandbox``).
        worker: which of the run's servers this is (sandboxed under root: its uid).
    """

    def __init__(self, memory_bytes: int | None, sandbox: Sandbox | None = None, worker: int = 0):
        self.memory_bytes = memory_bytes
        self.sandbox = sandbox
        self.worker = worker
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        # The server loads its modules while the grader prepares the questions; spawn() waits for it.
        if self.sandbox is None:
            command = [sys.executable, "-m", "xnn_lab.grading._forkserver"]
        else:
            from xnn_lab.grading.sandbox import bwrap_command

            command = bwrap_command(self.sandbox.bwrap, self.sandbox.root, self.worker)
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=kernel_environment(self.sandbox is not None),
                                         start_new_session=True)
        self._ready = False

    @property
    def sandbox_uid(self) -> int | None:
        """The uid of this server's kernels outside their sandbox when it is not the grader's own (root)."""
        if self.sandbox is None:
            return None
        from xnn_lab.grading.sandbox import sandbox_uid

        return sandbox_uid(self.worker)

    def spawn(self, request: dict) -> int:
        """Fork a kernel for ``request`` (``connection_file``, ``cwd``; sandboxed ``folder``, ``variant``); its pid."""
        request = dict(request, memory_bytes=self.memory_bytes)
        if self.sandbox is not None:
            from xnn_lab.grading.sandbox import COPIES, KERNELS, PACKAGE, RUN_MOUNT

            request.update(folder=f"{KERNELS}/{request.pop('folder')}", package=str(PACKAGE), hide=[RUN_MOUNT],
                           variant=f"{COPIES}/{request.pop('variant')}/xnn_lab")
        with self._lock:
            if self._process.poll() is not None:  # the server died (unsandboxed, a kernel can kill it): restart
                self._start()
            if not self._ready:
                if self._process.stdout.readline().strip() != "ready":
                    raise RuntimeError("the grading fork server did not start (its error is on the standard "
                                       "error stream; run python -m xnn_lab.grading._forkserver to try it alone)")
                self._ready = True
            try:
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
                answer = self._process.stdout.readline()
            except BrokenPipeError:
                answer = ""
        if not answer.strip().isdigit():
            hint = ""
            if "unshare" in answer:
                hint = (" (this system does not let an unprivileged process create user namespaces: see the "
                        "sysctls user.max_user_namespaces, kernel.unprivileged_userns_clone and, on Ubuntu, "
                        "kernel.apparmor_restrict_unprivileged_userns)")
            raise RuntimeError(f"the grading fork server failed to start a kernel: {answer.strip()[:300]!r}{hint}")
        return int(answer)

    def close(self) -> None:
        """Stop the server; it kills every kernel it forked (sandboxed: with everything they started)."""
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Sandbox:
    """A run's sandbox: the ``bwrap`` executable and the run's folder on the grader's side.

    ``root/kernels/NAME`` is a kernel's private folder (``/home/student`` inside);
    ``root/packages/KEY/xnn_lab`` a package copy (see :func:`xnn_lab.grading.sandbox.build_package_copy`).
    """

    bwrap: str
    root: Path


class _ForkedProcess:
    """The part of ``subprocess.Popen`` that jupyter_client's provisioner uses, for a pid we did not spawn."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)  # the fork server reaps its children at once, so a dead pid is gone
        except (ProcessLookupError, PermissionError):
            return -1
        return None

    def wait(self, timeout: float | None = None) -> int:
        return self.poll() or -1

    def send_signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class _ForkProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, launching by asking the fork server instead of ``Popen``."""

    async def launch_kernel(self, cmd: list[str], **kwargs):
        pid = self.parent.fork_server.spawn(self.parent.spawn_request)
        self.process = _ForkedProcess(pid)
        self.pid = self.pgid = pid  # the child called setsid(): it leads its own process group
        self.cwd = kwargs["cwd"]
        return self.connection_info


class _ForkedKernelManager(AsyncKernelManager):
    fork_server: ForkServer
    spawn_request: dict

    async def _async_pre_start_kernel(self, **kw):
        self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or os.urandom(16).hex()
        if self.provisioner is None:
            self.provisioner = _ForkProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
        return await super()._async_pre_start_kernel(**kw)


@dataclass
class Outcome:
    """What running one piece of code in a kernel did."""

    status: str
    """``"ok"``, ``"error"`` (an exception; the kernel lives), ``"timeout"`` (interrupted, the kernel
    lives), ``"hung"`` (it ignored the interrupt and was killed) or ``"dead"`` (the kernel died)."""
    error: str = ""
    """the exception's name and message, or what happened."""
    outputs: list | None = None
    """the cell's nbformat outputs."""


class _Client(NotebookClient):
    """nbclient, keeping of a cell's outputs only its error (truncated), and no widget state."""

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] != "error":
            return None
        content = msg["content"]
        out = nbformat.v4.new_output("error", ename=str(content.get("ename", ""))[:200],
                                     evalue=str(content.get("evalue", ""))[:2000], traceback=[])
        if len(outs) < 4:
            outs.append(out)
        return out

    def handle_comm_msg(self, outs, msg, cell_index):
        return None


class Kernel:
    """A fresh kernel forked by ``fork_server``, working in ``folder`` (on the grader's side).

    Sandboxed, ``folder`` is ``root/kernels/NAME`` of the run's :class:`Sandbox`, the kernel's
    private folder; the kernel imports the package copy ``variant`` (a name under ``root/packages``).

    Args:
        fork_server: the :class:`ForkServer`.
        folder: the kernel's working folder.
        variant: the package copy the sandboxed kernel imports.
        startup_timeout: seconds to wait for the kernel to answer.
    """

    def __init__(self, fork_server: ForkServer, folder: str, *, variant: str | None = None,
                 startup_timeout: float = 60):
        sandbox = fork_server.sandbox
        self.km = _ForkedKernelManager(kernel_name="python3", transport="tcp" if sandbox is None else "ipc")
        self.km.fork_server = fork_server
        self.km.context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if sandbox is None:
            self.km.connection_file = os.path.join(folder, ".kernel-connection.json")
            self.km.spawn_request = {"connection_file": self.km.connection_file, "cwd": folder}
            cwd = folder
        else:
            from xnn_lab.grading.sandbox import HOME

            # The grader's copy of the connection file stays outside the sandbox; the kernel gets its own.
            self.km.connection_file = os.path.join(sandbox.root, "private", os.path.basename(folder) + ".json")
            self.km.ip = os.path.join(folder, "k")  # the Unix sockets' prefix, in the kernel's folder
            self.km.spawn_request = {"connection_file": f"{HOME}/.kernel-connection.json", "cwd": HOME,
                                     "folder": os.path.basename(folder), "variant": variant}
            cwd = folder
        self.client = _Client(nbformat.v4.new_notebook(), km=self.km, allow_errors=True,
                              startup_timeout=startup_timeout, interrupt_on_timeout=False,
                              shutdown_kernel="immediate", log=_QUIET, store_widget_state=False,
                              record_timing=False, resources={"metadata": {"path": cwd}})
        self._pgid: int | None = None
        try:
            if sandbox is not None:
                self.km.write_connection_file()
                info = dict(self.km.get_connection_info(), ip=f"{HOME}/k")
                info["key"] = info["key"].decode() if isinstance(info["key"], bytes) else info["key"]
                _write_new(os.path.join(folder, ".kernel-connection.json"), json.dumps(info).encode(),
                           fork_server.sandbox_uid)
            run_sync(self.client.async_start_new_kernel)(cwd=cwd)
            self._pgid = self.km.provisioner.pgid
            run_sync(self.client.async_start_new_kernel_client)()
            if sandbox is not None:
                # Connected: never connect again. The socket files are in the kernel's folder, where it
                # could put a link to another socket of the grader's machine in their place.
                kc = self.client.kc
                for channel in (kc.shell_channel, kc.iopub_channel, kc.stdin_channel, kc.control_channel):
                    if getattr(channel, "socket", None) is not None:
                        channel.socket.setsockopt(zmq.RECONNECT_IVL, -1)
        except BaseException:
            self.close()
            raise

    def run(self, source: str, timeout: float) -> Outcome:
        """Execute ``source`` with a wall-clock limit of ``timeout`` seconds."""
        cell = nbformat.v4.new_code_cell(source)
        self.client.nb.cells = [cell]  # nbclient stores the executed cell at its index
        self.client.timeout = max(1, round(timeout))
        try:
            self.client.execute_cell(cell, 0)
        except CellTimeoutError:
            _cancel_stale_tasks()
            if self._answers_after_interrupt():
                return Outcome("timeout", f"timed out after {timeout:g} s (interrupted)", cell.outputs)
            self.close()
            return Outcome("hung", f"timed out after {timeout:g} s and ignored the interrupt (killed)", cell.outputs)
        except DeadKernelError:
            self.close()
            return Outcome("dead", "the kernel died", cell.outputs)
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        if errors:
            return Outcome("error", f"{errors[0].get('ename', '')}: {errors[0].get('evalue', '')}"[:300], cell.outputs)
        return Outcome("ok", "", cell.outputs)

    def _answers_after_interrupt(self) -> bool:
        """Interrupt the kernel; whether it then runs ``pass`` within the grace period."""
        probe = nbformat.v4.new_code_cell("pass")
        self.client.nb.cells = [probe]
        self.client.timeout = INTERRUPT_GRACE_S
        try:
            run_sync(self.km.interrupt_kernel)()
            self.client.execute_cell(probe, 0)
        except Exception:  # a time-out, a dead kernel or a failed interrupt: the kernel is unusable
            _cancel_stale_tasks()
            return False
        return True

    @property
    def alive(self) -> bool:
        """Whether the kernel can still run code (it was not closed, killed or found dead)."""
        return self._pgid is not None

    def close(self) -> None:
        """Stop the kernel and kill every process left in its group."""
        try:
            run_sync(self.client._async_cleanup_kernel)()
        except Exception:  # the kernel may be dead or hung; the group kill below is what counts
            pass
        if self._pgid:
            try:
                os.killpg(self._pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._pgid = None


def _write_new(path: str, data: bytes, uid: int | None) -> None:
    """Create ``path`` (it must not exist: no link is followed) with ``data``, owned by ``uid`` if given."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if uid is not None:
            os.fchown(fd, uid, uid)
    finally:
        os.close(fd)


def _cancel_stale_tasks() -> None:
    """Cancel what a timed-out execution left running in this thread's event loop.

    nbclient leaves the timed-out cell's output reader waiting on the IOPub channel; it would take
    the messages of the next cells (their outputs and errors would be lost, each after a wait).
    """
    loop = ensure_event_loop()
    stale = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in stale:
        task.cancel()
    if stale:
        loop.run_until_complete(asyncio.gather(*stale, return_exceptions=True))
