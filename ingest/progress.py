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
    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

        self._bars = RP(
            TextColumn("[bold]{task.fields[media]:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._failed: dict[str, int] = {}
        self._bars.start()

    def start(self, media: str, total: int) -> None:
        self._failed[media] = 0
        self._tasks[media] = self._bars.add_task(media, total=total, media=media, failed=0)

    def advance(self, media: str, status: str) -> None:
        if status == "failed":
            self._failed[media] += 1
        self._bars.update(self._tasks[media], advance=1, failed=self._failed[media])

    def close(self) -> None:
        self._bars.stop()


def for_terminal(enabled: bool | None = None) -> Progress:
    interactive = sys.stderr.isatty() if enabled is None else enabled
    return RichProgress() if interactive else NoProgress()
