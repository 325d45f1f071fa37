"""Progress hooks: library code reports counts, the caller decides how to show them.

A `Tracker` opens one stage (`with track("proxy sweep", total=20, unit="runs") as advance:`) and
`advance(n)` counts work done. `silent` is the default; the CLI passes one that draws rich bars
on a terminal and writes one line per stage otherwise (`datamixer.commands._common.stage_progress`).

The score job counts documents through `documents_done`. When the runner executes the step in this
process (the DirectRunner's in-memory mode), the count reaches the listeners registered with
`counting_documents` directly. In a worker process (the DirectRunner's multi-process mode, which
inherits this process's environment) nobody listens, so the worker keeps its running total in a
file of the directory named by `COUNTER_DIR_ENV`; `document_progress` sets that variable to a
temporary directory of its own and polls the files while the job runs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

Advance = Callable[[int], None]

COUNTER_DIR_ENV = "DATAMIXER_PROGRESS_DIR"
COUNTER_SUFFIX = ".count"
POLL_SECONDS = 0.5


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
_process_total = 0  # documents this (worker) process finished, for its counter file


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
    """Called by the score job for each finished batch: to this process's listeners, or (in a worker
    process started under `document_progress`) to this process's counter file."""
    global _process_total
    with _lock:
        listeners = list(_listeners)
        if not listeners:
            directory = os.environ.get(COUNTER_DIR_ENV)
            if directory and Path(directory).is_dir():
                _process_total += n
                _write_count(Path(directory), _process_total)
    for advance in listeners:
        advance(n)


def _write_count(directory: Path, total: int) -> None:
    path = directory / f"{os.getpid()}{COUNTER_SUFFIX}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(total))
    os.replace(tmp, path)  # the poller never reads a half-written number


def worker_documents(directory: str | os.PathLike[str]) -> int:
    """Documents the worker processes have reported in `directory` so far."""
    total = 0
    for path in Path(directory).glob(f"*{COUNTER_SUFFIX}"):
        with contextlib.suppress(OSError, ValueError):
            total += int(path.read_text())
    return total


@contextlib.contextmanager
def _polling(directory: Path, count: Advance) -> Iterator[None]:
    """Send what the workers' counter files gain to `count` every POLL_SECONDS, and once at the end."""
    stop = threading.Event()
    reported = 0

    def poll() -> None:
        nonlocal reported
        now = worker_documents(directory)
        if now > reported:
            count(now - reported)
            reported = now

    def loop() -> None:
        while not stop.wait(POLL_SECONDS):
            poll()

    thread = threading.Thread(target=loop, name="document-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        poll()


@contextlib.contextmanager
def _counter_dir() -> Iterator[Path]:
    """A fresh directory named in COUNTER_DIR_ENV while the block runs (worker processes inherit it)."""
    before = os.environ.get(COUNTER_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="datamixer-progress-") as directory:
        os.environ[COUNTER_DIR_ENV] = directory
        try:
            yield Path(directory)
        finally:
            if before is None:
                os.environ.pop(COUNTER_DIR_ENV, None)
            else:
                os.environ[COUNTER_DIR_ENV] = before


@contextlib.contextmanager
def document_progress(
    track: Tracker, description: str = "score job", total: int | None = None
) -> Iterator[Advance]:
    """Track the documents the score job finishes, in this process or in local worker processes,
    out of `total` (e.g. `pipeline.read.count_records`; None: a count without an ETA). Yields
    `settle(count)`: call it with the job's own count when it ends, so a runner whose workers were
    out of reach (remote) still ends the stage at the true count."""
    seen = 0
    settled: list[int] = []
    lock = threading.Lock()
    with track(description, total=total, unit="documents") as advance:

        def count(n: int) -> None:
            nonlocal seen
            with lock:
                seen += n
                advance(n)

        with _counter_dir() as directory, _polling(directory, count), counting_documents(count):
            yield settled.append
        if settled:  # after the last poll, so nothing is counted twice
            advance(max(0, settled[-1] - seen))
