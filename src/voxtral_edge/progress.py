"""A small progress line on stderr for work that takes more than a few seconds."""

from __future__ import annotations

import sys
import time


class Progress:
    """Redraws one line on a terminal; elsewhere (logs, CI) prints a line every 10%. Silent for the
    first `quiet_s` seconds, so quick work prints nothing."""

    quiet_s = 2.0

    def __init__(self, label: str, total: float, unit: str = "", stream=None, enabled: bool = True,
                 rate: bool = False):
        self.label, self.total, self.unit, self.rate = label, max(float(total), 1e-9), unit, rate
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done_amount = 0.0
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    def _amount(self, value: float) -> str:
        if self.unit == "B":
            return f"{value / 1e9:.2f} GB" if self.total >= 1e8 else f"{value / 1e6:.1f} MB"
        return f"{value:.0f}{self.unit}"

    def advance(self, amount: float, note: str = "") -> None:
        self.done_amount += amount
        if not self.enabled or time.perf_counter() - self.start < self.quiet_s:
            return
        fraction = min(self.done_amount / self.total, 1.0)
        elapsed = time.perf_counter() - self.start
        pace = ""
        if self.rate and self.done_amount > 0:
            per_s = self.done_amount / elapsed
            pace = f"  {per_s:.2f}{self.unit}/s  ETA {max(self.total - self.done_amount, 0) / per_s:.0f} s"
        line = (f"{self.label}: {fraction:6.1%}  {self._amount(self.done_amount)} / {self._amount(self.total)}"
                f"  {elapsed:5.0f} s{pace}  {note}")
        if self._tty:
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
        elif int(fraction * 10) > self._last_decile:
            self._last_decile = int(fraction * 10)
            self.stream.write(line.rstrip() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._tty and time.perf_counter() - self.start >= self.quiet_s:
            self.stream.write("\n")
            self.stream.flush()
