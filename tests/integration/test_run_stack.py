"""`make run` (scripts.run_stack): its own Redis, the port asked for, and no process outliving it, whatever ends it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.http.auth import hash_key, owner_of
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

    def __init__(
        self, tmp_path: Path, *, env: dict[str, str] | None = None, args: str = "", port: int | None = None
    ) -> None:
        self.port = port or free_port()
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            # Another stack on this machine may hold the default metrics port.
            "CAPTIONIZER_WORKER_METRICS_PORT": "0",
            **(env or {}),
        }
        full_env.pop("CAPTIONIZER_REDIS_URL", None)
        # A clone's state folder of its own (the secrets make run keeps), never the checkout's.
        state = tmp_path / "state"
        command = f"{sys.executable} -m scripts.run_stack --port {self.port} --state-dir {state} {args}"
        command += '; echo "make-would-go-on (status $?)"'
        self.log_path = tmp_path / f"run-{self.port}-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("wb")
        # `sh -c` with a second command after it stays the parent (no exec), like make's recipe shell.
        self.shell = subprocess.Popen(
            ["sh", "-c", command], cwd=REPO_ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self) -> set[int]:
        """Wait until the API answers and the banner is printed in full; return every process the stack runs."""
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.port}/readyz") or self.shell.poll() is not None,
                   START_DEADLINE_S, "the API answering")  # fmt: skip
        # The banner comes after the API answers: its last line says run_stack has finished starting.
        wait_until(lambda: "Press Ctrl-C to stop." in self.log_path.read_text() or self.shell.poll() is not None,
                   START_DEADLINE_S, "the banner printed")  # fmt: skip
        assert self.shell.poll() is None, self.log_path.read_text()[-3000:]
        processes = descendants(self.shell.pid)
        # run_stack itself, redis-server, the caption worker, the webhook worker and uvicorn.
        assert len(processes) >= 5, processes
        return processes

    def banner_line(self, label: str) -> str:
        """The banner line that starts with ``label`` (e.g. ``Webhooks:``), without it."""
        [line] = [line for line in self.log_path.read_text().splitlines() if line.strip().startswith(label)]
        return line.strip().removeprefix(label).strip()

    def stop(self) -> None:
        """Stop it as Ctrl-C would (SIGINT to run_stack) and wait until the shell goes on."""
        [run_stack] = [pid for pid in descendants(self.shell.pid) if b"scripts.run_stack" in _cmdline(pid)]
        os.kill(run_stack, signal.SIGINT)
        self.shell.wait(GONE_DEADLINE_S)

    def close(self) -> None:
        with_group = [self.shell.pid, *descendants(self.shell.pid)]
        for pid in with_group:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.shell.wait(GONE_DEADLINE_S)
        self.log.close()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


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


# --- what make run offers: keys, a port of its own, a secret that stays, ports that add (#24) ---


KEY = "cap_make-run-0123456789abcdefghijklmnopqrstuvwxyz"


def _request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: object = None
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_with_api_keys_it_reaches_readyz_and_says_how_to_get_the_keys_secret(tmp_path: Path) -> None:
    env = {"CAPTIONIZER_ALLOW_ANONYMOUS": "false", "CAPTIONIZER_API_KEY_HASHES": hash_key(KEY)}
    stack = RunningStack(tmp_path, env=env)
    try:
        stack.wait_ready()
        url = f"http://127.0.0.1:{stack.port}"
        assert http_ok(f"{url}/readyz")
        webhooks = stack.banner_line("Webhooks:")
        assert f"curl -s -H 'Authorization: Bearer <your key>' {url}/v1/webhooks/secret" in webhooks
        assert "Traceback" not in stack.log_path.read_text()
        # Without a key nothing is revealed; with it, the secret the clone keeps for that key.
        assert _request(f"{url}/v1/webhooks/secret")[0] == 401
        status, body = _request(f"{url}/v1/webhooks/secret", headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200
        kept = json.loads((tmp_path / "state" / "webhook-secrets.json").read_text())
        assert kept == {owner_of(hash_key(KEY)): json.loads(body)["key"]}
    finally:
        stack.close()


def test_a_taken_port_stops_it_within_30_s_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = RunningStack(tmp_path, port=port)
        try:
            started = time.monotonic()
            wait_until(lambda: "make-would-go-on" in stack.log_path.read_text(), 30, "run_stack exited")
            assert time.monotonic() - started < 30
            log = stack.log_path.read_text()
            assert f"port {port} on 127.0.0.1 is already in use" in log
            assert "Captionizer is running" not in log and "whsec_" not in log
            assert "make-would-go-on (status 1)" in log
        finally:
            stack.close()


def test_the_secret_stays_across_restarts_until_reset_and_foreign_hosts_are_refused(tmp_path: Path) -> None:
    # 8199: a receiver's port that is not among make run's own.
    env = {"CAPTIONIZER_ALLOWED_PORTS": "8199"}
    secrets: list[str] = []
    for args in ("", "", "--reset-webhook-secret", ""):
        stack = RunningStack(tmp_path, env=env, args=args)
        try:
            stack.wait_ready()
            url = f"http://127.0.0.1:{stack.port}"
            status, body = _request(f"{url}/v1/webhooks/secret")
            assert status == 200
            secrets.append(json.loads(body)["key"])
            assert stack.banner_line("Webhooks:") == f"signed with {secrets[-1]}"
            if not args and len(secrets) == 1:
                _check_the_first_start(stack, url)
            stack.stop()
        finally:
            stack.close()
    first, again, reset, after_reset = secrets
    assert first == again
    assert reset != first
    assert after_reset == reset


def _check_the_first_start(stack: RunningStack, url: str) -> None:
    log = stack.log_path.read_text()
    # The last banner line, after Redis and the workers.
    assert log.rstrip().endswith("Press Ctrl-C to stop.")
    assert log.index("Redis:") < log.index("Workers:") < log.index("Press Ctrl-C to stop.")
    # Extra ports add to the defaults (80, 443, ..., 9000) and to the API's own.
    ports = {int(p) for p in stack.banner_line("Image URLs:").split("ports", 1)[1].split(",")}
    assert {80, 443, 3000, 5000, 8000, 8080, 8888, 9000, 8199, stack.port} <= ports
    for port, expected in ((8199, 202), (80, 202), (stack.port, 202), (8198, 400)):
        status, body = _request(f"{url}/v1/jobs", method="POST", body={"image_url": f"http://127.0.0.1:{port}/a.png"})
        assert status == expected, (port, body)
    # A DNS rebinding page: same-origin to the browser, a foreign Host to the API.
    rebinding = {"Host": f"rebind.evil.example:{stack.port}", "Origin": f"http://rebind.evil.example:{stack.port}",
                 "Sec-Fetch-Site": "same-origin"}  # fmt: skip
    status, body = _request(f"{url}/v1/webhooks/secret", headers=rebinding)
    assert status == 421 and "whsec_" not in body
    status, body = _request(
        f"{url}/v1/jobs", method="POST", headers=rebinding,
        body={"image_url": f"{url}/samples/red-circle.png", "webhook_url": "http://127.0.0.1:9000/hook"},
    )  # fmt: skip
    assert (status, json.loads(body)["code"]) == (421, "host_not_allowed")
