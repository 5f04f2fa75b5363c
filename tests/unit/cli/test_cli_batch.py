"""cli.batch: folders expanded into image files, bounded concurrency, one outcome per source."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from cli.batch import BatchOptions, ImageSource, Outcome, caption_all, expand_inputs, find_inputs, unsupported_reason
from cli.client import CaptionizerClient
from cli.progress import ProgressBar
from tests.unit.cli.fake_api import FakeApi


def make_tree(root: Path) -> None:
    for name in ["b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.webp", ".cache/d.png"]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_folder_expands_to_its_image_files_sorted(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert [s.path for s in expand_inputs([str(tmp_path)])] == [tmp_path / "a.JPG", tmp_path / "b.png"]


def test_recursive_folder_includes_subfolders_but_not_hidden_ones(tmp_path: Path) -> None:
    make_tree(tmp_path)
    paths = [s.path for s in expand_inputs([str(tmp_path)], recursive=True)]
    assert paths == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "sub/c.webp"]


def test_urls_and_missing_files_are_kept_as_given(tmp_path: Path) -> None:
    sources = expand_inputs(["https://img.test/a.png", "HTTP://img.test/b", str(tmp_path / "gone.png")])
    assert sources == [
        ImageSource(label="https://img.test/a.png", url="https://img.test/a.png"),
        ImageSource(label="HTTP://img.test/b", url="HTTP://img.test/b"),
        ImageSource(label=str(tmp_path / "gone.png"), path=tmp_path / "gone.png"),
    ]


def caption(api: FakeApi, sources: list[ImageSource], options: BatchOptions) -> tuple[list[Outcome], str]:
    stream = io.StringIO()

    async def go() -> list[Outcome]:
        async with CaptionizerClient("http://api.test", transport=api.transport()) as client:
            return await caption_all(client, sources, options, ProgressBar(len(sources), stream, enabled=True))

    return asyncio.run(go()), stream.getvalue()


def test_many_sources_run_concurrently_within_the_bound(fake_api: FakeApi) -> None:
    sources = [ImageSource(label=f"u{i}", url=f"http://img.test/{i}.png") for i in range(12)]

    outcomes, _ = caption(fake_api, sources, BatchOptions(concurrency=3))

    assert fake_api.max_in_flight == 3
    assert [o.job["caption"] for o in outcomes if o.job] == [f"a caption of {i}.png" for i in range(12)]


def test_each_failure_stays_on_its_own_outcome(fake_api: FakeApi, tmp_path: Path) -> None:
    sources = [
        ImageSource(label="ok", url="http://img.test/ok.png"),
        ImageSource(label="job fails", url="http://img.test/broken.png"),
        ImageSource(label="refused", url="http://blocked.test/x.png"),
        ImageSource(label="missing", path=tmp_path / "missing.png"),
    ]

    outcomes, progress = caption(fake_api, sources, BatchOptions())

    assert [o.is_ok(waited=True) for o in outcomes] == [True, False, False, False]
    assert outcomes[1].job and outcomes[1].job["error"]["code"] == "fetch_failed"
    assert [o.error.code if o.error else None for o in outcomes] == [None, None, "url_not_allowed", "file_unreadable"]
    assert progress.endswith("[########################] 4/4 done, 3 failed\n")


def test_without_wait_a_queued_job_is_a_success(fake_api: FakeApi) -> None:
    outcomes, _ = caption(fake_api, [ImageSource(label="a", url="http://img.test/a.png")], BatchOptions(wait=False))
    assert outcomes[0].job and outcomes[0].job["status"] == "queued"
    assert outcomes[0].is_ok(waited=False)
    assert [r.method for r in fake_api.requests] == ["POST"]


def test_in_memory_bytes_are_uploaded_with_a_matching_file_name(fake_api: FakeApi) -> None:
    source = ImageSource(label="data:", data=b"GIF89a", content_type="image/gif")
    outcomes, _ = caption(fake_api, [source], BatchOptions())
    assert outcomes[0].job and outcomes[0].job["caption"] == "a caption of image.gif"


def test_outcome_json_carries_the_input_and_the_client_error() -> None:
    from cli.client import ApiError

    outcome = Outcome(ImageSource(label="x.png"), error=ApiError("file_unreadable", "cannot read x.png"))
    assert outcome.as_json() == {
        "input": "x.png",
        "id": None,
        "status": "error",
        "caption": None,
        "error": {"code": "file_unreadable", "message": "cannot read x.png"},
    }


def test_a_folder_reports_images_it_cannot_send_with_the_reason_and_counts_other_files(tmp_path: Path) -> None:
    for name in ("a.png", "b.tiff", "c.ico", "d.svg", "notes.txt", "README.md"):
        (tmp_path / name).write_bytes(b"x")
    found = find_inputs([str(tmp_path)])
    assert [source.path for source in found.sources] == [tmp_path / "a.png"]
    reasons = {Path(outcome.source.label).name: outcome.skipped or "" for outcome in found.skipped}
    assert sorted(reasons) == ["b.tiff", "c.ico", "d.svg"]
    assert ".tiff is not an image format the API reads" in reasons["b.tiff"]
    assert "SVG is a vector drawing" in reasons["d.svg"]
    assert found.not_images == 2


def test_a_named_svg_is_skipped_not_sent_and_its_row_says_why(tmp_path: Path) -> None:
    found = find_inputs([str(tmp_path / "logo.svg"), str(tmp_path / "photo")])
    assert [source.label for source in found.sources] == [str(tmp_path / "photo")]  # no suffix: the API sniffs
    [skipped] = found.skipped
    assert not skipped.is_ok(waited=True) and not skipped.is_ok(waited=False)
    row = skipped.as_json()
    assert (row["status"], row["error"]["code"]) == ("skipped", "unsupported_format")
    assert row["input"] == str(tmp_path / "logo.svg")


@pytest.mark.parametrize(
    ("name", "media_type", "refused"),
    [
        ("a.PNG", None, False),
        ("a.jpeg", None, False),
        ("a", None, False),
        ("page.html", None, False),
        ("a.svg", None, True),
        ("a.tif", None, True),
        ("a.heic", None, True),
        ("", "image/svg+xml", True),
        ("", "image/png", False),
    ],
)
def test_unsupported_reason(name: str, media_type: str | None, refused: bool) -> None:
    assert (unsupported_reason(name, media_type) is not None) == refused
