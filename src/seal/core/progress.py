"""Progress bars on stderr (rich), addressed by name so that library code stays free of UI objects."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

console = Console(stderr=True)


class Progress:
    def __init__(self, enabled: bool = True):
        self._bars = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  console=console, disable=not enabled)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "Progress":
        self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.stop()

    def start(self, name: str, description: str, total: int) -> None:
        if name in self._tasks:
            self._bars.remove_task(self._tasks[name])
        self._tasks[name] = self._bars.add_task(description, total=total)

    def advance(self, name: str, n: int = 1) -> None:
        if name in self._tasks:
            self._bars.advance(self._tasks[name], n)

    def log(self, message: str) -> None:
        self._bars.console.print(message)
