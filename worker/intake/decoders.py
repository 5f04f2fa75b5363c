"""Image decoding in child processes that can be stopped: a CPU budget per image, and no decode outlives its job.

A thread cannot be stopped, and Pillow's decoders have no budget of their own, so a decode that a
file makes expensive (see :mod:`worker.intake.decode_cost` for what is refused up front) would run on after
its job timed out and hold a core that every tenant shares. Here each decode runs in one of a few
long-lived child processes, started by the ``forkserver`` method so they never inherit the worker's
threads or its model. Before each image the child lowers its own ``RLIMIT_CPU`` soft limit to the CPU
it has used plus ``decode_cpu_budget_s``: past it the kernel sends SIGXCPU, whose default action ends
the process (setrlimit(2)). The parent reads that death as ``image_too_complex``. When the job's own
deadline comes first (``job_time_limit_s``), the waiting coroutine is cancelled and kills the child
there and then. A killed child is replaced on the next decode.

The children are started with the worker (:meth:`DecodeProcesses.start`) and leave its process group,
so a warm shutdown's group SIGTERM leaves them to finish the jobs in hand; a child whose worker died
reads EOF on its pipe and exits, so none outlives its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from PIL import Image

from shared.error_codes import error_for_code
from shared.error_families import CaptionizerError
from shared.errors import ImageTooComplex, InternalError
from shared.settings import Settings

logger = logging.getLogger(__name__)

# A child that will not start in this long is broken (forkserver start-up takes well under a second).
_START_TIMEOUT_S = 30.0


@dataclass(eq=False)  # hashed by identity: the pool keeps a set of them
class _Child:
    process: BaseProcess
    conn: Connection

    def exchange(self, data: bytes) -> tuple[Any, ...]:
        """Send one image, wait for its answer; EOFError when the child died (its budget, or a kill)."""
        self.conn.send_bytes(data)
        answer: tuple[Any, ...] = self.conn.recv()
        return answer

    def kill(self) -> None:
        """End the child at once (SIGKILL) and reap it; closing our end of the pipe wakes a waiting exchange."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=_START_TIMEOUT_S)
        with contextlib.suppress(OSError):
            self.conn.close()


class DecodeProcesses:
    """A few decoding child processes shared by one worker's jobs; each image decodes in one of them."""

    def __init__(self, settings: Settings, *, model_input_px: int, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.settings = settings
        self.model_input_px = model_input_px
        self.processes = processes
        self._context = multiprocessing.get_context("forkserver")
        self._idle: asyncio.Queue[_Child | None] = asyncio.Queue()
        self._children: set[_Child] = set()
        for _ in range(processes):
            self._idle.put_nowait(None)  # a place for a child, started on first use

    async def decode(self, data: bytes) -> Image.Image:
        """Decode ``data`` as :func:`worker.intake.decode_image` does, in a child, within the CPU budget.

        Raises:
            ImageTooComplex: decoding used more than ``decode_cpu_budget_s`` seconds of CPU.
            CaptionizerError: whatever ``decode_image`` raised in the child (same code and message).
        """
        child = await self._idle.get()
        try:
            if child is None:
                child = await asyncio.to_thread(self._start_child)
            answer = await asyncio.to_thread(child.exchange, data)
        except EOFError:
            died_of = self._drop(child)
            child = None
            raise _death_error(died_of, self.settings.decode_cpu_budget_s) from None
        except BaseException:
            # Cancelled (the job's deadline) or broken: the decode must not run on without its job.
            self._drop(child)
            child = None
            raise
        finally:
            self._idle.put_nowait(child)
        return _image_from(answer)

    def start(self) -> None:
        """Start every child now, at worker start-up in the main thread, rather than on first use.

        A warm shutdown (SIGTERM to the worker's process group, as `make run`'s Ctrl-C or a container
        stop may send) also ends the forkserver, which is in that group, after which no child could be
        started: the jobs in hand must find their children already running (see :func:`serve_decodes`).
        """
        started: list[_Child | None] = []
        while not self._idle.empty():
            child = self._idle.get_nowait()
            started.append(child if child is not None else self._start_child())
        for child in started:
            self._idle.put_nowait(child)

    def children_alive(self) -> int:
        """How many decoding children are running now."""
        return sum(1 for child in self._children if child.process.is_alive())

    def children_cpu_s(self) -> float:
        """CPU seconds the running children have used, from /proc (what the tests and the bench watch)."""
        return sum(_cpu_s(child.process.pid) for child in list(self._children) if child.process.pid is not None)

    def close(self) -> None:
        """Kill every child (at worker shutdown)."""
        for child in list(self._children):
            self._drop(child)

    def _start_child(self) -> _Child:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=serve_decodes,
            args=(child_end, self.settings, self.model_input_px),
            name="decoder",
            daemon=True,
        )
        process.start()
        child_end.close()
        child = _Child(process, parent_end)
        self._children.add(child)
        return child

    def _drop(self, child: _Child | None) -> int | None:
        """Kill and forget ``child``; returns its exit code (minus the signal that ended it)."""
        if child is None:
            return None
        child.kill()
        self._children.discard(child)
        return child.process.exitcode


def _death_error(exitcode: int | None, budget_s: int) -> CaptionizerError:
    """What a child's death mid-decode means for the job: SIGXCPU is the budget, anything else is ours."""
    if exitcode == -signal.SIGXCPU:
        return ImageTooComplex(f"decoding the image used more than {budget_s} s of CPU")
    logger.error("a decoding process died", extra={"exitcode": exitcode})
    return InternalError(f"the decoding process died (exit code {exitcode})")


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` (proc(5): fields 14 and 15 of /proc/PID/stat), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _image_from(answer: tuple[Any, ...]) -> Image.Image:
    if answer[0] == "error":
        _, code, message = answer
        error: CaptionizerError = error_for_code(code, message)
        raise error
    _, mode, size, pixels = answer
    return Image.frombytes(mode, size, pixels)


def serve_decodes(conn: Connection, settings: Settings, model_input_px: int) -> None:
    """The child's loop: decode each image it is sent, under the CPU budget, until the pipe closes."""
    # Imported here: the child needs the decoder, the parent module only the process handling.
    from worker.intake.images import decode_image

    # Out of the worker's process group: a SIGTERM or SIGINT sent to the group starts the worker's warm
    # shutdown, and the jobs in hand still need their decodes. The worker kills its children itself
    # (DecodeProcesses.close). A worker that dies without closing (SIGKILL) leaves this child to read EOF
    # on its pipe, since the worker held the only other end, and return. PR_SET_PDEATHSIG would not do:
    # a forkserver child's parent is the forkserver, which the warm shutdown's group signal ends too.
    os.setpgrp()
    budget_s = settings.decode_cpu_budget_s
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        # Whole seconds only (setrlimit(2)): round what is used up, so the budget is never short.
        soft = int(used.ru_utime + used.ru_stime) + 1 + budget_s
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        try:
            image = decode_image(data, settings, model_input_px=model_input_px)
        except CaptionizerError as exc:
            answer: tuple[Any, ...] = ("error", exc.code, exc.message)
        except Exception:  # e.g. MemoryError: this image's job fails, the child serves the next
            logging.getLogger(__name__).exception("decoding failed unexpectedly")
            answer = ("error", InternalError.code, "unexpected error while decoding; see the worker logs")
        else:
            answer = ("image", image.mode, image.size, image.tobytes())
        try:
            conn.send(answer)
        except OSError:  # BrokenPipeError: the worker died (or killed us) mid-decode; nobody waits for this
            return
