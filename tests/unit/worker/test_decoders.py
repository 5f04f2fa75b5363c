"""Decoding in child processes (worker.intake.decoders): a CPU budget per image, and a cancelled decode stops at once.

Real child processes (forkserver), real scan bombs: the budget is enforced by the kernel (RLIMIT_CPU), so
nothing here can be faked. The scan ceiling is lifted so that the bomb reaches the decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from shared.errors import ImageCorrupt, ImageTooComplex
from shared.settings import Settings
from tests.servers import scan_bomb_jpeg
from worker.intake.decoders import DecodeProcesses

# Minutes of CPU to decode in full, a few hundred kB to send.
_BOMB = scan_bomb_jpeg(scans=40_000, side_px=2048)


def _png(size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


def _decoders(settings: Settings) -> DecodeProcesses:
    lifted = settings.model_copy(update={"decode_cpu_budget_s": 1, "max_jpeg_scans": 1_000_000})
    return DecodeProcesses(lifted, model_input_px=224, processes=1)


def test_an_image_decodes_in_a_child_exactly_as_in_the_worker(settings: Settings) -> None:
    async def scenario() -> None:
        decoders = _decoders(settings)
        try:
            image = await decoders.decode(_png())
            assert (image.mode, image.size, image.getpixel((5, 5))) == ("RGB", (96, 64), (200, 10, 10))
        finally:
            decoders.close()

    asyncio.run(scenario())


def test_a_decoder_error_keeps_its_code_and_the_child_serves_the_next(settings: Settings) -> None:
    async def scenario() -> None:
        decoders = _decoders(settings)
        try:
            with pytest.raises(ImageCorrupt):
                await decoders.decode(_png()[:60])
            assert (await decoders.decode(_png())).size == (96, 64)
        finally:
            decoders.close()

    asyncio.run(scenario())


def test_a_scan_bomb_past_the_budget_fails_image_too_complex_and_its_child_is_gone(settings: Settings) -> None:
    async def scenario() -> None:
        decoders = _decoders(settings)
        try:
            with pytest.raises(ImageTooComplex) as caught:
                await decoders.decode(_BOMB)
            assert "more than 1 s of CPU" in caught.value.message
            assert decoders.children_alive() == 0
            assert (await decoders.decode(_png())).size == (96, 64)  # a fresh child
        finally:
            decoders.close()

    asyncio.run(scenario())


def test_a_cancelled_decode_kills_its_child_at_once(settings: Settings) -> None:
    async def scenario() -> None:
        decoders = DecodeProcesses(
            settings.model_copy(update={"decode_cpu_budget_s": 600, "max_jpeg_scans": 1_000_000}),
            model_input_px=224,
            processes=1,
        )
        try:
            await decoders.decode(_png())  # the child is up
            idle_cpu_s = decoders.children_cpu_s()
            decoding = asyncio.create_task(decoders.decode(_BOMB))
            deadline = time.monotonic() + 30
            while decoders.children_cpu_s() < idle_cpu_s + 0.2:  # the child is decoding the bomb
                assert time.monotonic() < deadline, "the child never started decoding"
                await asyncio.sleep(0.01)
            decoding.cancel()
            with pytest.raises(asyncio.CancelledError):
                await decoding
            assert decoders.children_alive() == 0
        finally:
            decoders.close()

    asyncio.run(scenario())


def test_started_children_run_outside_the_workers_process_group(settings: Settings) -> None:
    # A SIGTERM to the worker's group (a warm shutdown) must not end the decodes its jobs in hand need.
    async def scenario() -> None:
        decoders = _decoders(settings)
        try:
            decoders.start()
            assert decoders.children_alive() == 1
            image = await decoders.decode(_png())  # served by the child started up front
            assert image.size == (96, 64)
            pids = [child.process.pid for child in decoders._children]
            assert len(pids) == 1 and pids[0] is not None
            assert os.getpgid(pids[0]) != os.getpgrp()
        finally:
            decoders.close()

    asyncio.run(scenario())


# A stand-in worker: starts two decoding children, prints their pids, then waits to be killed.
_WORKER = """
import signal, sys
from shared.settings import Settings
from worker.intake.decoders import DecodeProcesses
decoders = DecodeProcesses(Settings(decode_cpu_budget_s=5), model_input_px=224, processes=2)
decoders.start()
print(" ".join(str(child.process.pid) for child in decoders._children), flush=True)
signal.pause()
"""


def _is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie waits for whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_idle_children_exit_when_their_worker_is_killed() -> None:
    # chaos.kill_worker SIGKILLs the worker's group; the children are outside it, and must not outlive it.
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    children: list[int] = []
    try:
        assert worker.stdout is not None
        children = [int(pid) for pid in worker.stdout.readline().split()]
        assert len(children) == 2 and all(_is_running(pid) for pid in children)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_is_running(pid) for pid in children):
            assert time.monotonic() < deadline, "a decoding child outlived its worker"
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        if worker.stdout is not None:
            worker.stdout.close()
        for pid in children:
            if _is_running(pid):  # only when the test failed: one of ours is still running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
