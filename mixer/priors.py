"""Token counts per domain from tokenized files, for when there is no `domain_stats.parquet`.

Formats read (by suffix):

- `.idx` / `.bin`: a Megatron indexed dataset; the sum of the sequence lengths in the `.idx`
  (`MMIDIDX` header, version 1, dtype code, sequence and document counts, then int32 lengths:
  megatron-core's `datasets/indexed_dataset.py`); the `.bin` size is checked against it.
- `.npy`: a NumPy array (its size), or a headerless token file as OLMo and Olmix write them:
  file size / dtype size (`dtype`, default uint32 as in Olmix's `DataConfig`).
- `.parquet`, `.pq`: the sum of a token-count column (rows with `keep = false` left out).

A pure reader per format, and `count_tokens` over globs; the Megatron header is parsed here rather
than through megatron-core, which is a test dependency only.
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

MEGATRON_HEADER = b"MMIDIDX\x00\x00"
# megatron.core.datasets.indexed_dataset.DType: code -> numpy dtype
MEGATRON_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
NPY_MAGIC = b"\x93NUMPY"
RAW_DTYPE = "uint32"
PARQUET_TOKEN_COLUMNS = ("n_tokens", "tokens", "token_count", "num_tokens")
KEEP = "keep"


def megatron_tokens(path: str | os.PathLike[str]) -> int:
    """Tokens in a Megatron indexed dataset, given its `.idx`, `.bin` or prefix."""
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix in (".idx", ".bin") else path
    idx, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    if not idx.exists():
        raise FileNotFoundError(f"{idx}: no such Megatron index file")
    with open(idx, "rb") as stream:
        header = stream.read(len(MEGATRON_HEADER))
        if header != MEGATRON_HEADER:
            raise ValueError(f"{idx}: not a Megatron index (header {header!r}, expected {MEGATRON_HEADER!r})")
        (version,) = struct.unpack("<Q", stream.read(8))
        if version != 1:
            raise ValueError(f"{idx}: Megatron index version {version}; only version 1 is known")
        (code,) = struct.unpack("<B", stream.read(1))
        if code not in MEGATRON_DTYPES:
            raise ValueError(f"{idx}: unknown Megatron dtype code {code}")
        sequences, _documents = struct.unpack("<QQ", stream.read(16))
        lengths = np.frombuffer(stream.read(4 * sequences), dtype="<i4")
    if len(lengths) != sequences:
        raise ValueError(f"{idx}: truncated; {sequences} sequence lengths promised, {len(lengths)} found")
    tokens = int(lengths.sum(dtype=np.int64))
    if bin_path.exists():
        expected = tokens * np.dtype(MEGATRON_DTYPES[code]).itemsize
        if bin_path.stat().st_size != expected:
            raise ValueError(
                f"{bin_path}: {bin_path.stat().st_size} bytes, but {idx} describes {tokens} "
                f"tokens of {np.dtype(MEGATRON_DTYPES[code]).name} ({expected} bytes)"
            )
    return tokens


def numpy_tokens(path: str | os.PathLike[str], dtype: str = RAW_DTYPE) -> int:
    """Tokens in a `.npy` array, or in a headerless token file (size / itemsize of `dtype`)."""
    path = Path(path)
    with open(path, "rb") as stream:
        magic = stream.read(len(NPY_MAGIC))
    if magic == NPY_MAGIC:
        return int(np.load(path, mmap_mode="r").size)
    size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
    if size % itemsize:
        raise ValueError(
            f"{path}: {size} bytes is not a whole number of {dtype} tokens; pass the "
            "dtype it was written with"
        )
    return size // itemsize


def parquet_tokens(path: str | os.PathLike[str], column: str | None = None) -> int:
    """Sum of a token-count column (default: the first of PARQUET_TOKEN_COLUMNS present), kept rows only."""
    schema = pq.read_schema(path)
    column = column or next((c for c in PARQUET_TOKEN_COLUMNS if c in schema.names), None)
    if column is None or column not in schema.names:
        raise ValueError(
            f"{path}: no token-count column {column or list(PARQUET_TOKEN_COLUMNS)} "
            f"(columns: {schema.names}); pass the column name"
        )
    names = [column, KEEP] if KEEP in schema.names else [column]
    table = pq.read_table(path, columns=names).to_pandas()
    values = table[column]
    if values.isna().any() or (values < 0).any():
        row = int(np.flatnonzero((values.isna() | (values < 0)).to_numpy())[0])
        raise ValueError(f"{path}: row {row + 1}: {column!r} must be a count >= 0, got {values.iloc[row]!r}")
    if KEEP in table:
        values = values[table[KEEP].astype(bool)]
    return int(values.sum())


def file_tokens(path: str | os.PathLike[str], dtype: str = RAW_DTYPE, column: str | None = None) -> int:
    """Tokens in one tokenized file, by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".idx", ".bin"):
        return megatron_tokens(path)
    if suffix == ".npy":
        return numpy_tokens(path, dtype)
    if suffix in (".parquet", ".pq"):
        return parquet_tokens(path, column)
    raise ValueError(f"{path}: unknown tokenized format {suffix!r}; expected .idx/.bin, .npy or .parquet")


def expand(patterns: Sequence[str]) -> list[str]:
    """Files matching the globs; a Megatron dataset counts once (its `.bin` dropped beside an `.idx`)."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise FileNotFoundError(f"{pattern}: matches no file")
        files += matched
    files = list(dict.fromkeys(files))
    idx = {str(Path(f).with_suffix("")) for f in files if f.endswith(".idx")}
    return [f for f in files if not (f.endswith(".bin") and str(Path(f).with_suffix("")) in idx)]


def count_tokens(
    paths: Mapping[str, Sequence[str]], dtype: str = RAW_DTYPE, column: str | None = None
) -> dict[str, dict[str, int]]:
    """Domain -> {"tokens": total, "files": how many} over each domain's file globs."""
    out: dict[str, dict[str, int]] = {}
    for domain, patterns in paths.items():
        files = expand(list(patterns))
        out[domain] = {"tokens": sum(file_tokens(f, dtype, column) for f in files), "files": len(files)}
    return out
