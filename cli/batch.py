"""Caption many images concurrently: what an image source is, and the bounded fan-out over the API."""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.client import ApiError, CaptionizerClient, JobJson
from cli.progress import ProgressBar

#: Suffixes a folder's files must have to be captioned: the formats the API accepts, as its
#: ``GET /v1/limits`` lists them (the CLI talks HTTP only, so it keeps a copy; a test compares them).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".avif"})


@dataclass(frozen=True)
class ImageSource:
    """One image to caption: exactly one of a URL, a local file or in-memory bytes."""

    #: How the user named it, shown in the output.
    label: str
    url: str | None = None
    path: Path | None = None
    data: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class BatchOptions:
    """How to submit and whether to wait for each job."""

    prompt: str | None = None
    max_new_tokens: int | None = None
    #: False: every job asks the server to caption afresh (``cache: false``, docs/cache.md).
    cache: bool = True
    wait: bool = True
    timeout_s: float = 300.0
    concurrency: int = 8


@dataclass
class Outcome:
    """What happened to one source: the job as last seen, and the client-side error if any."""

    source: ImageSource
    job: JobJson | None = None
    error: ApiError | None = None

    def is_ok(self, *, waited: bool) -> bool:
        """True when the job succeeded (or, without waiting, was accepted)."""
        if self.error is not None or self.job is None:
            return False
        status = self.job.get("status")
        return status == "succeeded" if waited else status not in {"failed", "canceled", "expired"}

    def as_json(self) -> dict[str, Any]:
        """One JSON line: the input, then the job's fields; ``error`` holds the client's error if it had one."""
        row: dict[str, Any] = {"input": self.source.label}
        if self.job is not None:
            row.update(self.job)
        else:
            row.update({"id": None, "status": "error", "caption": None})
        if self.error is not None:
            row["error"] = self.error.as_json()
        return row


def is_url(text: str) -> bool:
    """True for the http(s) URLs the API fetches itself."""
    return text.lower().startswith(("http://", "https://"))


def expand_inputs(inputs: Iterable[str], *, recursive: bool = False) -> list[ImageSource]:
    """Turn command-line arguments into sources: URLs as they are, folders into their image files.

    A path that does not exist stays a source; ``caption`` refuses the run then (a usage error, exit 2).
    """
    sources: list[ImageSource] = []
    for text in inputs:
        path = Path(text)
        if is_url(text):
            sources.append(ImageSource(label=text, url=text))
        elif path.is_dir():
            sources.extend(ImageSource(label=str(file), path=file) for file in _image_files(path, recursive=recursive))
        else:
            sources.append(ImageSource(label=text, path=path))
    return sources


def _image_files(folder: Path, *, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    files = (p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    # Hidden files (.DS_Store-style thumbnails) are never what the user meant.
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts))


async def caption_all(
    client: CaptionizerClient, sources: Sequence[ImageSource], options: BatchOptions, progress: ProgressBar
) -> list[Outcome]:
    """Submit every source, at most ``options.concurrency`` at a time; outcomes in the sources' order."""
    limit = asyncio.Semaphore(options.concurrency)

    async def run_one(source: ImageSource) -> Outcome:
        async with limit:
            outcome = await caption_one(client, source, options)
        progress.advance(failed=not outcome.is_ok(waited=options.wait))
        return outcome

    progress.draw(force=True)
    try:
        return list(await asyncio.gather(*(run_one(source) for source in sources)))
    finally:
        progress.close()


async def caption_one(client: CaptionizerClient, source: ImageSource, options: BatchOptions) -> Outcome:
    """Submit one source and, if asked, wait for its job to finish; never raises :class:`ApiError`."""
    outcome = Outcome(source)
    try:
        outcome.job = await _submit(client, source, options)
        if options.wait:
            outcome.job = await client.wait_for_job(outcome.job, timeout_s=options.timeout_s)
    except ApiError as exc:
        outcome.error = exc
    return outcome


async def _submit(client: CaptionizerClient, source: ImageSource, options: BatchOptions) -> JobJson:
    # One derived Idempotency-Key per input: running the same command again returns the same jobs.
    kwargs: dict[str, Any] = {
        "prompt": options.prompt,
        "max_new_tokens": options.max_new_tokens,
        "idempotent": True,
        "cache": options.cache,
    }
    if source.url is not None:
        return await client.submit_url(source.url, **kwargs)
    if source.path is not None:
        return await client.submit_file(source.path, **kwargs)
    if source.data is not None:
        suffix = mimetypes.guess_extension(source.content_type or "") or ""
        return await client.submit_bytes(source.data, "image" + suffix, content_type=source.content_type, **kwargs)
    raise ValueError(f"image source {source.label!r} has nothing to submit")
