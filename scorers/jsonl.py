"""Reading JSONL text files by glob, for the scorers' standalone commands (no Beam, no torch)."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any


def jsonl_records(pattern: str, field: str = "text") -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(path, line number, record) for every non-blank line of the files matching `pattern`, in
    file order; a line that is not a JSON object with `field` is a ValueError naming path:line."""
    paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not paths:
        raise FileNotFoundError(f"{pattern}: no files match")
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    record[field]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    message = f"{path}:{number}: expected a JSON object with a {field!r} string"
                    raise ValueError(message) from exc
                yield path, number, record


def jsonl_documents(pattern: str, field: str = "text") -> tuple[list[dict[str, str]], list[str]]:
    """The documents of the files matching `pattern`: rows of `id` (default path name:line), `domain`
    (default the file name before its first dot) and `source` (the path), and their texts, in order."""
    rows, texts = [], []
    for path, number, record in jsonl_records(pattern, field):
        text = record[field]
        if not isinstance(text, str):
            raise ValueError(f"{path}:{number}: {field!r} is not a string")
        name = os.path.basename(path)
        rows.append(
            {
                "id": str(record.get("id", f"{name}:{number}")),
                "domain": str(record.get("domain", name.split(".")[0])),
                "source": path,
            }
        )
        texts.append(text)
    return rows, texts
