"""Progress for anything that runs longer than a few seconds: a rich bar with ETA (and the loss,
when training) on a terminal, nothing when output goes to a file or a pipe."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[..., None]


@contextmanager
def progress_bar(description: str, total: int, console: Console | None = None) -> Iterator[Advance]:
    """Yields advance(**fields): one step done; fields (e.g. loss=0.8) show beside the bar."""
    console = console or Console(stderr=True)
    columns = [TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total, note="")

        def advance(**fields: Any) -> None:
            note = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            progress.update(task, advance=1, note=note)

        yield advance
