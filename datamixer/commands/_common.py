"""Helpers every command shares: the final JSON line and progress on stderr."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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


def info(message: str) -> None:
    """Human-readable progress, on stderr."""
    stderr.print(message, highlight=False)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        yield from bar.track(items, total=total, description=description)
