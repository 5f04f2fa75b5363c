"""A one-line progress bar on stderr, redrawn in place; silent when stderr is not a terminal."""

from __future__ import annotations

import time
from typing import TextIO

_BAR_WIDTH = 24
#: Redraw at most this often; hundreds of quick jobs should not flood a slow terminal.
_MIN_REDRAW_S = 0.1


class ProgressBar:
    """Counts finished items out of ``total`` and draws ``[####....] 3/8 done, 1 failed``."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool | None = None, label: str = "captioning") -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._stream = stream
        self._label = label
        self._enabled = _is_terminal(stream) if enabled is None else enabled
        self._last_draw_s = 0.0

    def advance(self, *, failed: bool = False) -> None:
        """Record one finished item and redraw."""
        self.done += 1
        self.failed += int(failed)
        self.draw(force=self.done == self.total)

    def update(self, done: int, failed: int) -> None:
        """Set the counts (a batch reports them whole) and redraw."""
        self.done, self.failed = done, failed
        self.draw(force=self.done == self.total)

    def draw(self, *, force: bool = False) -> None:
        """Redraw the line now (or skip it if the last redraw was too recent)."""
        now_s = time.monotonic()
        if not self._enabled or (not force and now_s - self._last_draw_s < _MIN_REDRAW_S):
            return
        self._last_draw_s = now_s
        self._stream.write("\r" + self.render())
        self._stream.flush()

    def render(self) -> str:
        """The bar as text, without the carriage return."""
        filled = _BAR_WIDTH * self.done // self.total if self.total else _BAR_WIDTH
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self._label} [{bar}] {self.done}/{self.total} done{failed}"

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh one."""
        if self._enabled:
            self.draw(force=True)
            self._stream.write("\n")
            self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
