"""Helpers every command shares: the final JSON line, progress on stderr, writing a table."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

stderr = Console(stderr=True)


def _plain(value: Any) -> Any:
    """JSON-safe version of numpy scalars, NaN and paths."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def emit(result: dict[str, Any]) -> None:
    """Print the command's headline figures as the last stdout line (one JSON object)."""
    print(json.dumps(_plain(result), sort_keys=True), flush=True)


def write_table(out: Path, frame: Any) -> None:
    """Write a DataFrame as CSV when `out` ends in .csv, else as Parquet (atomically, either way)."""
    from mixer.files import write_parquet, write_text

    if out.suffix.lower() == ".csv":
        write_text(out, frame.to_csv(index=False))
    else:
        write_parquet(out, frame)


def info(message: str) -> None:
    """Human-readable progress, on stderr (one line per message: never wrapped, so logs grep well)."""
    stderr.print(message, highlight=False, soft_wrap=True)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as bar:
        yield from bar.track(items, total=total, description=description)


@contextlib.contextmanager
def stage_progress(
    description: str, total: int | None = None, unit: str = "", console: Console | None = None
) -> Iterator[Callable[[int], None]]:
    """One stage's progress on stderr (a `pipeline.progress.Tracker`): on a terminal a rich bar with
    counts, elapsed time and ETA (a spinner and a count when the total is unknown); otherwise a
    single line when the stage ends."""
    console = console or stderr
    started = time.perf_counter()
    done = 0
    if console.is_terminal:
        columns = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn() if total else TextColumn("{task.completed}"),
            TextColumn(unit),
            TimeElapsedColumn(),
            *([TextColumn("ETA"), TimeRemainingColumn()] if total else []),
        ]
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                nonlocal done
                done += n
                bar.advance(task, n)

            yield advance
        return

    def count(n: int = 1) -> None:
        nonlocal done
        done += n

    yield count
    counted = " ".join(filter(None, [f"{done}/{total}" if total else f"{done}", unit]))
    console.print(
        f"{description}: {counted} in {time.perf_counter() - started:.1f} s", highlight=False, soft_wrap=True
    )


class _DropMessages(logging.Filter):
    """Drops records whose unformatted message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Beam's warnings that say nothing about the user's run: the BigQuery client probe at import, and a
# type-hint note on `with_exception_handling`'s own dead-letter tag. Both log on the root logger.
NOISE = ("apitools not found", "Tags %s requested in with_outputs() but not declared")


def quiet_library_warnings() -> None:
    """Silence the library messages in `NOISE` (only those) on the loggers they are logged to."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropMessages) for f in root.filters):
        root.addFilter(_DropMessages(NOISE))
