"""Reading tables and writing outputs atomically (temporary path beside the target, then rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".json", ".jsonl")


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV, Parquet, JSON (records or {column: value}) or JSONL table by its suffix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    Works for files and directories alike; an existing target is replaced whole.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = tmp_root / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
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
