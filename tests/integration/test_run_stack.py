"""`make run` (scripts.run_stack): its own Redis, the port asked for, and no process outliving it, whatever ends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.processes import free_port
from scripts.stack import REPO_ROOT, http_ok

#: Deadline of every wait: starting the stack loads the model; a loaded machine may take a while.
START_DEADLINE_S = 180
GONE_DEADLINE_S = 60


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` right now."""
    children, found, todo = _children_of(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate: object, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not true after {deadline_s} s"
        time.sleep(0.1)


class RunningStack:
    """``make run``'s process started as ``make`` would start it: under a parent shell, in its own group."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            # Another stack on this machine may hold the default metrics port.
            "CAPTIONIZER_WORKER_METRICS_PORT": "0",
        }
        env.pop("CAPTIONIZER_REDIS_URL", None)
        command = f"{sys.executable} -m scripts.run_stack --port {self.port}; echo make-would-go-on"
        self.log = (tmp_path / "run.log").open("wb")
        # `sh -c` with a second command after it stays the parent (no exec), like make's recipe shell.
        self.shell = subprocess.Popen(
            ["sh", "-c", command], cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.log_path = tmp_path / "run.log"

    def wait_ready(self) -> set[int]:
        """Wait until the API answers and the banner is printed in full; return every process the stack runs."""
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.port}/readyz") or self.shell.poll() is not None,
                   START_DEADLINE_S, "the API answering")  # fmt: skip
        # The banner comes after the API answers (it asks the API for the local webhook secret): its
        # last line, naming the Redis in use, says run_stack has finished starting.
        wait_until(lambda: "inspect active" in self.log_path.read_text() or self.shell.poll() is not None,
                   START_DEADLINE_S, "the banner printed")  # fmt: skip
        assert self.shell.poll() is None, self.log_path.read_text()[-3000:]
        processes = descendants(self.shell.pid)
        # run_stack itself, redis-server, the caption worker, the webhook worker and uvicorn.
        assert len(processes) >= 5, processes
        return processes

    def close(self) -> None:
        with_group = [self.shell.pid, *descendants(self.shell.pid)]
        for pid in with_group:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.shell.wait(GONE_DEADLINE_S)
        self.log.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningStack]:
    stack = RunningStack(tmp_path)
    try:
        yield stack
    finally:
        stack.close()


def test_sigkill_of_make_stops_everything_it_started(running: RunningStack) -> None:
    processes = running.wait_ready()
    os.kill(running.shell.pid, signal.SIGKILL)  # make dies at once and can forward nothing
    running.shell.wait(GONE_DEADLINE_S)
    wait_until(lambda: not any(is_alive(pid) for pid in processes), GONE_DEADLINE_S, "every process gone")


def test_sigkill_of_run_stack_itself_kills_its_children(running: RunningStack) -> None:
    processes = running.wait_ready()
    [run_stack] = [pid for pid in processes if "scripts.run_stack" in Path(f"/proc/{pid}/cmdline").read_text()]
    os.kill(run_stack, signal.SIGKILL)
    wait_until(lambda: not any(is_alive(pid) for pid in processes), GONE_DEADLINE_S, "every process gone")


def test_sighup_to_the_group_stops_everything_and_says_so(running: RunningStack) -> None:
    processes = running.wait_ready()
    log = running.log_path.read_text()
    # It says which Redis it uses: its own, on a port of its own.
    assert "its own redis-server" in log and "redis://127.0.0.1:6379" not in log
    with urllib.request.urlopen(f"http://127.0.0.1:{running.port}/healthz", timeout=10) as response:
        assert response.status == 200
    os.killpg(running.shell.pid, signal.SIGHUP)  # the terminal closed
    wait_until(lambda: not any(is_alive(pid) for pid in processes), GONE_DEADLINE_S, "every process gone")
    running.shell.wait(GONE_DEADLINE_S)
    assert "Stopping" in running.log_path.read_text()
