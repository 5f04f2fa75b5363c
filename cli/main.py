"""The ``captionizer`` command: argument parsing, the two subcommands, output and exit codes.

Exit codes: 0 when everything succeeded, 1 when some image failed, 2 for usage errors, 130 on Ctrl-C.
``status`` and ``cancel`` live in ``cli/job_commands.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from cli.alt_text import plan_page, read_page, splice_alts, write_page
from cli.batch import BatchOptions, Inputs, Ledger, Outcome, caption_all, find_inputs
from cli.batches import caption_batch, print_batch_results, print_batch_status
from cli.client import ApiError, CaptionizerClient
from cli.job_commands import add_job_commands, cancel_command, report_interrupted, status_command, version
from cli.progress import ProgressBar

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: 128 + SIGINT, as shells report a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130
DEFAULT_API_URL = "http://127.0.0.1:8000"
_MAX_LABEL_CHARS = 60


@dataclass
class Streams:
    """Where results (stdout) and messages and progress (stderr) go; tests pass StringIO."""

    out: TextIO
    err: TextIO


def main() -> None:
    """Console-script entry point (``captionizer = "cli.main:main"``)."""
    sys.exit(run(sys.argv[1:], environ=os.environ))


def run(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    streams: Streams | None = None,
) -> int:
    """Run the command line ``argv`` and return its exit code."""
    streams = streams or Streams(sys.stdout, sys.stderr)
    environ = environ or {}
    args = build_parser(environ).parse_args(argv)
    client = CaptionizerClient(
        args.api,
        api_key=environ.get("CAPTIONIZER_API_KEY") or None,
        transport=transport,
        max_connections=args.concurrency,
    )
    # Outside the command's tasks, so that what it received survives Ctrl-C.
    ledger = Ledger()
    commands: dict[str, Callable[[CaptionizerClient, argparse.Namespace, Streams], Coroutine[Any, Any, int]]] = {
        "caption": functools.partial(_caption_command, ledger=ledger),
        "alt-text": _alt_text_command,
        "status": status_command,
        "cancel": cancel_command,
        "batch": _batch_command,
    }
    command = commands[args.command]
    try:
        return asyncio.run(command(client, args, streams))
    except KeyboardInterrupt:
        if ledger.finished:
            # What ended before Ctrl-C, with names and captions, as the run would have printed it.
            _print_outcomes(ledger.finished, as_json=getattr(args, "json", False), out=streams.out)
        report_interrupted(client, streams.err, ledger)
        return EXIT_INTERRUPTED


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; defaults that come from the environment are read from ``environ``."""
    parser = argparse.ArgumentParser(
        prog="captionizer",
        description="Captions and alt text from the Captionizer API.",
        epilog="The API key, if the server needs one, is read from $CAPTIONIZER_API_KEY. "
        "Exit codes: 0 all succeeded, 1 some image failed, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    common = _common_options(environ)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    caption = commands.add_parser("caption", parents=[common], help="caption images: files, folders or URLs")
    caption.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_URL", help="image files, folders of images, or http(s) URLs"
    )
    caption.add_argument("--wait", action="store_true", help="wait for the captions (otherwise print the queued jobs)")
    caption.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    caption.add_argument("-r", "--recursive", action="store_true", help="also take images from subfolders")
    # Only --api of the common options: a batch's prompt, concurrency and timeouts were set when it was made.
    batch = commands.add_parser("batch", parents=[_api_option(environ)], help="a batch's status or results, by id")
    batch.add_argument("action", choices=["status", "results"], help="status: counts as JSON; results: JSON lines")
    batch.add_argument("batch_id", metavar="ID", help="the batch id (bat_…) that `caption DIR` printed")
    batch.add_argument(
        "--wait",
        action="store_true",
        help="results: print each item as it ends, until the batch ends; status: print it once it has ended",
    )
    alt = commands.add_parser("alt-text", parents=[common], help="fill in missing alt attributes of an HTML page")
    alt.add_argument("page", type=Path, help="the HTML file")
    alt.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the result: a file, or - for stdout (default: in place)"
    )
    alt.add_argument(
        "--base-url", metavar="URL", help="resolve relative src against this URL instead of the page's folder"
    )
    alt.add_argument(
        "--keep-empty", action="store_true", help='leave alt="" (decorative images) alone; only fill missing alt'
    )
    alt.add_argument(
        "--root", type=Path, metavar="DIR", help="local images may come from this folder (default: the page's folder)"
    )
    add_job_commands(commands, _api_option(environ))
    return parser


def _api_option(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """``--api``, which every subcommand takes."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--api",
        default=environ.get("CAPTIONIZER_API_URL") or DEFAULT_API_URL,
        metavar="URL",
        help="the API's base URL (default: $CAPTIONIZER_API_URL or %(default)s)",
    )
    # status and cancel send one request per job id given.
    api.set_defaults(concurrency=8)
    return api


def _common_options(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Options caption and alt-text take: where the API is, generation options, concurrency and waiting."""
    common = argparse.ArgumentParser(add_help=False, parents=[_api_option(environ)])
    common.add_argument("--prompt", help="text the caption should continue, or a question for a VQA model")
    common.add_argument("--max-new-tokens", type=_positive_int, metavar="N", help="longest caption, in tokens")
    common.add_argument(
        "--no-cache", action="store_true", help="caption every image afresh, even one the server has captioned before"
    )
    common.add_argument(
        "--concurrency", type=_positive_int, default=8, metavar="N", help="jobs in flight at once (default: 8)"
    )
    common.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds to wait for each job (default: 300)"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return common


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _options(args: argparse.Namespace, *, wait: bool) -> BatchOptions:
    return BatchOptions(
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        cache=not args.no_cache,
        wait=wait,
        timeout_s=args.timeout,
        concurrency=args.concurrency,
    )


def _progress(total: int, args: argparse.Namespace, streams: Streams) -> ProgressBar:
    return ProgressBar(total, streams.err, enabled=False if args.no_progress else None)


async def _caption_command(
    client: CaptionizerClient, args: argparse.Namespace, streams: Streams, *, ledger: Ledger
) -> int:
    inputs = find_inputs(args.inputs, recursive=args.recursive)
    _report_skipped(inputs, streams.err)
    sources = inputs.sources
    if not sources:
        streams.err.write("captionizer: error: no image files found in the folders given\n")
        return EXIT_USAGE
    missing = [source.label for source in sources if source.path is not None and not source.path.exists()]
    if missing:
        # A typo'd path is a usage error (exit 2, as documented), caught before anything is submitted.
        streams.err.write(f"captionizer: error: no such file or folder: {', '.join(missing)}\n")
        return EXIT_USAGE
    # A folder goes as one batch: a few requests and one poll a second, whatever its size.
    is_folder = any(Path(text).is_dir() for text in args.inputs)
    async with client:
        options, progress = _options(args, wait=args.wait), _progress(len(sources), args, streams)
        if is_folder:
            outcomes = await caption_batch(client, sources, options, progress, streams.err)
        else:
            outcomes = await caption_all(client, sources, options, progress, ledger)
        if args.wait:
            await _warn_if_demonstration_model(client, streams.err)
    # Skipped files are rows too, so every file named or found is accounted for in the output.
    outcomes += inputs.skipped
    _print_outcomes(outcomes, as_json=args.json, out=streams.out)
    return EXIT_OK if all(outcome.is_ok(waited=args.wait) for outcome in outcomes) else EXIT_FAILED


async def _warn_if_demonstration_model(client: CaptionizerClient, err: TextIO) -> None:
    """Say so when the captions came from the embedded demonstration model (shapes only), and how to switch."""
    try:
        limits = await client.get_limits()
    except ApiError:
        return  # a hint only: never fail a run for it
    if limits.get("demonstration_model"):
        err.write(f"note: {limits.get('model_hint')}\n")


def _report_skipped(inputs: Inputs, err: TextIO) -> None:
    for outcome in inputs.skipped:
        err.write(f"{outcome.source.label}: {outcome.skipped}\n")
    if inputs.not_images:
        err.write(f"left out {inputs.not_images} file(s) that are not images\n")


def _print_outcomes(outcomes: Sequence[Outcome], *, as_json: bool, out: TextIO) -> None:
    if as_json:
        for outcome in outcomes:
            out.write(json.dumps(outcome.as_json(), ensure_ascii=False) + "\n")
    else:
        out.write(format_table(outcomes))


async def _batch_command(client: CaptionizerClient, args: argparse.Namespace, streams: Streams) -> int:
    async with client:
        try:
            if args.action == "status":
                return await print_batch_status(client, args.batch_id, streams.out, wait=args.wait)
            return await print_batch_results(client, args.batch_id, streams.out, wait=args.wait)
        except ApiError as exc:
            streams.err.write(f"captionizer: error: {exc.detail} ({exc.code})\n")
            return EXIT_FAILED


def format_table(outcomes: Sequence[Outcome]) -> str:
    """Aligned columns IMAGE, JOB, STATUS, CAPTION; failures show their error in the last column."""
    rows = [("IMAGE", "JOB", "STATUS", "CAPTION")]
    rows.extend(_table_row(outcome) for outcome in outcomes)
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    )
    return "".join(line.rstrip() + "\n" for line in lines)


def _table_row(outcome: Outcome) -> tuple[str, str, str, str]:
    job = outcome.job or {}
    status = "skipped" if outcome.skipped is not None else str(job.get("status") or "error")
    if outcome.skipped is not None:
        last = outcome.skipped
    elif outcome.error is not None:
        last = f"{outcome.error.detail} ({outcome.error.code})"
    elif job.get("error"):
        last = f"{job['error'].get('message')} ({job['error'].get('code')})"
    else:
        last = str(job.get("caption") or "")
    return _shorten(outcome.source.label), str(job.get("id") or "-"), status, last


def _shorten(label: str) -> str:
    if len(label) <= _MAX_LABEL_CHARS:
        return label
    half = (_MAX_LABEL_CHARS - 1) // 2
    return label[:half] + "…" + label[-half:]


async def _alt_text_command(client: CaptionizerClient, args: argparse.Namespace, streams: Streams) -> int:
    page: Path = args.page
    try:
        text = read_page(page)
    except OSError as exc:
        streams.err.write(f"captionizer: error: cannot read {page}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    plan = plan_page(text, page, base_url=args.base_url, fill_empty=not args.keep_empty, root=args.root)
    sources = plan.sources
    async with client:
        progress = _progress(len(sources), args, streams)
        outcomes = await caption_all(client, sources, _options(args, wait=True), progress)
        await _warn_if_demonstration_model(client, streams.err)
    captions = {o.source: o.job["caption"] for o in outcomes if o.is_ok(waited=True) and o.job and o.job.get("caption")}
    alts = {tag: str(captions[source]) for tag, source in plan.targets.items() if source in captions}
    _write_alt_text_result(page, args.output, splice_alts(text, alts), changed=bool(alts), streams=streams)
    failures = [(o.source.label, _failure_text(o)) for o in outcomes if o.source not in captions]
    _report_alt_text(streams.err, page, filled=len(alts), kept=plan.kept, problems=plan.skipped + failures)
    return EXIT_FAILED if plan.skipped or failures else EXIT_OK


def _failure_text(outcome: Outcome) -> str:
    if outcome.error is not None:
        return f"{outcome.error.detail} ({outcome.error.code})"
    job = outcome.job or {}
    error = job.get("error") or {}
    return f"{error.get('message') or 'no caption'} ({error.get('code') or job.get('status')})"


def _write_alt_text_result(page: Path, output: str | None, text: str, *, changed: bool, streams: Streams) -> None:
    if output == "-":
        streams.out.write(text)
    elif output is not None:
        write_page(Path(output), text)
    elif changed:  # in place: leave the file (and its mtime) alone when nothing was filled
        write_page(page, text)


def _report_alt_text(err: TextIO, page: Path, *, filled: int, kept: int, problems: list[tuple[str, str]]) -> None:
    err.write(f"{page}: filled {filled} alt attribute(s), left {kept} existing, {len(problems)} image(s) failed\n")
    for label, reason in problems:
        err.write(f"  {label}: {reason}\n")
