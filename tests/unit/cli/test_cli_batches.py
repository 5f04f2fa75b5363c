"""cli/batches.py: a folder is cut into requests under the size limit, in order, a big image alone."""

from __future__ import annotations

import base64

import pytest

import cli.batches
from cli.batch import ImageSource
from cli.batches import request_groups


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
