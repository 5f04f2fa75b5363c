"""cli/batches.py: a folder is cut into requests under the size limit, in order, a big image alone; Ctrl-C names it.

An upload stopped part way (Ctrl-C, a refused request) closes its batch with what was sent.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import httpx
import pytest

import cli.batches
from cli.batch import BatchOptions, ImageSource, Outcome
from cli.batches import BatchRun, request_groups
from cli.client import ApiError, CaptionizerClient
from cli.main import EXIT_INTERRUPTED, Streams, run
from cli.progress import ProgressBar


def test_requests_stay_under_the_byte_budget_keep_order_and_send_a_big_image_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli.batches, "MAX_REQUEST_BYTES", 1_000)
    sizes = [300, 300, 300, 2_000, 100, 100]
    sources = [ImageSource(label=f"{i}.png", data=b"x" * size) for i, size in enumerate(sizes)]

    groups = list(request_groups(sources))

    assert [[source.label for source in group] for group, _ in groups] == [
        ["0.png", "1.png"],
        ["2.png"],
        ["3.png"],
        ["4.png", "5.png"],
    ]
    for group, items in groups:
        assert [base64.b64decode(item["image_base64"]) for item in items] == [source.data for source in group]
        assert [item["ref"] for item in items] == [source.label for source in group]


def test_requests_hold_at_most_max_request_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.batches, "MAX_REQUEST_ITEMS", 3)
    sources = [ImageSource(label=f"u{i}", url=f"https://e.com/{i}.png") for i in range(7)]

    groups = list(request_groups(sources))

    assert [len(items) for _, items in groups] == [3, 3, 1]
    assert groups[2][1] == [{"image_url": "https://e.com/6.png", "ref": "u6"}]


def test_ctrl_c_while_following_a_folder_s_batch_names_it_and_exits_130(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"png")
    batch_id = "bat_AAAAAAAAAAAAAAAAAAAAAA"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/batches":
            return httpx.Response(202, json={"id": batch_id, "status": "running", "total": 1, "done": 0})
        raise KeyboardInterrupt  # Ctrl-C while the CLI follows the batch's counts

    streams = Streams(io.StringIO(), io.StringIO())
    code = run(
        ["caption", str(folder), "--wait", "--api", "http://api.test"],
        transport=httpx.MockTransport(handle),
        streams=streams,
    )

    assert code == EXIT_INTERRUPTED and streams.out.getvalue() == ""
    err = streams.err.getvalue().splitlines()
    assert err[err.index("interrupted") + 1 :] == [
        f"batch {batch_id} goes on without this command; pick it up again with:",
        f"  captionizer batch status {batch_id}",
        f"  captionizer batch results {batch_id}",
    ]


class _UploadGate:
    """An API whose second upload request waits (or is refused); it records every batch request it sees."""

    batch_id = "bat_BBBBBBBBBBBBBBBBBBBBBB"

    def __init__(self, second_answer: httpx.Response | None = None) -> None:
        self.second_answer = second_answer  # None: hold the second request until the test cancels the CLI
        self.bodies: list[dict[str, object]] = []
        self.second_arrived = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append({"path": request.url.path, **body})
        if request.url.path == "/v1/batches":
            return httpx.Response(202, json={"id": self.batch_id, "status": "open", "total": len(body["items"])})
        if body["items"] and len(self.bodies) == 2:
            self.second_arrived.set()
            if self.second_answer is None:
                await asyncio.Event().wait()  # never set: only the cancel ends this request
            return self.second_answer or httpx.Response(500)
        return httpx.Response(202, json={"id": self.batch_id, "status": "running"})


def _three_requests_of_sources(monkeypatch: pytest.MonkeyPatch) -> list[ImageSource]:
    monkeypatch.setattr(cli.batches, "MAX_REQUEST_ITEMS", 2)
    return [ImageSource(label=f"u{i}", url=f"https://e.com/{i}.png") for i in range(5)]


def test_ctrl_c_during_a_folder_upload_closes_the_batch_with_the_items_already_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sources = _three_requests_of_sources(monkeypatch)
    api = _UploadGate()

    async def interrupt_the_second_request() -> BatchRun:
        run = BatchRun()
        async with CaptionizerClient("http://api.test", transport=httpx.MockTransport(api.handle)) as client:
            upload = asyncio.ensure_future(cli.batches.submit_batch(client, sources, BatchOptions(), run))
            await api.second_arrived.wait()
            upload.cancel()  # what asyncio.run does with the CLI's main task on Ctrl-C
            with pytest.raises(asyncio.CancelledError):
                await upload
        return run

    run = asyncio.run(interrupt_the_second_request())

    close_path = f"/v1/batches/{api.batch_id}/items"
    assert [(body["path"], len(body["items"]), body["more_items"]) for body in api.bodies] == [  # type: ignore[arg-type]
        ("/v1/batches", 2, True),
        (close_path, 2, True),
        (close_path, 0, False),  # the close: the batch ends with the 2 items the API took
    ]
    assert run.batch_id == api.batch_id and run.closed_after == 2


def test_a_refused_upload_request_closes_the_batch_and_says_how_far_it_got(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sources = _three_requests_of_sources(monkeypatch)
    refused = httpx.Response(413, json={"code": "request_too_large", "detail": "too big", "status": 413})
    api = _UploadGate(second_answer=refused)
    err = io.StringIO()

    async def caption() -> list[Outcome]:
        async with CaptionizerClient("http://api.test", transport=httpx.MockTransport(api.handle)) as client:
            progress = ProgressBar(len(sources), err, enabled=False)
            return await cli.batches.caption_batch(client, sources, BatchOptions(), progress, err)

    outcomes = asyncio.run(caption())

    assert [(len(body["items"]), body["more_items"]) for body in api.bodies] == [(2, True), (2, True), (0, False)]  # type: ignore[arg-type]
    assert err.getvalue() == f"batch {api.batch_id}: closed after 2 of 5 images: too big (request_too_large)\n"
    assert [outcome.error.code if outcome.error else None for outcome in outcomes] == ["request_too_large"] * 5


def test_an_upload_refused_at_its_first_request_has_no_batch_to_close(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _three_requests_of_sources(monkeypatch)
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(400, json={"code": "url_not_allowed", "detail": "no", "status": 400})

    async def submit() -> None:
        async with CaptionizerClient("http://api.test", transport=httpx.MockTransport(handle)) as client:
            await cli.batches.submit_batch(client, sources, BatchOptions(), BatchRun())

    with pytest.raises(ApiError):
        asyncio.run(submit())
    assert seen == ["/v1/batches"]
