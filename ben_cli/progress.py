"""The progress bar every long command shows on stderr (Rich)."""

from __future__ import annotations

from typing import Any


def progress_columns(*extra: Any) -> tuple[Any, ...]:
    """Description, bar, done/total, ``extra`` columns, elapsed time and ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
            TimeElapsedColumn(), TimeRemainingColumn())
