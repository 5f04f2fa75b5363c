"""A fake Captionizer API behind httpx.MockTransport, so the CLI's unit tests need no server.

Captions are derived from the image's name: ``red.png`` -> ``"a caption of red.png"``. Names with
``broken`` fail their job (fetch_failed); URLs on host ``blocked.test`` are refused at submit (400).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class FakeApi:
    """Just enough of ``/v1/jobs`` for the client: submit, long-poll, cancel, 429s and API keys."""

    api_key: str | None = None
    #: How many next requests answer 429 with ``Retry-After: 0`` before being served.
    rate_limit_next: int = 0
    #: The ``Retry-After`` those 429s carry.
    retry_after: str = "0"
    #: What ``GET /v1/limits`` answers; None: 404, as from an older server.
    limits: dict[str, Any] | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(3):  # yield, so concurrent requests overlap as they would on a network
                await asyncio.sleep(0)
            return self._route(request)
        finally:
            self.in_flight -= 1

    def _route(self, request: httpx.Request) -> httpx.Response:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return problem(401, "unauthorized", "Missing or invalid API key")
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            return problem(429, "rate_limited", "Slow down", headers={"Retry-After": self.retry_after})
        path = request.url.path
        if path == "/v1/limits" and self.limits is not None:
            return httpx.Response(200, json=self.limits)
        if request.method == "POST" and path == "/v1/jobs":
            return self._submit(request)
        match = re.fullmatch(r"/v1/jobs/(job_\d+)(/cancel)?", path)
        if match is None or match.group(1) not in self.jobs:
            return problem(404, "job_not_found", "No such job")
        job = self.jobs[match.group(1)]
        if match.group(2):
            job["status"] = "canceled"
        elif request.url.params.get("wait"):
            self._finish(job)
        else:
            job["status"] = "running"
        return httpx.Response(200, json=job)

    def _submit(self, request: httpx.Request) -> httpx.Response:
        if request.headers["content-type"].startswith("multipart/form-data"):
            fields = _multipart_fields(request.content)
            name, source, image_url = fields.pop("file"), "upload", None
        else:
            fields = json.loads(request.content)
            image_url = fields.pop("image_url")
            name, source = image_url.rsplit("/", 1)[-1], "url"
            if httpx.URL(image_url).host == "blocked.test":
                return problem(400, "url_not_allowed", "The URL's host is not allowed")
        job_id = f"job_{len(self.jobs) + 1}"
        self.jobs[job_id] = {
            "id": job_id,
            "url": f"/v1/jobs/{job_id}",
            "status": "queued",
            "source": source,
            "image_url": image_url,
            "prompt": fields.get("prompt"),
            "max_new_tokens": int(fields.get("max_new_tokens") or 30),
            "caption": None,
            "error": None,
            "name": name,
        }
        return httpx.Response(202, json=self.jobs[job_id], headers={"Location": f"/v1/jobs/{job_id}"})

    @staticmethod
    def _finish(job: dict[str, Any]) -> None:
        if job["status"] not in ("queued", "running"):
            return
        if "broken" in job["name"]:
            job.update(status="failed", error={"code": "fetch_failed", "message": "The image server answered 404"})
        else:
            job.update(status="succeeded", caption=f"a caption of {job['name']}")


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """An RFC 9457 problem response like the API's."""
    body = {"type": "about:blank", "title": code.replace("_", " ").capitalize(), "status": status, "detail": detail}
    body["code"] = code
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json", **(headers or {})})


def _multipart_fields(body: bytes) -> dict[str, str]:
    """Form fields of a multipart body; for the file part, its filename."""
    fields: dict[str, str] = {}
    for name, filename, value in re.findall(
        rb'name="([^"]+)"(?:; filename="([^"]*)")?[^\r]*\r\n(?:[^\r]+\r\n)*\r\n(.*?)\r\n--', body, re.S
    ):
        fields[name.decode()] = filename.decode() if filename else value.decode()
    return fields
