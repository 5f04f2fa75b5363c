"""cli/batches.py: a folder is cut into requests under the size limit, in order, a big image alone; Ctrl-C names it."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest

import cli.batches
from cli.batch import ImageSource
from cli.batches import request_groups
from cli.main import EXIT_INTERRUPTED, Streams, run


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
