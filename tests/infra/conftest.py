"""Fixtures for the offline infra checks: the validator tools, the parsed Bicep, the SDK schema.

The tools live in ``.venv-infra`` (``make infra-venv``, from ``tests/infra/requirements.txt``);
the session fixture runs that target, so ``pytest tests/infra`` works from a fresh clone too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bicep_source import BicepProject
from infra_toolbox import INFRA_DIR, INFRA_VENV, REPO_ROOT, InfraTools, run_tool


@pytest.fixture(scope="session")
def infra_tools() -> InfraTools:
    """The validators, installed on first use by ``make infra-venv`` (a no-op when up to date)."""
    make = shutil.which("make")
    assert make is not None, "make is needed to install the infra tools (make infra-venv)"
    # The stamp rule compares against tests/infra/requirements.txt, so this reinstalls only on change.
    done = subprocess.run(
        [make, "-s", "infra-venv"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"make infra-venv failed:\n{done.stdout}\n{done.stderr}"
    bin_dir = INFRA_VENV / "bin"
    python = bin_dir / "python"
    # The package's `docker-compose` script is a wrapper that always exits 0; the real binary
    # sits inside the `compose` package.
    find_binary = "import compose, pathlib; print(pathlib.Path(compose.__file__).with_name('docker-compose'))"
    located = subprocess.run(
        [str(python), "-c", find_binary],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    tools = InfraTools(
        python=python,
        hadolint=bin_dir / "hadolint",
        compose=Path(located.stdout.strip()),
        checkov=bin_dir / "checkov",
        shellcheck=bin_dir / "shellcheck",
    )
    for path in (tools.hadolint, tools.compose, tools.checkov, tools.shellcheck):
        assert os.access(path, os.X_OK), f"{path} is not an executable; rerun make infra-venv"
    return tools


@pytest.fixture(scope="session")
def bicep() -> BicepProject:
    """Every .bicep and .bicepparam file under infra/, parsed."""
    return BicepProject(INFRA_DIR)


@pytest.fixture(scope="session")
def appcontainers_schema(infra_tools: InfraTools) -> dict[str, Any]:
    """azure-mgmt-appcontainers' models as JSON, printed by sdk_schema.py in the infra venv."""
    script = Path(__file__).with_name("sdk_schema.py")
    done = run_tool([infra_tools.python, script])
    assert done.returncode == 0, done.stderr
    schema: dict[str, Any] = json.loads(done.stdout)
    return schema
