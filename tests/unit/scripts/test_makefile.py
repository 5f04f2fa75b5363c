"""The Makefile's entry points, read with `make -n` (which prints the commands and runs none)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str) -> list[str]:
    # PORT from the environment would fill `PORT ?=`; MAKEFLAGS from an outer make would change -n.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PORT", "RESET_WEBHOOK_SECRET", "MAKEFLAGS", "MAKELEVEL")
    }
    done = subprocess.run(
        ["make", "-n", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return [line for line in done.stdout.splitlines() if line and not line.startswith("#")]


def test_make_run_passes_port_to_the_stack() -> None:
    assert _dry_run("run", "PORT=8123")[-1].endswith("-m scripts.run_stack --port 8123")
    assert _dry_run("run")[-1].endswith("-m scripts.run_stack --port 8000")


def test_make_run_resets_the_webhook_secret_only_when_asked() -> None:
    assert _dry_run("run", "RESET_WEBHOOK_SECRET=1")[-1].endswith("--port 8000 --reset-webhook-secret")
    assert "--reset-webhook-secret" not in _dry_run("run")[-1]


@pytest.mark.parametrize("target", ["test", "test-integration"])
def test_the_system_packages_come_first(target: str) -> None:
    # Before the venvs (minutes of pip), so a missing package stops the run in seconds.
    assert _dry_run(target)[0] == "scripts/setup-system.sh"


def test_ci_runs_the_shared_set_up_step_and_the_readmes_test_command() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.startswith("make ")]
    assert commands == ["make system-deps", "make lint typecheck imports", "make test"]


def test_the_gpu_dry_run_builds_the_devices_kit_first_and_takes_its_pins() -> None:
    commands = _dry_run("gpu-dry-run", "-W", "pyproject.toml")
    kit = next(index for index, line in enumerate(commands) if "bench.gpu_kit --folder .gpu-kit" in line)
    cpu_kit = next(index for index, line in enumerate(commands) if "--like .gpu-kit/manifest.json" in line)
    assert kit < cpu_kit < len(commands) - 1
    assert "--python-version 3.11" in commands[cpu_kit] and "--image-venv .gpu-kit-cpu/venv" in commands[cpu_kit]
    assert commands[-1].startswith("bench/gpu.sh --dry-run-cpu")
