"""Progress on stderr: a tqdm bar in a terminal, plain lines where there is none.

A bar redraws itself with carriage returns, which a SLURM log, a pipe or a CI log keeps as one
ever-growing line. When stderr is not a terminal, progress is written as whole lines instead:
`desc n/total [values] rate ETA`, one each time `report` is called (training calls it every
`log.every` steps) or, for loops that report no values, one per `every` units (`wrap`: a
twentieth of the total).
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from tqdm.auto import tqdm


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class Progress:
    """`with Progress(total, "train") as bar: bar.update(); bar.report(loss=...); bar.write(...)`,
    or `for item in Progress(len(items), "shard").wrap(items)`."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", initial: int = 0, disable: bool = False,
                 every: Optional[int] = None, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.n, self.disable = total, desc, unit, initial, disable
        self.every = every  # plain lines per `every` units of update(); None: only from report()
        self.bar = None
        if not disable and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream)
        self.start, self.start_n, self.last_line_n = time.perf_counter(), initial, None
        self.values: dict[str, str] = {}

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.bar is not None:
            self.bar.update(n)
        elif self.every and (self.n // self.every > before // self.every or self.n == self.total):
            self._line()

    def report(self, **values: str) -> None:
        """Show the latest values: beside the bar in a terminal, else as one line now."""
        self.values = values
        if self.bar is not None:
            self.bar.set_postfix(values)
        elif not self.disable:
            self._line()

    def wrap(self, iterable):
        """Yield the items of `iterable`, counting one unit each (a plain line per twentieth of the
        total unless `every` was given); closes when the iteration ends."""
        self.every = self.every or max(1, (self.total or 2000) // 20)
        try:
            for item in iterable:
                yield item
                self.update()
        finally:
            self.close()

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        elif not self.disable:
            print(message, file=self.stream, flush=True)

    def _line(self) -> None:
        if self.disable:
            return
        elapsed = time.perf_counter() - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc} {self.n}/{self.total}" if self.total else f"{self.desc} {self.n}"]
        parts += [f"{key}={value}" for key, value in self.values.items()]
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        print(" ".join(parts), file=self.stream, flush=True)
        self.last_line_n = self.n

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.disable and self.n > self.start_n and self.last_line_n != self.n:
            self._line()  # the count it ended at, if the last line was earlier
        self.disable = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
