"""Captioning a folder as one batch: upload in requests under the size limit, follow the batch's counts, resume by id.

``captionizer caption DIR`` sends the images as one batch (``POST /v1/batches``, then
``/items`` appends while more follow), so the whole folder costs a few requests and one
poll a second, whatever its size. Ctrl-C leaves the batch running and prints its id;
``captionizer batch status ID`` and ``captionizer batch results ID`` pick it up again. An upload
that stops part way (Ctrl-C, a refused request) closes the batch with the items already sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from cli.batch import BatchOptions, ImageSource, Outcome
from cli.client import ApiError, CaptionizerClient, JobJson
from cli.progress import ProgressBar

#: Base64 bytes per request, well under the API's 15 MiB default ``max_request_bytes``.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: Items per request.
MAX_REQUEST_ITEMS = 1_000
#: Results per page when reading them back (the API's maximum).
RESULTS_PAGE_ITEMS = 1_000
#: Seconds between two reads of the batch's counts.
POLL_S = 1.0
#: States a batch never leaves; mirrors ``shared.batches.model.BatchState`` without importing the service.
FINAL_BATCH_STATES = frozenset({"completed", "canceled"})
_FAILED = ("failed", "canceled", "expired")


@dataclass
class BatchRun:
    """The batch being submitted, and the sources that could not be (files that failed to read)."""

    batch_id: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    #: Items sent when an upload that stopped part way closed the batch; None while it has not.
    closed_after: int | None = None


def _item(source: ImageSource) -> dict[str, Any]:
    if source.url is not None:
        return {"image_url": source.url, "ref": source.label[-256:]}
    data = source.data if source.data is not None else source.path.read_bytes() if source.path else b""
    return {"image_base64": base64.b64encode(data).decode(), "ref": source.label[-256:]}


def request_groups(sources: Sequence[ImageSource]) -> Iterator[tuple[list[ImageSource], list[dict[str, Any]]]]:
    """Sources and their items, grouped so no request passes ``MAX_REQUEST_BYTES`` (one big image goes alone)."""
    group: list[ImageSource] = []
    items: list[dict[str, Any]] = []
    size = 0
    for source in sources:
        item = _item(source)
        item_size = len(item.get("image_base64", "")) + len(item.get("image_url", "")) + 64
        if items and (size + item_size > MAX_REQUEST_BYTES or len(items) >= MAX_REQUEST_ITEMS):
            yield group, items
            group, items, size = [], [], 0
        group.append(source)
        items.append(item)
        size += item_size
    if items:
        yield group, items


async def submit_batch(
    client: CaptionizerClient, sources: Sequence[ImageSource], options: BatchOptions, run: BatchRun
) -> list[ImageSource]:
    """Send every readable source into one batch; returns the sources sent, in item order."""
    sent: list[ImageSource] = []
    readable = []
    for source in sources:
        if source.path is not None and not source.path.is_file():
            run.outcomes.append(Outcome(source, error=ApiError("file_unreadable", f"cannot read {source.path}")))
        else:
            readable.append(source)
    groups = list(request_groups(readable))
    is_open = False
    try:
        for number, (group, items) in enumerate(groups):
            body: dict[str, Any] = {"items": items, "more_items": number < len(groups) - 1}
            if run.batch_id is None:
                body.update(_options(options))
                run.batch_id = str((await client.call("POST", "/v1/batches", json=body))["id"])
                # From here on Ctrl-C names the batch (cli.job_commands.report_interrupted): it goes on without us.
                client.submitted_batches.append(run.batch_id)
            else:
                await client.call("POST", f"/v1/batches/{run.batch_id}/items", json=body)
            sent.extend(group)
            is_open = body["more_items"]
    except BaseException:  # Ctrl-C (a cancelled task) as well as a refused request
        if run.batch_id is not None and is_open:
            await close_batch(client, run.batch_id)
            run.closed_after = len(sent)
        raise
    return sent


async def close_batch(client: CaptionizerClient, batch_id: str) -> None:
    """Close an upload that stopped part way, so the items sent end rather than wait, open, until the batch expires.

    Best effort: the close is an empty append, and if it fails too the batch still expires as before.
    """
    with contextlib.suppress(ApiError):
        await client.call("POST", f"/v1/batches/{batch_id}/items", json={"items": [], "more_items": False})


def _options(options: BatchOptions) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    if options.prompt is not None:
        chosen["prompt"] = options.prompt
    if options.max_new_tokens is not None:
        chosen["max_new_tokens"] = options.max_new_tokens
    return chosen


async def follow_batch(client: CaptionizerClient, batch_id: str, progress: ProgressBar) -> JobJson:
    """Poll the batch's counts into ``progress`` until it ends; returns the batch as last read."""
    while True:
        batch = await client.call("GET", f"/v1/batches/{batch_id}")
        counts = batch.get("counts", {})
        progress.update(int(batch.get("done", 0)), sum(int(counts.get(status, 0)) for status in _FAILED))
        if batch.get("status") in FINAL_BATCH_STATES:
            return batch
        await asyncio.sleep(POLL_S)


async def read_results(client: CaptionizerClient, batch_id: str) -> list[JobJson]:
    """Every item's result, in order, a page at a time."""
    results: list[JobJson] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(RESULTS_PAGE_ITEMS), **({"cursor": cursor} if cursor else {})}
        page = await client.call("GET", f"/v1/batches/{batch_id}/results", params=params)
        results.extend(page.get("items", []))
        cursor = page.get("next_cursor")
        if not cursor:
            return results


async def caption_batch(
    client: CaptionizerClient, sources: Sequence[ImageSource], options: BatchOptions, progress: ProgressBar, err: TextIO
) -> list[Outcome]:
    """Caption ``sources`` as one batch; outcomes in the sources' order (files that failed to read included)."""
    run = BatchRun()
    try:
        sent = await submit_batch(client, sources, options, run)
        if run.batch_id is None:
            return run.outcomes
        err.write(f"batch {run.batch_id}: {len(sent)} images\n")
        if options.wait:
            progress.draw(force=True)
            await follow_batch(client, run.batch_id, progress)
            progress.close()
        results = await read_results(client, run.batch_id)
    except ApiError as exc:
        if run.closed_after is not None:
            err.write(f"batch {run.batch_id}: closed after {run.closed_after} of {len(sources)} images: {exc}\n")
        return run.outcomes + [Outcome(source, error=exc) for source in sources if not _has(run, source)]
    by_source = {source: Outcome(source, job=_job_of(source, row)) for source, row in zip(sent, results, strict=False)}
    failed = {outcome.source: outcome for outcome in run.outcomes}
    return [by_source.get(source) or failed.get(source) or Outcome(source) for source in sources]


def _has(run: BatchRun, source: ImageSource) -> bool:
    return any(outcome.source == source for outcome in run.outcomes)


def _job_of(source: ImageSource, row: JobJson) -> JobJson:
    """A result row shaped like a job, with where its image came from."""
    return {**row, "source": "url" if source.url is not None else "upload"}


async def print_batch_status(client: CaptionizerClient, batch_id: str, out: TextIO) -> int:
    """``captionizer batch status ID``: the batch as JSON; exit 0 when it ended with every item succeeded."""
    batch = await client.call("GET", f"/v1/batches/{batch_id}")
    out.write(json.dumps(batch, indent=2) + "\n")
    counts = batch.get("counts", {})
    ok = batch.get("status") == "completed" and not any(counts.get(status) for status in _FAILED)
    return 0 if ok else 1


async def print_batch_results(client: CaptionizerClient, batch_id: str, out: TextIO) -> int:
    """``captionizer batch results ID``: one JSON line per item; exit 0 when every item succeeded."""
    results = await read_results(client, batch_id)
    for row in results:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0 if all(row.get("status") == "succeeded" for row in results) else 1
