"""scripts/setup-system.sh: installs what is missing with apt-get when it can, else stops at once with the command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "setup-system.sh"


def _fake_bin(tmp_path: Path, *, uid: int, sudo: bool) -> Path:
    """A PATH with python3 and env, a stub apt-get that records its arguments, and an ``id`` answering ``uid``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    for tool in ("env", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    stubs = {
        "id": f"echo {uid}",
        "apt-get": f'echo "$*" >> {tmp_path}/apt.log',
        **({"sudo": f'[ "$1" = -n ] && shift; echo sudo >> {tmp_path}/apt.log; "$@"'} if sudo else {}),
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run(tmp_path: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(bin_dir), "CHROMIUM": str(tmp_path / "no-chromium"), "HOME": str(tmp_path)}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_without_root_or_sudo_it_stops_with_the_exact_command(tmp_path: Path) -> None:
    done = _run(tmp_path, _fake_bin(tmp_path, uid=1000, sudo=False))
    assert done.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y redis-server chromium" in done.stderr
    assert not (tmp_path / "apt.log").exists()


def test_as_root_it_installs_only_what_is_missing(tmp_path: Path) -> None:
    done = _run(tmp_path, _fake_bin(tmp_path, uid=0, sudo=False))
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls == ["update -qq", "install -y -qq --no-install-recommends redis-server chromium"]


def test_with_password_less_sudo_it_installs_through_sudo(tmp_path: Path) -> None:
    done = _run(tmp_path, _fake_bin(tmp_path, uid=1000, sudo=True))
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    # First `sudo -n true`, to learn that no password is asked, then each apt-get through sudo.
    install = "install -y -qq --no-install-recommends redis-server chromium"
    assert calls == ["sudo", "sudo", "update -qq", "sudo", install]


def test_with_everything_present_it_does_nothing(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, uid=1000, sudo=False)
    (bin_dir / "redis-server").symlink_to(bin_dir / "id")
    chromium = tmp_path / "no-chromium"
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    done = _run(tmp_path, bin_dir)
    assert (done.returncode, done.stderr) == (0, "")
    assert not (tmp_path / "apt.log").exists()
    assert os.access(SCRIPT, os.X_OK), "make system-deps runs it directly"
