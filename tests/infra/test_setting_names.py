"""Every CAPTIONIZER_* variable that the ops files set names a real setting, with a valid value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bicep_source import BicepProject, Expr
from infra_toolbox import INFRA_DIR, REPO_ROOT, SETTING_VARIABLES

from shared.settings import Settings

_VARIABLE = re.compile(r"\bCAPTIONIZER_[A-Z0-9_]*[A-Z0-9]\b")
#: Variables the servers read themselves, not our settings (uvicorn's --forwarded-allow-ips).
SERVER_VARIABLES = frozenset({"FORWARDED_ALLOW_IPS"})


def _ops_files() -> list[Path]:
    names = ("Dockerfile.api", "Dockerfile.worker", "docker-compose.yml", "docker-compose.prod.yml", ".dockerignore")
    files = [REPO_ROOT / name for name in names]
    files += [path for path in sorted(INFRA_DIR.rglob("*")) if path.is_file()]
    files += [REPO_ROOT / "docs" / "deploy.md"]
    return files


@pytest.mark.parametrize("path", _ops_files(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_captionizer_variable_names_a_setting(path: Path) -> None:
    assert path.is_file(), f"{path} is missing"
    unknown = sorted(set(_VARIABLE.findall(path.read_text(encoding="utf-8"))) - SETTING_VARIABLES)
    assert not unknown, f"{path.name} names variables no setting reads: {unknown}"


def test_literal_setting_values_in_the_container_apps_validate(
    bicep: BicepProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = 0
    for owner, app in bicep.resources("Microsoft.App/containerApps"):
        properties = bicep.resolve(owner, app.properties["properties"])[1]
        for container in properties["template"]["containers"]:
            for entry in bicep.resolve(owner, container)[1].get("env", []):
                entry = bicep.resolve(owner, entry)[1]
                if entry["name"] in SERVER_VARIABLES:
                    continue
                assert entry["name"] in SETTING_VARIABLES, f"{app.symbol}: {entry['name']} is not a setting"
                value = bicep.resolve(owner, entry.get("value"))[1]
                if isinstance(value, str | int | bool) and not isinstance(value, Expr):
                    monkeypatch.setenv(entry["name"], str(value).lower() if isinstance(value, bool) else str(value))
                    Settings()  # raises on a value the settings refuse
                    monkeypatch.delenv(entry["name"])
                    seen += 1
    assert seen >= 1
