"""Progress for terminals and for log files.

On a terminal a tqdm bar redraws in place. In a log file (stderr not a TTY) every redraw would be
appended as carriage-return-separated text, kilobytes per stage on one line; there
:class:`LineProgress` writes a plain line every ``percent`` of the total or ``interval`` seconds
instead. Both have the same small interface (``update``, ``set_postfix``, ``write``, ``close``,
``n``), so callers do not care which they get.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

LOG_PERCENT = 5.0  # a line every 5% of the total ...
LOG_INTERVAL_S = 30.0  # ... or every 30 s, whichever comes first


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A tqdm stand-in for log files: one line per ``percent`` of ``total`` or per ``interval``."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        file: TextIO | None = None,
        percent: float = LOG_PERCENT,
        interval: float = LOG_INTERVAL_S,
        **_: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start = initial
        self.disable = disable
        self.file = file
        self.percent, self.interval = percent, interval
        self.postfix = ""
        self._t0 = self._last_t = time.monotonic()
        self._last_n = initial
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = (self.n - self._start) / elapsed if elapsed > 0 else 0.0
        where = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f"{100.0 * self.n / self.total:3.0f}% " if self.total else ""
        text = f"{self.desc}: {pct}{where} {self.unit} [{elapsed:.0f}s, {rate:.3g} {self.unit}/s]"
        return text + (f" {self.postfix}" if self.postfix else "")

    def _emit(self) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(self._line(), file=stream, flush=True)
        self._last_t, self._last_n = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        if self.disable:
            return
        self.n += n
        step = (self.total or 0) * self.percent / 100.0
        due = (step > 0 and self.n - self._last_n >= step) or (
            time.monotonic() - self._last_t >= self.interval
        )
        if due and (not self.total or self.n < self.total):
            self._emit()

    def set_postfix(
        self, postfix: Mapping[str, Any] | None = None, refresh: bool = True, **kw: Any
    ) -> None:
        items = {**(postfix or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def write(self, message: str) -> None:
        print(message, file=self.file if self.file is not None else sys.stderr, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.disable or self._closed:
            return
        self._closed = True
        if self.n != self._last_n or self.n == self._start:
            self._emit()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    leave: bool = True,
    file: TextIO | None = None,
    **tqdm_options: Any,
) -> Any:
    """A tqdm bar when the stream (default stderr) is a terminal, else a :class:`LineProgress`."""
    stream = file if file is not None else sys.stderr
    if not _is_tty(stream):
        return LineProgress(
            iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=file
        )
    from tqdm import tqdm

    return tqdm(
        iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
        leave=leave, file=stream, **tqdm_options,
    )  # fmt: skip
