"""cli.progress: the bar's text, and silence when stderr is not a terminal."""

from __future__ import annotations

import io

from cli.progress import ProgressBar


def test_bar_counts_done_and_failed_items() -> None:
    bar = ProgressBar(4, io.StringIO(), enabled=True)
    bar.advance()
    bar.advance(failed=True)
    assert bar.render() == "captioning [############............] 2/4 done, 1 failed"


def test_bar_is_silent_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(2, stream)
    bar.advance()
    bar.advance()
    bar.close()
    assert stream.getvalue() == ""


def test_finished_bar_ends_its_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(1, stream, enabled=True)
    bar.advance()
    bar.close()
    assert stream.getvalue().endswith("\rcaptioning [########################] 1/1 done\n")


def test_empty_batch_renders_a_full_bar() -> None:
    assert ProgressBar(0, io.StringIO(), enabled=True).render() == "captioning [########################] 0/0 done"
