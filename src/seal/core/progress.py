"""Progress, addressed by name so that library code stays free of UI objects.

On a terminal: rich progress bars on stderr. Elsewhere (a background run writing to a file, CI): plain
lines on stderr, one when a bar starts, one when it completes, and in between at most one per bar
every `interval` seconds. With `log`, the same plain lines are also appended to that file (a run
directory's progress.log), whatever stderr is.

Every bar shows a rate beside its eta: the tokens its items report (`advance(tokens=...)`), or else
the tokens this process generated or trained on while the bar was open (`count`, called by
generation and the training loops), so that a user waiting on any long step sees how fast it goes.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

console = Console(stderr=True)

_counted: Counter[str] = Counter()  # tokens this process has worked on, by kind, since it started


def count(kind: str, n: int) -> None:
    """`n` more tokens of one kind of work ("generated tokens", "training tokens"): every bar open
    meanwhile shows their rate."""
    _counted[kind] += n


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, enabled: bool = True, log: str | Path | None = None, interval: float = 30.0):
        self.plain = enabled and not console.is_terminal
        self._bars = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}"),
                                  console=console, disable=not enabled or self.plain)
        self._tasks: dict[str, int] = {}
        self._state: dict[str, dict] = {}  # name -> description, total, done, started, last line
        self.log_path = Path(log) if log is not None else None
        self.interval = interval

    def __enter__(self) -> Progress:
        self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.stop()

    def start(self, name: str, description: str, total: int) -> None:
        if name in self._tasks:
            self._bars.remove_task(self._tasks[name])
        self._tasks[name] = self._bars.add_task(description, total=total, rate="")
        now = time.monotonic()
        self._state[name] = dict(description=description, total=total, done=0, skipped=0, started=now, last=now,
                                 tokens=0, unit="", counted=Counter(_counted))
        self._line(name)

    def skip(self, name: str, n: int) -> None:
        """`n` items found already done (a resumed run): they fill the bar but not its rate, so the eta
        comes from the work this process does."""
        if name not in self._tasks or n <= 0:
            return
        state = self._state[name]
        first = not state["skipped"]
        state["done"] += n
        state["skipped"] += n
        self._bars.reset(self._tasks[name], completed=state["done"])  # rich's rate: from here on
        now = time.monotonic()
        if first or state["done"] >= state["total"] or now - state["last"] >= self.interval:
            state["last"] = now
            self._line(name)

    def advance(self, name: str, n: int = 1, tokens: int | None = None, unit: str = "tokens") -> None:
        """`n` more items done; `tokens`: the tokens they generated or trained on, so that the line shows
        the rate (`unit`/s) beside the eta."""
        if name not in self._tasks:
            return
        state = self._state[name]
        if tokens:
            state["tokens"] += tokens
            state["unit"] = unit
        self._bars.update(self._tasks[name], rate=self._rate(state))
        self._bars.advance(self._tasks[name], n)
        state["done"] += n
        now = time.monotonic()
        if state["done"] >= state["total"] or now - state["last"] >= self.interval:
            state["last"] = now
            self._line(name)

    def log(self, message: str) -> None:
        if self.plain or self.log_path is not None:
            self._write(message)
        if not self.plain:
            self._bars.console.print(message)

    def _line(self, name: str) -> None:
        if not (self.plain or self.log_path is not None):
            return
        s = self._state[name]
        elapsed = time.monotonic() - s["started"]
        worked = s["done"] - s["skipped"]
        eta = "?" if not worked else _clock(elapsed / worked * max(0, s["total"] - s["done"]))
        found = f" ({s['skipped']} found done)" if s["skipped"] else ""
        rate = self._rate(s)
        rate = f", {rate}" if rate else ""
        self._write(f"{s['description']}: {s['done']}/{s['total']}{found}, {_clock(elapsed)} elapsed, eta {eta}{rate}")

    @staticmethod
    def _rate(state: dict) -> str:
        """The bar's own tokens per second, or else those `count`ed since it started, by kind."""
        elapsed = time.monotonic() - state["started"]
        if elapsed <= 0:
            return ""
        if state["tokens"]:
            return f"{state['tokens'] / elapsed:.0f} {state['unit']}/s"
        moved = (_counted - state["counted"]).items()
        return ", ".join(f"{n / elapsed:.0f} {kind}/s" for kind, n in sorted(moved))

    def _write(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.plain:
            print(line, file=sys.stderr, flush=True)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
