"""Caption many images concurrently: what an image source is, and the bounded fan-out over the API."""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cli.client import ApiError, CaptionizerClient, JobJson
from cli.progress import ProgressBar

#: Suffixes a folder's files must have to be captioned: the formats the API accepts, as its
#: ``GET /v1/limits`` lists them (the CLI talks HTTP only, so it keeps a copy; a test compares them).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".avif"})
_ACCEPTED = "JPEG, PNG, GIF, WebP, BMP or AVIF"
_ACCEPTED_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/avif"})
#: Why an SVG is never sent: it is a program that draws, not pixels, and the model sees pixels.
SVG_REASON = (
    "skipped: SVG is a vector drawing (XML), not pixels, and the model captions pixels; "
    "render it to PNG first (e.g. rsvg-convert -o logo.png logo.svg)"
)


def unsupported_reason(name: str, media_type: str | None = None) -> str | None:
    """Why an image named ``name`` (or, without a suffix, of ``media_type``) is not sent, or None when it may be.

    Only what says "image" in a format the API does not read is refused here (``.svg``, ``.tiff``,
    ``.ico``, ``.heic``...); a name without a known suffix is sent, and the API sniffs its bytes.
    """
    suffix = PurePosixPath(name.lower()).suffix
    if suffix:
        if suffix in IMAGE_SUFFIXES:
            return None
        media_type = mimetypes.guess_type("image" + suffix)[0]
    elif media_type in _ACCEPTED_MEDIA_TYPES:
        return None
    if media_type == "image/svg+xml":
        return SVG_REASON
    if not (media_type or "").startswith("image/"):
        return None
    return (
        f"skipped: {suffix or media_type} is not an image format the API reads ({_ACCEPTED}); convert it to PNG first"
    )


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
    #: Why the file was never sent (an SVG, a TIFF...); None for sources that were.
    skipped: str | None = None

    def is_ok(self, *, waited: bool) -> bool:
        """True when the job succeeded (or, without waiting, was accepted)."""
        if self.error is not None or self.job is None or self.skipped is not None:
            return False
        status = self.job.get("status")
        return status == "succeeded" if waited else status not in {"failed", "canceled", "expired"}

    def as_json(self) -> dict[str, Any]:
        """One JSON line: the input, then the job's fields; ``error`` holds the client's error if it had one."""
        row: dict[str, Any] = {"input": self.source.label}
        if self.skipped is not None:
            row.update({"id": None, "status": "skipped", "caption": None})
            row["error"] = {"code": "unsupported_format", "message": self.skipped}
        elif self.job is not None:
            row.update(self.job)
        else:
            row.update({"id": None, "status": "error", "caption": None})
        if self.error is not None:
            row["error"] = self.error.as_json()
        return row


@dataclass
class Ledger:
    """What a run has done so far, kept outside its tasks so that Ctrl-C can still print it."""

    #: Sources the run was given.
    total: int = 0
    #: Outcomes received, in the order they ended.
    finished: list[Outcome] = field(default_factory=list)
    #: Sources sent and not ended yet → their job's id (None while the API has not answered the submit).
    in_flight: dict[ImageSource, str | None] = field(default_factory=dict)

    @property
    def not_sent(self) -> int:
        """Sources never sent (still waiting for a slot when the run stopped)."""
        return max(0, self.total - len(self.finished) - len(self.in_flight))


def is_url(text: str) -> bool:
    """True for the http(s) URLs the API fetches itself."""
    return text.lower().startswith(("http://", "https://"))


@dataclass
class Inputs:
    """What the command line names: the sources to send, the images skipped (with why), other files left out."""

    sources: list[ImageSource] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)
    #: Files in the folders given that are not images at all (README.md, .txt...), only counted.
    not_images: int = 0


def find_inputs(inputs: Iterable[str], *, recursive: bool = False) -> Inputs:
    """Turn command-line arguments into sources: URLs as they are, folders into their image files.

    Images in formats the API does not read (SVG, TIFF, ICO...), named or found in a folder, are
    skipped with the reason. A path that does not exist stays a source; ``caption`` refuses the run
    then (a usage error, exit 2).
    """
    found = Inputs()
    for text in inputs:
        path = Path(text)
        if is_url(text):
            found.sources.append(ImageSource(label=text, url=text))
        elif path.is_dir():
            _add_folder(found, path, recursive=recursive)
        else:
            _add_file(found, ImageSource(label=text, path=path))
    return found


def expand_inputs(inputs: Iterable[str], *, recursive: bool = False) -> list[ImageSource]:
    """The sources of :func:`find_inputs` alone."""
    return find_inputs(inputs, recursive=recursive).sources


def _add_file(found: Inputs, source: ImageSource) -> None:
    reason = unsupported_reason(source.label)
    if reason is None:
        found.sources.append(source)
    else:
        found.skipped.append(Outcome(source, skipped=reason))


def _add_folder(found: Inputs, folder: Path, *, recursive: bool) -> None:
    pattern = "**/*" if recursive else "*"
    # Hidden files (.DS_Store-style thumbnails) are never what the user meant.
    files = sorted(
        p
        for p in folder.glob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for file in files:
        if file.suffix.lower() in IMAGE_SUFFIXES or unsupported_reason(file.name) is not None:
            _add_file(found, ImageSource(label=str(file), path=file))
        else:
            found.not_images += 1


async def caption_all(
    client: CaptionizerClient,
    sources: Sequence[ImageSource],
    options: BatchOptions,
    progress: ProgressBar,
    ledger: Ledger | None = None,
) -> list[Outcome]:
    """Submit every source, at most ``options.concurrency`` at a time; outcomes in the sources' order.

    ``ledger`` follows the run as it goes (what ended, what is in flight), for a report after Ctrl-C.
    """
    limit = asyncio.Semaphore(options.concurrency)
    ledger = ledger if ledger is not None else Ledger()
    ledger.total += len(sources)

    async def run_one(source: ImageSource) -> Outcome:
        async with limit:
            outcome = await caption_one(client, source, options, ledger)
        ledger.in_flight.pop(source, None)
        ledger.finished.append(outcome)
        progress.advance(failed=not outcome.is_ok(waited=options.wait))
        return outcome

    progress.draw(force=True)
    try:
        return list(await asyncio.gather(*(run_one(source) for source in sources)))
    finally:
        progress.close()


async def caption_one(
    client: CaptionizerClient, source: ImageSource, options: BatchOptions, ledger: Ledger | None = None
) -> Outcome:
    """Submit one source and, if asked, wait for its job to finish; never raises :class:`ApiError`."""
    outcome = Outcome(source)
    if ledger is not None:
        # Before the request: a Ctrl-C while it is on its way must still name this image.
        ledger.in_flight[source] = None
    try:
        outcome.job = await _submit(client, source, options)
        if ledger is not None:
            ledger.in_flight[source] = str(outcome.job.get("id"))
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
