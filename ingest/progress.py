"""Progress for humans: a bar per media in a terminal (rich); nothing extra without a TTY,
where the structured logs already say everything."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    def start(self, media: str, total: int) -> None: ...
    def advance(self, media: str, status: str) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, media: str, total: int) -> None:
        pass

    def advance(self, media: str, status: str) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """One bar per media on stderr (stdout stays for the summary / --json)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

        self._bars = RP(
            TextColumn("[bold]{task.fields[media]:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._failed: dict[str, int] = {}
        self._bars.start()

    def start(self, media: str, total: int) -> None:
        if media in self._tasks:  # a media restarted within the run keeps its bar
            self._bars.reset(self._tasks[media], total=total, failed=self._failed[media])
            return
        self._failed[media] = 0
        self._tasks[media] = self._bars.add_task(media, total=total, media=media, failed=0)

    def advance(self, media: str, status: str) -> None:
        if media not in self._tasks:
            return
        if status == "failed":
            self._failed[media] += 1
        self._bars.update(self._tasks[media], advance=1, failed=self._failed[media])

    def close(self) -> None:
        self._bars.stop()


def for_terminal(enabled: bool | None = None) -> Progress:
    interactive = sys.stderr.isatty() if enabled is None else enabled
    return RichProgress() if interactive else NoProgress()
