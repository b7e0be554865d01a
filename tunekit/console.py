"""One rich console for everything tunekit prints (stderr for progress and logs), its progress bars,
and the `--verbose` switch that lets raw library output through instead of summaries."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)

VERBOSE_ENV = "TUNEKIT_VERBOSE"


def verbose() -> bool:
    """Raw library output on the terminal (`tunekit --verbose`, or TUNEKIT_VERBOSE=1) instead of summaries."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def progress_bar(label: str, *fields: str | ProgressColumn, transient: bool = False) -> Progress:
    """The one bar shape: label, bar, done/total, extra fields, elapsed and ETA (not started yet)."""
    extra = [TextColumn(f) if isinstance(f, str) else f for f in fields]
    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *extra,
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=transient,
    )


@contextmanager
def progress(label: str, total: int, transient: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar for `total` items; yields the function that advances it by n."""
    with progress_bar(label, transient=transient) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)
