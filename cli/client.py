"""An async httpx client of the Captionizer HTTP API: submit jobs, long-poll them, cancel them.

Problem responses (RFC 9457) become :class:`ApiError`; 429 and 503 answers that carry
``Retry-After`` are retried a few times, waiting as long as the server asks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import mimetypes
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

#: A job as the API shows it (``JobPublic`` on the wire), kept as plain JSON.
JobJson = dict[str, Any]

#: States a job never leaves; mirrors ``shared.jobs.model.FINAL_STATUSES`` without importing the service.
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})

#: The server caps ``?wait=`` at 60 s; 30 s keeps each request well inside proxies' idle timeouts.
DEFAULT_POLL_WAIT_S = 30.0
_MAX_RETRY_AFTER_S = 60.0
_USER_AGENT = "captionizer-cli/0.1"
# Idempotency keys this client derives start with this, so they are easy to tell from a user's own.
_IDEMPOTENCY_PREFIX = "cli-sha256-"


def idempotency_key_for(content: bytes, options: dict[str, Any]) -> str:
    """The ``Idempotency-Key`` of submitting ``content`` (image bytes or URL) with ``options``.

    Derived, not random: running the same command again sends the same key, so the API returns
    the jobs it already made (for 24 h) instead of captioning everything again.
    """
    digest = hashlib.sha256(content)
    digest.update(b"\0" + json.dumps(options, sort_keys=True).encode())
    return _IDEMPOTENCY_PREFIX + digest.hexdigest()


class ApiError(Exception):
    """The API refused a request (a problem response) or could not be reached."""

    def __init__(self, code: str, detail: str, *, status: int | None = None, title: str | None = None) -> None:
        self.code = code
        self.detail = detail
        self.status = status
        self.title = title
        super().__init__(f"{detail} ({code})")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Build the error from a non-2xx response, problem+json or not."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text.strip()[:200] or response.reason_phrase
            return cls(f"http_{response.status_code}", text, status=response.status_code)
        title = str(body.get("title") or response.reason_phrase)
        return cls(
            str(body.get("code") or f"http_{response.status_code}"),
            str(body.get("detail") or title),
            status=response.status_code,
            title=title,
        )

    def as_json(self) -> dict[str, Any]:
        """The error in the shape jobs carry theirs: ``{code, message}``."""
        return {"code": self.code, "message": self.detail}


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date, RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


class CaptionizerClient:
    """Talks to one Captionizer API; use as ``async with CaptionizerClient(url) as client``."""

    def __init__(
        self,
        api_url: str,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 8,
        retries: int = 4,
        timeout_s: float = 30.0,
    ) -> None:
        headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.api_url = api_url.rstrip("/")
        self._retries = retries
        self._timeout_s = timeout_s
        #: Ids of the jobs this client has submitted, in order (printed when the user interrupts).
        self.submitted: list[str] = []
        #: Ids of the batches this client has created (``caption DIR``), likewise.
        self.submitted_batches: list[str] = []
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            headers=headers,
            transport=transport,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> CaptionizerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def submit_url(
        self,
        image_url: str,
        *,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        idempotent: bool = False,
    ) -> JobJson:
        """Queue a job for an image the worker fetches from ``image_url``.

        With ``idempotent``, the request carries a key derived from the URL and options.
        """
        options = _options(prompt, max_new_tokens)
        headers = {"Idempotency-Key": idempotency_key_for(image_url.encode(), options)} if idempotent else None
        return await self._submit(json={"image_url": image_url, **options}, headers=headers)

    async def submit_file(
        self, path: Path, *, prompt: str | None = None, max_new_tokens: int | None = None, idempotent: bool = False
    ) -> JobJson:
        """Queue a job for a local image file, uploaded as multipart ``file``."""
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ApiError("file_unreadable", f"cannot read {path}: {exc.strerror or exc}") from exc
        return await self.submit_bytes(
            data, path.name, prompt=prompt, max_new_tokens=max_new_tokens, idempotent=idempotent
        )

    async def submit_bytes(
        self,
        data: bytes,
        filename: str,
        *,
        content_type: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        idempotent: bool = False,
    ) -> JobJson:
        """Queue a job for image bytes already in memory (an upload named ``filename``).

        With ``idempotent``, the request carries a key derived from the bytes and options.
        """
        content_type = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        options = _options(prompt, max_new_tokens)
        form = {key: str(value) for key, value in options.items()}
        files = {"file": (filename, data, content_type)}
        headers = {"Idempotency-Key": idempotency_key_for(data, options)} if idempotent else None
        return await self._submit(data=form, files=files, headers=headers)

    async def _submit(self, **kwargs: Any) -> JobJson:
        job = await self._request("POST", "/v1/jobs", **kwargs)
        self.submitted.append(str(job.get("id")))
        return job

    async def get_limits(self) -> JobJson:
        """What the server accepts (``GET /v1/limits``): image formats, sizes and option bounds."""
        return await self._request("GET", "/v1/limits")

    async def get_job(self, job_id: str, *, wait_s: float = 0) -> JobJson:
        """The job now, or once it is final or ``wait_s`` has passed (the API's long-poll)."""
        # Whole seconds: the API documents ``?wait=N`` as an integer.
        params = {"wait": str(math.ceil(wait_s))} if wait_s > 0 else None
        # The read timeout must outlast the server's wait, or every long-poll would fail.
        timeout = httpx.Timeout(self._timeout_s, read=wait_s + self._timeout_s)
        return await self._request("GET", f"/v1/jobs/{job_id}", params=params, timeout=timeout)

    async def cancel_job(self, job_id: str) -> JobJson:
        """Ask the API to cancel a queued or running job."""
        return await self._request("POST", f"/v1/jobs/{job_id}/cancel")

    async def wait_for_job(
        self, job: JobJson, *, timeout_s: float = 300.0, poll_wait_s: float = DEFAULT_POLL_WAIT_S
    ) -> JobJson:
        """Long-poll ``job`` until it is final; :class:`ApiError` ``client_timeout`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while job.get("status") not in FINAL_STATUSES:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise ApiError("client_timeout", f"job {job['id']} was still {job.get('status')} after {timeout_s:g} s")
            job = await self.get_job(str(job["id"]), wait_s=min(poll_wait_s, max(left_s, 1.0)))
        return job

    async def call(self, method: str, url: str, **kwargs: Any) -> JobJson:
        """Any API request answering a JSON object (batches use it), with the same retries and errors."""
        return await self._request(method, url, **kwargs)

    async def _request(self, method: str, url: str, **kwargs: Any) -> JobJson:
        """Send one request, retrying 429/503 that say when; 2xx JSON or :class:`ApiError`."""
        for attempt in range(self._retries + 1):
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                raise ApiError("api_timeout", f"the API at {self.api_url} did not answer in time") from exc
            except httpx.TransportError as exc:
                raise ApiError("api_unreachable", f"cannot reach the API at {self.api_url}: {exc}") from exc
            if response.is_success:
                return _json_object(response)
            delay_s = _retry_delay_s(response)
            if delay_s is None or attempt == self._retries:
                raise ApiError.from_response(response)
            await asyncio.sleep(delay_s)
        raise AssertionError("unreachable: the loop returns or raises")


def _options(prompt: str | None, max_new_tokens: int | None) -> dict[str, Any]:
    """Only the options the user set, so the server's defaults apply otherwise."""
    options: dict[str, Any] = {}
    if prompt is not None:
        options["prompt"] = prompt
    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    return options


def _retry_delay_s(response: httpx.Response) -> float | None:
    """How long to wait before retrying, or None when this answer should not be retried."""
    if response.status_code not in (429, 503):
        return None
    delay_s = parse_retry_after(response.headers.get("Retry-After"))
    if delay_s is None:
        return None
    return min(delay_s, _MAX_RETRY_AFTER_S)


def _json_object(response: httpx.Response) -> JobJson:
    try:
        body = response.json()
    except ValueError as exc:
        raise ApiError("bad_response", f"the API answered {response.status_code} without JSON") from exc
    if not isinstance(body, dict):
        raise ApiError("bad_response", "the API answered JSON that is not an object")
    return body
