"""Kernels for grading: forked from a :mod:`~xnn_lab.grading._forkserver`, driven by nbclient.

:class:`ForkServer` owns the server process; :class:`Kernel` is one submission's kernel with
``run(source, timeout)``, which never raises for what the code does: an error, a time-out (the
kernel is interrupted), a kernel that ignores the interrupt (``"hung"``) and a kernel that died
(``"dead"``) are all outcomes. ``close`` kills the kernel's whole process group.
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

import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.utils import ensure_event_loop, run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

# How long a kernel may take to answer after an interrupt before it counts as hung and is killed.
INTERRUPT_GRACE_S = 3

# nbclient logs every time-out and dead kernel as an error; here they are outcomes, reported as such.
_QUIET = logging.getLogger("xnn_lab.grading.nbclient")
_QUIET.setLevel(logging.CRITICAL + 1)


def kernel_environment() -> dict[str, str]:
    """The environment of the grading kernels: one thread each (they run side by side), no display, no GPU.

    The exercises are small, and CUDA reserves far more address space than the kernels' memory
    limit allows, so the kernels see no GPU (``xnn_lab.device()`` is the CPU there).
    """
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1",
               CUDA_VISIBLE_DEVICES="")
    return env


class ForkServer:
    """The process that forks grading kernels (see :mod:`xnn_lab.grading._forkserver`).

    Args:
        memory_bytes: the address-space limit of each kernel (``RLIMIT_AS``); ``None`` for none.
    """

    def __init__(self, memory_bytes: int | None):
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        # The server loads its modules while the grader prepares the questions; spawn() waits for it.
        self._process = subprocess.Popen([sys.executable, "-m", "xnn_lab.grading._forkserver"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=kernel_environment(), start_new_session=True)
        self._ready = False

    def spawn(self, connection_file: str, cwd: str) -> int:
        """Fork a kernel that listens on ``connection_file``, working in ``cwd``; return its pid."""
        request = json.dumps({"connection_file": connection_file, "cwd": cwd, "memory_bytes": self.memory_bytes})
        with self._lock:
            if self._process.poll() is not None:  # a kernel killed its parent: start another server
                self._start()
            if not self._ready:
                if self._process.stdout.readline().strip() != "ready":
                    raise RuntimeError("the grading fork server did not start (run python -m "
                                       "xnn_lab.grading._forkserver to see why)")
                self._ready = True
            try:
                self._process.stdin.write(request + "\n")
                self._process.stdin.flush()
                answer = self._process.stdout.readline()
            except BrokenPipeError:
                answer = ""
        if not answer.strip().isdigit():
            raise RuntimeError(f"the grading fork server failed (answered {answer!r})")
        return int(answer)

    def close(self) -> None:
        """Stop the server (kernels are stopped by their :class:`Kernel`)."""
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
        pid = self.parent.fork_server.spawn(self.parent.connection_file, str(kwargs["cwd"]))
        self.process = _ForkedProcess(pid)
        self.pid = self.pgid = pid  # the child called setsid(): it leads its own process group
        self.cwd = kwargs["cwd"]
        return self.connection_info


class _ForkedKernelManager(AsyncKernelManager):
    fork_server: ForkServer

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


class Kernel:
    """A fresh kernel forked by ``fork_server``, working in ``cwd``.

    Args:
        fork_server: the :class:`ForkServer`.
        cwd: the kernel's working folder.
        startup_timeout: seconds to wait for the kernel to answer.
    """

    def __init__(self, fork_server: ForkServer, cwd: str, *, startup_timeout: float = 60):
        self.km = _ForkedKernelManager(kernel_name="python3")
        self.km.fork_server = fork_server
        self.km.connection_file = os.path.join(cwd, ".kernel-connection.json")
        self.client = NotebookClient(nbformat.v4.new_notebook(), km=self.km, allow_errors=True,
                                     startup_timeout=startup_timeout, interrupt_on_timeout=False,
                                     shutdown_kernel="immediate", log=_QUIET,
                                     resources={"metadata": {"path": cwd}})
        self._pgid: int | None = None
        try:
            run_sync(self.client.async_start_new_kernel)(cwd=cwd)
            self._pgid = self.km.provisioner.pgid
            run_sync(self.client.async_start_new_kernel_client)()
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
