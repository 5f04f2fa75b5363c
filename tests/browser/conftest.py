"""Browser tests: Debian's Chromium, driven by pytest-playwright, against the integration stack.

Playwright's own browser download is never used (``executable_path`` points at /usr/bin/chromium,
which ``.ci/run`` installs). A failing test leaves a screenshot in ``artifacts/browser/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from scripts.stack import LocalStack
from tests.conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Headless, sandbox off (CI runs as root in a container), and no background calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS_DIR = REPO_ROOT / "artifacts" / "browser"
#: Captioning on a CPU worker takes seconds; Playwright's 5 s default for expect() is too short.
JOB_TIMEOUT_MS = 90_000


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options, pointed at the system Chromium."""
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (apt-get install chromium; .ci/run does it)")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A desktop-sized viewport, so screenshots show the whole page."""
    return {**browser_context_args, "viewport": {"width": 1000, "height": 1200}}


@pytest.fixture(scope="session")
def base_url(stack: LocalStack) -> str:
    """The API under test, so ``page.goto("/")`` opens the web page.

    This also replaces pytest-playwright's own fallback fixture, an instance method that pytest 9
    deprecates (an error under ``filterwarnings = error``).
    """
    return stack.api_url


@pytest.fixture
def app_page(page: Page, request: pytest.FixtureRequest) -> Iterator[Page]:
    """The web page, loaded; fails the test on any uncaught script error."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        save_screenshot(page, f"failed-{request.node.name}")
    assert errors == [], f"uncaught errors on the page: {errors}"


def save_screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as ``artifacts/browser/<name>.png``."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Keep each phase's report on the item, so a fixture's teardown knows whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
