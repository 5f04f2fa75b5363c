"""The web page in headless Chromium against the real stack: URL and upload captions, errors, keyboard use."""

from __future__ import annotations

import random
from pathlib import Path

from playwright.sync_api import Page, Request, expect

from model.shapes import caption_for, draw_shape
from tests.browser.conftest import JOB_TIMEOUT_MS, save_screenshot
from tests.servers import HostileServer
from tests.stack import needs_embedded_model


def submit_url(page: Page, url: str) -> None:
    """Type a URL and submit with Enter, as a keyboard user would."""
    field = page.get_by_label("Image URL")
    field.fill(url)
    field.press("Enter")


@needs_embedded_model
def test_url_is_captioned_with_the_models_caption(app_page: Page, image_server: HostileServer) -> None:
    caption = caption_for("circle", "red")

    submit_url(app_page, image_server.url("/image/shape.png"))

    expect(app_page.locator("#caption")).to_have_text(caption, timeout=JOB_TIMEOUT_MS)
    expect(app_page.get_by_role("status").first).to_contain_text("Done")
    expect(app_page.get_by_role("img", name=caption)).to_be_visible()  # the preview took the caption as alt
    expect(app_page.get_by_role("button", name="Cancel job")).to_be_hidden()
    recent = app_page.locator("#recent-list li")
    expect(recent).to_have_count(1)
    expect(recent.first).to_contain_text("succeeded")
    expect(recent.first).to_contain_text(caption)
    save_screenshot(app_page, "caption-by-url")


@needs_embedded_model
def test_uploaded_file_is_captioned(app_page: Page, tmp_path: Path) -> None:
    image = tmp_path / "blue-square.png"
    draw_shape("square", "blue", image_size=160, rng=random.Random(3)).save(image)

    app_page.get_by_label("Drop an image here, or choose a file").set_input_files(image)
    expect(app_page.locator("#file-name")).to_contain_text("blue-square.png")
    expect(app_page.locator("#preview")).to_be_visible()
    app_page.get_by_role("button", name="Caption it").click()

    expect(app_page.locator("#caption")).to_have_text(caption_for("square", "blue"), timeout=JOB_TIMEOUT_MS)
    expect(app_page.locator("#recent-list li").first).to_contain_text("blue-square.png")
    save_screenshot(app_page, "caption-by-upload")


def test_copy_button_puts_the_caption_on_the_clipboard(app_page: Page, image_server: HostileServer) -> None:
    app_page.context.grant_permissions(["clipboard-read", "clipboard-write"])

    submit_url(app_page, image_server.url("/image/shape.png"))
    expect(app_page.locator("#caption-box")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    app_page.get_by_role("button", name="Copy as alt text").click()

    expect(app_page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
    caption = app_page.locator("#caption").inner_text()
    assert caption and app_page.evaluate("navigator.clipboard.readText()") == caption


def test_image_the_server_cannot_fetch_shows_the_jobs_error(app_page: Page, image_server: HostileServer) -> None:
    submit_url(app_page, image_server.url("/status/404"))

    alert = app_page.get_by_role("alert")
    expect(alert).to_contain_text("Could not caption this image", timeout=JOB_TIMEOUT_MS)
    expect(alert).to_contain_text("fetch_failed")
    expect(app_page.locator("#recent-list li").first).to_contain_text("failed")
    save_screenshot(app_page, "error-fetch-failed")


def test_running_job_can_be_canceled(app_page: Page, image_server: HostileServer) -> None:
    submit_url(app_page, image_server.url("/slow-headers"))  # the worker waits on this fetch until its timeout

    cancel = app_page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_visible(timeout=JOB_TIMEOUT_MS)
    cancel.click()

    expect(app_page.get_by_role("status").first).to_have_text("Canceled.")
    expect(cancel).to_be_hidden()
    expect(app_page.locator("#recent-list li").first).to_contain_text("canceled")


def test_url_the_api_refuses_shows_the_problem_detail(app_page: Page) -> None:
    submit_url(app_page, "http://127.0.0.1:1/x.png")

    alert = app_page.get_by_role("alert")
    expect(alert).to_contain_text("port 1 is not allowed")
    expect(app_page.get_by_role("status").first).to_contain_text("url_not_allowed")


def test_malformed_url_is_refused_without_calling_the_api(app_page: Page) -> None:
    sent: list[Request] = []
    app_page.on("request", lambda request: sent.append(request) if "/v1/jobs" in request.url else None)

    submit_url(app_page, "not a url")

    expect(app_page.get_by_role("alert")).to_contain_text("is not an http or https URL")
    expect(app_page.get_by_label("Image URL")).to_be_focused()
    assert sent == []


def test_upload_that_is_not_an_image_shows_the_problem_detail(app_page: Page, tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("just some text pretending to be a PNG\n" * 4)

    app_page.get_by_label("Drop an image here, or choose a file").set_input_files(fake)
    app_page.get_by_role("button", name="Caption it").click()

    expect(app_page.get_by_role("alert")).to_contain_text("Not an image")


def test_rate_limit_shows_the_detail_and_when_to_retry(app_page: Page, image_server: HostileServer) -> None:
    # The stack runs without limits, so the API's 429 problem is played back by the browser itself.
    problem = {"type": "urn:captionizer:problem:rate_limited", "title": "Too many requests", "status": 429}
    problem |= {"detail": "this key made 60 requests in the last minute", "code": "rate_limited"}
    headers = {"Content-Type": "application/problem+json", "Retry-After": "7"}
    app_page.route("**/v1/jobs", lambda route: route.fulfill(status=429, headers=headers, json=problem))

    submit_url(app_page, image_server.url("/image/shape.png"))

    alert = app_page.get_by_role("alert")
    expect(alert).to_contain_text("Too many requests")
    expect(alert).to_contain_text("this key made 60 requests in the last minute. Try again in 7 s.")


def test_every_field_is_labelled_and_reachable_by_keyboard(app_page: Page) -> None:
    app_page.locator("details.options summary").click()
    for label in [
        "Image URL",
        "Drop an image here, or choose a file",
        "Prompt",
        "Longest caption, in tokens",
        "API key",
    ]:
        expect(app_page.get_by_label(label)).to_have_count(1)

    app_page.get_by_label("Image URL").focus()
    app_page.keyboard.press("Tab")
    expect(app_page.get_by_label("Drop an image here, or choose a file")).to_be_focused()


def test_api_key_is_remembered_and_sent_as_bearer(app_page: Page, image_server: HostileServer) -> None:
    app_page.locator("details.options summary").click()
    app_page.get_by_label("API key").fill("cap_example")
    app_page.get_by_label("API key").press("Tab")  # "change" fires on leaving the field
    app_page.reload()

    expect(app_page.get_by_label("API key")).to_have_value("cap_example")
    with app_page.expect_request(lambda request: request.url.endswith("/v1/jobs")) as submitted:
        submit_url(app_page, image_server.url("/image/shape.png"))
    assert submitted.value.headers["authorization"] == "Bearer cap_example"
    # The stack has no keys configured, so a key that is sent is refused (never silently anonymous).
    expect(app_page.get_by_role("alert")).to_contain_text("API key needed")
