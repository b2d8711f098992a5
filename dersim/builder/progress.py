"""Progress of a counted job on stderr: a live bar on a terminal, plain periodic lines otherwise.

A build or import may run for many minutes under `nohup`, in CI or through a pipe, where a live
bar shows nothing; there it prints a line such as `embedding: 1200/6600 texts (85.2/s)` every
`PLAIN_EVERY_S` seconds and when the job ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PLAIN_EVERY_S = 10.0


class RateColumn(ProgressColumn):
    """The task's speed in units per second."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.2f} {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress(
    description: str,
    total: int,
    unit: str,
    enabled: bool = True,
    every_s: float = PLAIN_EVERY_S,
    status: Callable[[], str] | None = None,
) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`; shows the job as a bar on a terminal, else as a plain line on stderr
    every `every_s` seconds and at the end, followed by `status()` when given (e.g. the replicas'
    calls/s). Shows nothing when not `enabled` or `total` is 0."""
    console = Console(stderr=True)
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    if console.is_terminal:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(unit),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        ) as bar:
            task = bar.add_task(description, total=total, status="")

            def advance_bar(n: int = 1) -> None:
                bar.update(task, advance=n, status=status() if status else "")

            yield advance_bar
        return
    started = last = time.monotonic()
    done = shown = 0

    def line() -> None:
        nonlocal shown, last
        shown, last = done, time.monotonic()
        print(
            f"{description}: {done}/{total} {unit} ({done / max(last - started, 1e-9):.1f}/s)"
            + (f"; {text}" if status and (text := status()) else ""),
            file=sys.stderr,
            flush=True,
        )

    def advance(n: int = 1) -> None:
        nonlocal done
        done += n
        if time.monotonic() - last >= every_s:
            line()

    yield advance
    if shown != done:  # the final count; not after an error, which is then the last line
        line()
