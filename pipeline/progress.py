"""Progress hooks: library code reports counts, the caller decides how to show them.

A `Tracker` opens one stage (`with track("proxy sweep", total=20, unit="runs") as advance:`) and
`advance(n)` counts work done. `silent` is the default; the CLI passes one that draws rich bars
on a terminal and writes one line per stage otherwise (`datamixer.commands._common.stage_progress`).

Beam steps run in worker processes the caller cannot reach, so the score job counts documents
through `documents_done`, which reaches the listeners registered with `counting_documents` when the
runner executes the step in this process (the DirectRunner's in-memory mode: small inputs).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

Advance = Callable[[int], None]


class Tracker(Protocol):
    def __call__(
        self, description: str, total: int | None = None, unit: str = ""
    ) -> contextlib.AbstractContextManager[Advance]: ...


@contextlib.contextmanager
def silent(description: str, total: int | None = None, unit: str = "") -> Iterator[Advance]:
    """A tracker that shows nothing."""

    def advance(n: int = 1) -> None:
        return None

    yield advance


_listeners: list[Advance] = []
_lock = threading.Lock()


@contextlib.contextmanager
def counting_documents(advance: Advance) -> Iterator[None]:
    """Send the documents that in-process Beam steps finish to `advance` while the block runs."""
    with _lock:
        _listeners.append(advance)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(advance)


def documents_done(n: int) -> None:
    """Called by the score job for each finished batch (a no-op in remote workers)."""
    with _lock:
        listeners = list(_listeners)
    for advance in listeners:
        advance(n)


@contextlib.contextmanager
def document_progress(track: Tracker, description: str = "score job") -> Iterator[Advance]:
    """Track the documents that in-process Beam steps finish. Yields `settle(total)`: call it with
    the job's count when it ends, so a runner whose workers were out of reach (multi-process,
    remote) still ends the stage at the true total."""
    seen = 0
    with track(description, unit="documents") as advance:

        def count(n: int) -> None:
            nonlocal seen
            seen += n
            advance(n)

        with counting_documents(count):
            yield lambda total: advance(max(0, total - seen))
