"""The ``status`` and ``cancel`` subcommands, ``--version``, and what Ctrl-C prints: finding jobs again."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, TextIO

from cli.batch import Ledger
from cli.client import FINAL_STATUSES, ApiError, CaptionizerClient, JobJson

if TYPE_CHECKING:
    from cli.main import Streams

EXIT_OK, EXIT_FAILED = 0, 1
#: Final statuses that mean the job did not give a caption.
_UNSUCCESSFUL = FINAL_STATUSES - {"succeeded"}


def version() -> str:
    """The installed package's version (``captionizer --version``)."""
    try:
        return metadata.version("captionizer")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def add_job_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], api: argparse.ArgumentParser
) -> None:
    """Add ``status`` and ``cancel`` to the subcommands; ``api`` is the parent parser holding ``--api``."""
    status = commands.add_parser("status", parents=[api], help="show jobs by id (as caption printed them)")
    status.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    status.add_argument("--wait", action="store_true", help="wait until each job has ended")
    status.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds to wait for each job (default: 300)"
    )
    status.add_argument("--json", action="store_true", help="print the jobs as JSON lines")
    cancel = commands.add_parser("cancel", parents=[api], help="cancel queued or running jobs by id")
    cancel.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    cancel.add_argument("--json", action="store_true", help="print the jobs as JSON lines")


async def status_command(client: CaptionizerClient, args: argparse.Namespace, streams: Streams) -> int:
    """Print each job; 0 when none failed, was canceled or expired, or is unknown."""

    async def read(job_id: str) -> JobJson:
        job = await client.get_job(job_id)
        return await client.wait_for_job(job, timeout_s=args.timeout) if args.wait else job

    return await _each_job(client, args.job_ids, read, _has_not_failed, args.json, streams)


async def cancel_command(client: CaptionizerClient, args: argparse.Namespace, streams: Streams) -> int:
    """Cancel each job; 0 when every one is now canceled (1 when one had ended already, or is unknown)."""
    return await _each_job(client, args.job_ids, client.cancel_job, _is_canceled, args.json, streams)


def _has_not_failed(job: JobJson) -> bool:
    return job.get("status") not in _UNSUCCESSFUL


def _is_canceled(job: JobJson) -> bool:
    return job.get("status") == "canceled"


async def _each_job(
    client: CaptionizerClient,
    job_ids: Sequence[str],
    action: Callable[[str], Awaitable[JobJson]],
    is_ok: Callable[[JobJson], bool],
    as_json: bool,
    streams: Streams,
) -> int:
    async with client:
        results = await asyncio.gather(*(_attempt(action, job_id) for job_id in job_ids))
    failed = False
    for job_id, result in zip(job_ids, results, strict=True):
        if isinstance(result, ApiError):
            failed = True
            row: Mapping[str, object] = {"id": job_id, "status": "error", "error": result.as_json()}
        else:
            failed = failed or not is_ok(result)
            row = result
        streams.out.write(json.dumps(row, ensure_ascii=False) + "\n" if as_json else _line(row))
    return EXIT_FAILED if failed else EXIT_OK


async def _attempt(action: Callable[[str], Awaitable[JobJson]], job_id: str) -> JobJson | ApiError:
    try:
        return await action(job_id)
    except ApiError as exc:
        return exc


def _line(job: Mapping[str, object]) -> str:
    error = job.get("error")
    last = f"{error.get('message')} ({error.get('code')})" if isinstance(error, dict) else str(job.get("caption") or "")
    return f"{job.get('id')}  {job.get('status')}  {last}".rstrip() + "\n"


def report_interrupted(client: CaptionizerClient, err: TextIO, ledger: Ledger | None = None) -> None:
    """After Ctrl-C: the jobs and batches already submitted (they go on), and how to find them again.

    With the run's ``ledger``, only the jobs still running are listed, each with its image's name,
    and the images never sent are counted.
    """
    err.write("\ninterrupted\n")
    if ledger is not None and ledger.total:
        _report_ledger(ledger, err)
        return
    for batch_id in client.submitted_batches:
        err.write(f"batch {batch_id} goes on without this command; pick it up again with:\n")
        err.write(f"  captionizer batch status {batch_id}\n  captionizer batch results {batch_id}\n")
    if not client.submitted:
        if not client.submitted_batches:
            err.write("no job was submitted\n")
        return
    err.write(f"{len(client.submitted)} job(s) were submitted and go on without this command:\n")
    for job_id in client.submitted:
        err.write(f"  {job_id}\n")
    err.write("follow them with: captionizer status --wait JOB_ID ... (or cancel JOB_ID ...)\n")


def _report_ledger(ledger: Ledger, err: TextIO) -> None:
    err.write(f"{len(ledger.finished)} of {ledger.total} image(s) ended before the interruption (printed above)\n")
    if ledger.in_flight:
        err.write(f"{len(ledger.in_flight)} job(s) were still running and go on without this command:\n")
        for source, job_id in ledger.in_flight.items():
            # No id: the submit was on its way; the same command again finds the job (same Idempotency-Key).
            err.write(f"  {job_id or '(submitted, no answer yet)'}  {source.label}\n")
        err.write("follow them with: captionizer status --wait JOB_ID ... (or cancel JOB_ID ...)\n")
    if ledger.not_sent:
        err.write(f"{ledger.not_sent} image(s) were never sent\n")
