"""/docs and /redoc render in Chromium with every request off the stack blocked, under the API's CSP."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import ConsoleMessage, Page, Route, expect

from scripts.stack import LocalStack
from tests.browser.conftest import save_screenshot


class OfflinePage:
    """A page that may reach only the stack: anything else is aborted and recorded, as are CSP reports."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.blocked: list[str] = []
        self.csp_violations: list[str] = []
        self.errors: list[str] = []
        page.route("**/*", self._only_the_stack)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _only_the_stack(self, route: Route) -> None:
        url = route.request.url
        if url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")

    def _on_console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.csp_violations.append(message.text)


@pytest.fixture
def offline(page: Page, stack: LocalStack, request: pytest.FixtureRequest) -> Iterator[OfflinePage]:
    handle = OfflinePage(page, stack.api_url)
    yield handle
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        save_screenshot(page, f"failed-{request.node.name}")


def _assert_clean(offline: OfflinePage) -> None:
    assert offline.blocked == [], f"the page tried to leave the stack: {offline.blocked}"
    assert offline.csp_violations == [], offline.csp_violations
    assert offline.errors == [], offline.errors


def test_swagger_ui_lists_the_operations_offline(offline: OfflinePage) -> None:
    page = offline.page
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Captionizer")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/v1/jobs").first).to_be_visible()
    # An operation opens and shows its parameters: the UI is alive, not just drawn.
    page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}").first.click()
    expect(page.locator(".opblock.is-open .parameters-container").first).to_be_visible()
    save_screenshot(page, "docs-swagger-ui")
    _assert_clean(offline)


def test_redoc_lists_the_operations_offline(offline: OfflinePage) -> None:
    page = offline.page
    page.goto("/redoc")
    expect(page.get_by_role("heading", name="Captionizer", exact=False).first).to_be_visible()
    # ReDoc's side menu lists every operation, the job routes among them.
    expect(page.get_by_role("menuitem", name=re.compile("job", re.IGNORECASE)).first).to_be_visible()
    # Its search runs in a worker the CSP allows (worker-src blob:): typing finds an operation.
    page.get_by_placeholder("Search...").fill("cancel")
    search = page.get_by_role("search")
    expect(search.get_by_role("menuitem", name=re.compile("cancel", re.IGNORECASE)).first).to_be_visible()
    save_screenshot(page, "docs-redoc")
    # ReDoc's footer logo no longer trips the CSP (api/routes/docs.py makes it local).
    _assert_clean(offline)
