"""Reading tables and writing outputs safely: atomically, under a lock, never over what we did not write.

Every output goes through `atomic_path`: it is built in a temporary path beside the target
(`.NAME.tmp-PID-XXXX`) and moved into place in one step. A directory output carries a marker file
(`MARKER`); only a directory with that marker is ever replaced, a file output never replaces a
directory, and an output that is, holds or sits inside one of the command's inputs is refused. While
it is written, a lock file `.NAME.lock` holding the writer's pid makes a second writer of the same
target fail at once. Temporary paths left by a killed run are removed by the next run that takes the
lock. A directory is swapped with its replacement by `renameat2(RENAME_EXCHANGE)` where the system has
it (Linux), so a reader sees the old output or the new one, never none; see docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".json", ".jsonl")
MARKER = ".datamixer-output"
MARKER_TEXT = '{"written_by": "datamixer"}\n'
MAX_YAML_BYTES = 10 << 20


class OutputRefused(ValueError):
    """An output path that would replace or delete something datamixer did not write."""


class OutputLocked(RuntimeError):
    """Another live process is writing the same output."""


class YamlRefused(ValueError):
    """A YAML document datamixer will not read (aliases, or too large)."""


def safe_load_yaml(text: str, source: str | os.PathLike[str] = "<yaml>") -> Any:
    """`yaml.safe_load` that refuses aliases (`*name`) and documents over MAX_YAML_BYTES.

    Aliases are how a small file expands into gigabytes (a "billion laughs" document); no
    datamixer file needs them."""
    if len(text) > MAX_YAML_BYTES:
        raise YamlRefused(f"{source}: YAML file is over {MAX_YAML_BYTES >> 20} MiB; refusing to read it")
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise YamlRefused(
                    f"{source}: YAML aliases (*{event.anchor}) are not allowed; write the values out"
                )
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise YamlRefused(f"{source}: {problem}{where}") from None


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """A YAML file through `safe_load_yaml`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise YamlRefused(f"{path}: YAML file is over {MAX_YAML_BYTES >> 20} MiB; refusing to read it")
    return safe_load_yaml(path.read_text(encoding="utf-8"), path)


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV, Parquet, JSON (records or {column: value}) or JSONL table by its suffix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a table file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return pd.DataFrame({"domain": list(data), "value": list(data.values())})
        return pd.DataFrame(data)
    raise ValueError(f"{path}: unsupported table format {suffix!r}; use one of {TABLE_SUFFIXES}")


# --- output safety -----------------------------------------------------------------------------


def is_own_output(path: str | os.PathLike[str]) -> bool:
    """True for a directory that datamixer wrote (it holds the marker file)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def check_output(target: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Raise OutputRefused when writing `target` could replace or delete what datamixer did not write.

    Refused: an existing directory without the marker; an existing path that is neither a file nor
    a directory; a target equal to, holding, or inside one of `inputs`."""
    target = Path(target)
    resolved = target.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if resolved == source or resolved in source.parents:
            raise OutputRefused(f"output {target} is or holds the input {given}; writing it would delete it")
        if source in resolved.parents:
            raise OutputRefused(f"output {target} is inside the input {given}; give a path outside it")
    if target.is_symlink() and target.is_dir():
        raise OutputRefused(f"{target}: is a link to a directory; give the directory itself or a new path")
    if target.is_dir() and not is_own_output(target):
        raise OutputRefused(
            f"{target}: is a directory that datamixer did not write (no {MARKER} in it); "
            "refusing to replace it: give a new path"
        )
    if target.exists() and not target.is_dir() and not target.is_file():
        raise OutputRefused(f"{target}: exists and is not a regular file; refusing to replace it")


def temp_prefix(target: str | os.PathLike[str]) -> str:
    """Name prefix of the temporary paths that `atomic_path` makes beside `target`."""
    return f".{Path(target).name}.tmp-"


def resume_path(target: str | os.PathLike[str]) -> Path:
    """The resume directory of a job's output (`pipeline.resume`): `.NAME.resume` beside it, absolute
    (workers write there)."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.resume"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    try:
        data = json.loads(lock.read_text())
        return int(data["pid"]), str(data["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold `.NAME.lock` beside `target` (holding our pid and host) while the block runs.

    A lock whose owner is a live process fails at once with OutputLocked; a lock left by a dead
    process on this host is taken over."""
    target = Path(target)
    lock = target.parent / f".{target.name}.lock"
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    mine = lock.with_name(f"{lock.name}.{os.getpid()}")
    mine.write_text(body)
    try:
        for _attempt in range(3):
            try:
                os.link(mine, lock)  # atomic, and the lock is never seen without its owner
                break
            except FileExistsError:
                owner = _lock_owner(lock)
                if owner is not None and owner[1] == socket.gethostname() and not _pid_alive(owner[0]):
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()
                    continue
                who = "an unreadable owner" if owner is None else f"pid {owner[0]} on {owner[1]}"
                raise OutputLocked(
                    f"{target}: another datamixer job ({who}) is writing this output; "
                    f"wait for it, or remove {lock} if that process is gone"
                ) from None
        else:
            raise OutputLocked(f"{target}: could not take the lock {lock}")
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        if _lock_owner(lock) == (os.getpid(), socket.gethostname()):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary paths beside `target` left by killed datamixer runs (their pid is gone).

    Call it while holding the target's lock."""
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    prefix = temp_prefix(target)
    for path in target.parent.iterdir():
        if not path.name.startswith(prefix):
            continue
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), ctypes.c_uint(rename_exchange)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_into_place(tmp: Path, target: Path) -> None:
    if tmp.is_dir():
        (tmp / MARKER).write_text(MARKER_TEXT)
        if target.is_dir() and not target.is_symlink():
            check_output(target)  # still ours: a directory made meanwhile is not replaced
            if _exchange(tmp, target):
                return  # the old output is now at `tmp`, removed with the temporary directory
            os.replace(target, tmp.with_name(tmp.name + ".old"))  # brief window with no output
    elif target.is_dir():
        raise OutputRefused(f"{target}: is a directory; a file output never replaces a directory")
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()
) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success move it onto `target`.

    Works for files and directories alike (a directory gets the MARKER file). Refuses, before any
    work, a target that `check_output` refuses; holds the target's lock throughout; removes stale
    temporaries of killed runs; on failure leaves the old target untouched."""
    target = Path(target)
    check_output(target, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(target):
        remove_stale_temps(target)
        tmp_root = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(target)}{os.getpid()}-", dir=target.parent))
        tmp = tmp_root / target.name
        try:
            yield tmp
            _move_into_place(tmp, target)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write text to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json(target: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON (sorted keys, indented) atomically."""
    return write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_yaml(target: str | os.PathLike[str], data: Any) -> Path:
    """Write YAML (keys in the given order) atomically."""
    return write_text(target, yaml.safe_dump(data, sort_keys=False))


def write_parquet(target: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write a DataFrame as Parquet atomically, without the pandas index."""
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)
