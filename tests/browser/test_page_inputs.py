"""The web page's inputs in Chromium against the real stack: every way of giving an image keeps its preview,
a new input clears the old result, the result scrolls into view, several files become one job each, and the
form takes its limits from the server."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from model.shapes import caption_for, draw_shape
from scripts.stack import LocalStack
from tests.browser.conftest import JOB_TIMEOUT_MS, save_screenshot
from tests.conftest import REPO_ROOT
from tests.stack import needs_embedded_model

RED_CIRCLE = caption_for("circle", "red")


def shape_file(folder: Path, name: str, shape: str, colour: str) -> tuple[Path, str]:
    path = folder / name
    draw_shape(shape, colour, image_size=160, rng=random.Random(5)).save(path)
    return path, caption_for(shape, colour)


def sample_url(stack: LocalStack, name: str = "red-circle.png") -> str:
    return f"{stack.api_url}/samples/{name}"


def expect_preview_loaded(page: Page) -> None:
    preview = page.locator("#preview")
    expect(preview).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.getElementById('preview'); return i.complete && i.naturalWidth > 0; }"
    )


def caption_it(page: Page) -> None:
    page.get_by_role("button", name="Caption it").click()


def drop_file(page: Page, path: Path) -> None:
    """Drop ``path`` on the drop zone as a browser would (a DataTransfer holding a File)."""
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, { type: "image/png" }));
            document.getElementById("drop-zone").dispatchEvent(
                new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode()],
    )


def paste_file(page: Page, path: Path) -> None:
    """Paste ``path`` as an image on the clipboard (Ctrl+V of a copied image)."""
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode()],
    )


@needs_embedded_model
@pytest.mark.parametrize("how", ["picker", "drop", "paste", "url"])
def test_the_preview_survives_every_input_path(app_page: Page, stack: LocalStack, tmp_path: Path, how: str) -> None:
    path, caption = shape_file(tmp_path, f"{how}.png", "square", "green")
    if how == "picker":
        app_page.get_by_label("Drop an image here, or choose a file").set_input_files(path)
    elif how == "drop":
        drop_file(app_page, path)
    elif how == "paste":
        paste_file(app_page, path)
    else:
        app_page.get_by_label("Image URL").fill(sample_url(stack, "green-square.png"))
        caption = caption_for("square", "green")
    expect_preview_loaded(app_page)

    caption_it(app_page)

    expect(app_page.locator("#caption")).to_have_text(caption, timeout=JOB_TIMEOUT_MS)
    expect_preview_loaded(app_page)
    expect(app_page.get_by_role("img", name=caption)).to_be_visible()
    # Shown again from the recent jobs, the job keeps its preview too.
    app_page.locator("#recent-list button").first.click()
    expect(app_page.locator("#caption")).to_have_text(caption, timeout=JOB_TIMEOUT_MS)
    expect_preview_loaded(app_page)


@needs_embedded_model
@pytest.mark.parametrize("new_input", ["file", "url"])
def test_a_new_input_clears_the_old_result_and_its_copy_button(
    app_page: Page, stack: LocalStack, tmp_path: Path, new_input: str
) -> None:
    app_page.get_by_label("Image URL").fill(sample_url(stack))
    caption_it(app_page)
    expect(app_page.locator("#caption")).to_have_text(RED_CIRCLE, timeout=JOB_TIMEOUT_MS)
    copy = app_page.get_by_role("button", name="Copy as alt text")
    expect(copy).to_be_visible()

    if new_input == "file":
        path, _ = shape_file(tmp_path, "next.png", "triangle", "blue")
        app_page.get_by_label("Drop an image here, or choose a file").set_input_files(path)
    else:
        app_page.get_by_label("Image URL").fill(sample_url(stack, "green-square.png"))

    expect(copy).to_be_hidden()
    expect(app_page.locator("#caption")).to_have_text("")
    expect(app_page.locator("#status")).to_have_text("Ready: press Enter or Caption it.")
    expect(app_page.get_by_role("alert")).to_be_hidden()


@needs_embedded_model
def test_the_result_scrolls_into_view(app_page: Page, stack: LocalStack) -> None:
    app_page.set_viewport_size({"width": 800, "height": 420})  # the result card starts below the fold
    expect(app_page.locator("#caption-box")).not_to_be_in_viewport()
    app_page.get_by_label("Image URL").fill(sample_url(stack))
    app_page.get_by_label("Image URL").press("Enter")

    expect(app_page.locator("#caption")).to_have_text(RED_CIRCLE, timeout=JOB_TIMEOUT_MS)
    expect(app_page.locator("#caption")).to_be_in_viewport()
    save_screenshot(app_page, "result-scrolled-into-view")


@needs_embedded_model
def test_a_sample_gives_a_first_caption_in_one_click(app_page: Page) -> None:
    app_page.get_by_role("button", name="red circle").click()
    expect(app_page.get_by_label("Image URL")).to_have_value(f"{app_page.url.rstrip('/')}/samples/red-circle.png")
    app_page.get_by_label("Image URL").press("Enter")
    expect(app_page.locator("#caption")).to_have_text(RED_CIRCLE, timeout=JOB_TIMEOUT_MS)


@needs_embedded_model
def test_several_files_become_one_job_each_with_its_own_copy_button(app_page: Page, tmp_path: Path) -> None:
    app_page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    files = [
        shape_file(tmp_path, "one.png", "circle", "red"),
        shape_file(tmp_path, "two.png", "square", "blue"),
        shape_file(tmp_path, "three.png", "triangle", "yellow"),
    ]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")

    app_page.get_by_label("Drop an image here, or choose a file").set_input_files([p for p, _ in files] + [notes])
    expect(app_page.locator("#file-name")).to_contain_text("4 files")
    caption_it(app_page)

    rows = app_page.locator("#file-jobs li")
    expect(rows).to_have_count(4)
    for index, (path, caption) in enumerate(files):
        expect(rows.nth(index)).to_contain_text(path.name)
        expect(rows.nth(index).locator(".file-job-caption")).to_have_text(caption, timeout=JOB_TIMEOUT_MS)
        expect(rows.nth(index).get_by_role("img", name=caption)).to_be_visible()
    expect(rows.nth(3)).to_contain_text("not submitted")
    expect(rows.nth(3).get_by_role("button")).to_be_hidden()
    # Only the files sent count as done (#24): notes.txt never was.
    expect(app_page.locator("#status")).to_have_text("Done: 3 files, 1 not sent.")

    app_page.get_by_role("button", name="Copy alt text of two.png").click()
    expect(rows.nth(1)).to_contain_text("Copied to the clipboard.")
    assert app_page.evaluate("navigator.clipboard.readText()") == files[1][1]
    expect(app_page.locator("#recent-list li")).to_have_count(3)
    save_screenshot(app_page, "several-files")


def test_too_many_files_are_refused_before_anything_is_sent(app_page: Page, tmp_path: Path) -> None:
    paths = []
    for index in range(21):
        path = tmp_path / f"f{index}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
        paths.append(path)
    sent: list[str] = []
    app_page.on("request", lambda request: sent.append(request.url) if request.url.endswith("/v1/jobs") else None)
    app_page.get_by_label("Drop an image here, or choose a file").set_input_files(paths)
    caption_it(app_page)
    expect(app_page.get_by_role("alert")).to_contain_text("Choose at most 20 files at once; 21 were chosen.")
    assert sent == []


def test_the_form_takes_its_limits_from_the_server(app_page: Page, stack: LocalStack) -> None:
    limits = httpx.get(f"{stack.api_url}/v1/limits").json()
    expect(app_page.locator("html")).to_have_attribute("data-limits", "loaded")
    expect(app_page.get_by_label("Longest caption, in tokens")).to_have_attribute(
        "max", str(limits["max_new_tokens_limit"])
    )
    expect(app_page.get_by_label("Prompt")).to_have_attribute("maxlength", str(limits["max_prompt_chars"]))
    accept = app_page.get_by_label("Drop an image here, or choose a file").get_attribute("accept") or ""
    assert set(accept.split(",")) == {
        item for fmt in limits["image_formats"] for item in [fmt["media_type"], *fmt["suffixes"]]
    }
    assert ".tif" not in accept


def test_the_page_offers_the_four_samples_the_readme_lists(app_page: Page) -> None:
    served = sorted(path.name for path in (REPO_ROOT / "api" / "samples").glob("*.png"))
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(served) == 4 and all(f"`{name}`" in readme or f"/samples/{name}" in readme for name in served)
    offered = app_page.locator("#samples button[data-sample]")
    expect(offered).to_have_count(4)
    assert sorted(offered.evaluate_all("(buttons) => buttons.map((b) => b.dataset.sample)")) == served


@needs_embedded_model
def test_refused_and_undecodable_files_show_no_broken_preview(app_page: Page, tmp_path: Path) -> None:
    good, caption = shape_file(tmp_path, "good.png", "circle", "red")
    scan = tmp_path / "scan.tiff"  # an image type the API does not take: refused before it is sent
    scan.write_bytes(b"II*\x00" + bytes(64))
    broken = tmp_path / "broken.png"  # a PNG by its name that no browser can draw
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))

    app_page.get_by_label("Drop an image here, or choose a file").set_input_files([good, scan, broken])
    caption_it(app_page)

    rows = app_page.locator("#file-jobs li")
    expect(rows).to_have_count(3)
    expect(rows.nth(0).locator(".file-job-caption")).to_have_text(caption, timeout=JOB_TIMEOUT_MS)
    expect(rows.nth(1)).to_contain_text("not submitted")
    expect(rows.nth(2).locator(".file-job-caption")).to_contain_text("image_corrupt", timeout=JOB_TIMEOUT_MS)
    expect(app_page.locator("#status")).to_have_text("Done: 2 files, 1 not sent.")
    # Every preview is a picture or the empty box: none is an <img> with a source it could not draw.
    broken_icons = rows.locator("img.file-job-preview").evaluate_all(
        "(images) => images.filter((i) => i.getAttribute('src') && !(i.complete && i.naturalWidth > 0))"
        ".map((i) => i.alt)"
    )
    assert broken_icons == []
    for index in (1, 2):
        expect(rows.nth(index).locator("img.file-job-preview")).to_have_class("file-job-preview no-preview")
    save_screenshot(app_page, "refused-files-without-broken-previews")


def test_the_page_says_when_the_demonstration_model_serves(app_page: Page, stack: LocalStack) -> None:
    limits = httpx.get(f"{stack.api_url}/v1/limits", timeout=30).json()
    expect(app_page.locator("html")).to_have_attribute("data-limits", "loaded")
    hint = app_page.locator("#model-hint")
    if limits["demonstration_model"]:
        expect(hint).to_be_visible()
        expect(hint).to_have_text(limits["model_hint"])
        expect(hint).to_contain_text("CAPTIONIZER_MODEL=microsoft/git-base-textcaps")
    else:
        expect(hint).to_be_hidden()
