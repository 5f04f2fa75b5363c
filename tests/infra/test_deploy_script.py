"""infra/deploy.sh: shellcheck, its argument checks, and the images it pushes are the ones the apps run."""

from __future__ import annotations

import re

import pytest
from bicep_source import BicepProject, Expr
from infra_toolbox import INFRA_DIR, InfraTools, run_tool

DEPLOY = INFRA_DIR / "deploy.sh"


def test_shellcheck_finds_nothing(infra_tools: InfraTools) -> None:
    done = run_tool([infra_tools.shellcheck, "--severity=style", DEPLOY])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("args", [[], ["staging"], ["dev", "prod"]])
def test_bad_arguments_stop_before_touching_azure(args: list[str]) -> None:
    # No az call happens: usage errors exit 2 first (and az is not installed here anyway).
    done = run_tool(["bash", DEPLOY, *args])
    assert done.returncode == 2
    assert "usage" in done.stderr or "no parameters file" in done.stderr


def test_missing_secrets_stop_before_touching_azure() -> None:
    done = run_tool(["bash", DEPLOY, "dev"])
    assert done.returncode != 0
    assert "CAPTIONIZER_API_KEY_HASHES" in done.stderr


def test_pushed_images_are_the_ones_the_apps_run(bicep: BicepProject) -> None:
    pushed = set(re.findall(r"^build Dockerfile\.\w+ ([a-z0-9-]+)", DEPLOY.read_text(encoding="utf-8"), re.MULTILINE))
    apps = bicep.files[INFRA_DIR / "modules" / "apps.bicep"]
    images = [value.text for value in apps.vars.values() if isinstance(value, Expr)]
    run = {match for image in images for match in re.findall(r"/([a-z0-9-]+):\$\{imageTag\}", image)}
    assert run and pushed == run
