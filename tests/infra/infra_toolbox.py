"""Paths and runners shared by the infra tests: the repository, the validators in .venv-infra,
the settings' variable names."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = REPO_ROOT / "infra"
INFRA_VENV = REPO_ROOT / ".venv-infra"
TOOL_TIMEOUT_S = 240

#: Every environment variable the settings read: CAPTIONIZER_ + field name, upper-case.
SETTING_VARIABLES = frozenset(f"CAPTIONIZER_{name.upper()}" for name in Settings.model_fields)


@dataclass(frozen=True)
class InfraTools:
    """Paths of the validators inside .venv-infra."""

    python: Path
    hadolint: Path
    compose: Path
    checkov: Path
    shellcheck: Path


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A subprocess environment without CAPTIONIZER_* and without the caller's venv."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CAPTIONIZER_", "VIRTUAL_ENV"))}
    # compose would read a developer's .env and COMPOSE_* settings; the tests pass what they mean.
    env = {name: value for name, value in env.items() if not name.startswith("COMPOSE_")}
    env.update(extra or {})
    return env


def run_tool(
    args: list[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run one validator, capturing its output as text."""
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=tool_env(env),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
