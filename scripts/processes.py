"""Child processes that clean up after themselves: each runs in its own process group, is waited on
with a deadline, and is killed as a group, so no worker child or reloader outlives its owner. On Linux
each also gets the parent-death signal, so it dies even when its owner is SIGKILLed and never stops it.

Used by ``make run`` (:mod:`scripts.run_stack`), the integration fixtures and the benchmarks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

#: How often readiness is re-checked while waiting on it.
POLL_INTERVAL_S = 0.05
# prctl(2) option: the signal the calling process gets when its parent dies (Linux only).
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once in the parent, so a forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_PRCTL = _load_prctl()


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; False where that is not available."""
    return _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. SIGKILL: an owner killed outright can stop nothing itself.
    set_parent_death_signal(signal.SIGKILL)


def session_cpu_s(session_id: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live process in session ``session_id``, by pid, read from /proc.

    A :class:`ManagedProcess` starts its own session, so this is the process and every child it made
    (the caption worker's decoding children included). Fields 6, 14 and 15 of /proc/PID/stat (proc(5)).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[3]) == session_id:
            found[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ManagedProcess:
    """A command in its own process group, logging to a file; a context manager that always stops it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        #: Open descriptors the child inherits under the same numbers (a listening socket for uvicorn's --fd).
        self.pass_fds = tuple(pass_fds)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the command (its own session, so its whole tree can be signalled at once).

        Started from the main thread, it also dies with this process: Linux sends the parent-death
        signal when the *thread* that forked it ends, so children of short-lived threads go without it.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        on_main_thread = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True, pass_fds=self.pass_fds,
                preexec_fn=_die_with_parent if on_main_thread else None,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def is_running(self) -> bool:
        """True while the process has not exited."""
        return self.process is not None and self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], *, timeout_s: float, what: str = "ready") -> None:
        """Return once ``ready()`` is true; raise if the process exits or ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise RuntimeError(f"{self.name} exited before it was {what}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not {what} after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the whole process group (ignored when it is already gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to ``grace_s``, then SIGKILL it; returns the exit code."""
        if self.process is None:
            return None
        if self.is_running():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        # Children (e.g. a pool) may outlive a leader that exited: the group goes either way.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        return self.process.returncode

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the process's output, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def __enter__(self) -> ManagedProcess:
        return self.start() if self.process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
