"""Deterministic output shards: which shard a document goes to, its order there, and the bytes written.

The same inputs give the same files, byte for byte, whatever the runner, worker count or bundle
layout: a document's shard depends only on (domain, source, record), rows are sorted by that key
within a shard, and Parquet row groups are cut by the data alone. Scored batches travel from the
scoring step to the shard writers as Arrow IPC part files (`_parts/` in the output), not through
the runner, so the text is serialised once. No Beam transforms here: `pipeline.job` wraps these.
"""

from __future__ import annotations

import math
import os
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import schema as S

DEFAULT_NUM_SHARDS = 4
BYTES_PER_SHARD = 256 << 20  # inputs beyond 4 x this get more shards, so a shard fits in memory
BLOCK = 1024  # consecutive records of a file that go to the same shard
ROW_GROUP_BYTES = 64 << 20
ROW_GROUP_ROWS = 131_072
PARTS_DIR = "_parts"
# Parts are compressed like the output (IPC zstd is about as small as Parquet zstd on text, and
# cheaper to write), so the staged parts take about the output's size on disk, not the input's.
PART_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
SORT_KEY = [(S.DOMAIN, "ascending"), (S.SOURCE, "ascending"), (S.RECORD, "ascending")]


def default_num_shards(input_bytes: int) -> int:
    """DEFAULT_NUM_SHARDS, or one shard per BYTES_PER_SHARD of input when that is more."""
    return max(DEFAULT_NUM_SHARDS, math.ceil(input_bytes / BYTES_PER_SHARD))


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}.parquet"


def _source_hash(domain: str | None, source: str | None) -> int:
    return zlib.crc32(f"{domain or ''}\x00{source or ''}".encode("utf-8", "surrogatepass"))


def shard_of(domain: str | None, source: str | None, record: int | None, num_shards: int) -> int:
    """Shard of one record: blocks of BLOCK consecutive records of a file, dealt round the shards."""
    return (_source_hash(domain, source) + max(0, (record or 1) - 1) // BLOCK) % num_shards


def shard_ids(batch: pa.RecordBatch | pa.Table, num_shards: int) -> np.ndarray:
    """`shard_of` for every row of a batch with `domain`, `source` and `record` columns."""
    pairs = pc.binary_join_element_wise(
        pc.fill_null(batch.column(S.DOMAIN), ""), pc.fill_null(batch.column(S.SOURCE), ""), "\x00"
    )
    if isinstance(pairs, pa.ChunkedArray):
        pairs = pairs.combine_chunks()
    encoded = pairs.dictionary_encode()
    bases = np.array(
        [zlib.crc32(p.encode("utf-8", "surrogatepass")) for p in encoded.dictionary.to_pylist()], np.int64
    )
    records = np.maximum(np.asarray(batch.column(S.RECORD)) - 1, 0)
    return (bases[encoded.indices.to_numpy()] + records // BLOCK) % num_shards


# --- part files: scored batches on their way to the shard writers -------------------------------


def _is_local(path: str) -> bool:
    return "://" not in path


def _open_write(path: str) -> Any:
    if _is_local(path):
        return pa.OSFile(path, "wb")
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path)


def _open_read(path: str) -> Any:
    if _is_local(path):
        return pa.memory_map(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)


def _make_dirs(directory: str) -> None:
    if _is_local(directory):
        os.makedirs(directory, exist_ok=True)


class PartWriters:
    """One Arrow IPC stream per shard that this bundle touches, under `parts_dir`.

    `write(batch)` splits a batch by shard; `close()` returns (shard, path) for every part written."""

    def __init__(self, parts_dir: str, num_shards: int) -> None:
        self.parts_dir = parts_dir
        self.num_shards = num_shards
        self._open: dict[int, tuple[Any, Any, str]] = {}

    def _writer(self, shard: int, schema: pa.Schema) -> Any:
        if shard not in self._open:
            _make_dirs(self.parts_dir)
            path = f"{self.parts_dir.rstrip('/')}/{shard:05d}-{uuid.uuid4().hex}.arrow"
            sink = _open_write(path)
            self._open[shard] = (sink, pa.ipc.new_stream(sink, schema, options=PART_OPTIONS), path)
        return self._open[shard][1]

    def write(self, batch: pa.RecordBatch, shards: np.ndarray | None = None) -> None:
        """Rows to the part of their shard: `shard_ids`, or the given shard of each row."""
        if batch.num_rows == 0:
            return
        if shards is None:
            shards = shard_ids(batch, self.num_shards)
        present = np.unique(shards).tolist()
        for shard in present:
            part = batch if len(present) == 1 else batch.filter(pa.array(shards == shard))
            self._writer(shard, batch.schema).write_batch(part)

    def close(self) -> list[tuple[int, str]]:
        out = []
        for shard, (sink, writer, path) in sorted(self._open.items()):
            writer.close()
            sink.close()
            out.append((shard, path))
        self._open.clear()
        return out


def remove_parts(parts_dir: str) -> None:
    """Delete the part files (a local directory, or the objects under a remote prefix)."""
    if _is_local(parts_dir):
        import shutil

        shutil.rmtree(parts_dir, ignore_errors=True)
        return
    from apache_beam.io.filesystems import FileSystems

    prefix = parts_dir.rstrip("/")
    patterns = [f"{prefix}/*", f"{prefix}/*/*"]  # the parts and a stage's own folder (dedup's bands)
    matched = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if matched:
        FileSystems.delete(matched)


def remove_files(paths: Sequence[str]) -> None:
    """Delete the given files (local or remote); a file already gone is no error."""
    local = [p for p in paths if _is_local(p)]
    for path in local:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    remote = [p for p in paths if not _is_local(p)]
    if remote:
        from apache_beam.io.filesystems import FileSystems

        FileSystems.delete([p for p in remote if FileSystems.exists(p)])


def all_exist(paths: Iterable[str]) -> bool:
    """Every file exists (local or remote)."""
    paths = list(paths)
    if all(_is_local(p) for p in paths):
        return all(os.path.exists(p) for p in paths)
    from apache_beam.io.filesystems import FileSystems

    return all(FileSystems.exists(p) for p in paths)


def read_counted_columns(path: str) -> pa.Table:
    """The columns of a written scored shard that its counts (`pipeline.stats.scored_counts`) need."""
    with _open_read(path) as source:
        return pq.read_table(source, columns=[S.DOMAIN, S.KEEP, S.N_TOKENS, S.DROP_REASON])


def read_parts(paths: Iterable[str]) -> pa.Table | None:
    """The rows of the given part files, as one table (None for no parts)."""
    tables = []
    for path in paths:
        with _open_read(path) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


# --- order and bytes ---------------------------------------------------------------------------


def sort_documents(table: pa.Table) -> pa.Table:
    """Rows in (domain, source, record) order. Batches arrive as sorted runs, so the result is made
    of zero-copy slices of those runs rather than a row-by-row gather."""
    if table.num_rows < 2:
        return table
    order = pc.sort_indices(table, sort_keys=SORT_KEY).to_numpy()
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(order)]])
    return pa.concat_tables(
        [table.slice(int(order[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]
    )


def row_group_bounds(table: pa.Table) -> list[tuple[int, int]]:
    """(offset, length) row groups of at most ROW_GROUP_ROWS rows and about ROW_GROUP_BYTES of text,
    cut by the data alone so the same rows always give the same file."""
    n = table.num_rows
    if n == 0:
        return []
    if S.TEXT in table.column_names:
        sizes = pc.fill_null(pc.binary_length(table.column(S.TEXT)), 0).to_numpy()
        ends = np.cumsum(sizes.astype(np.int64))
    else:
        ends = np.zeros(n, np.int64)
    bounds, start = [], 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + ROW_GROUP_BYTES, side="right"))
        stop = min(max(stop, start + 1), start + ROW_GROUP_ROWS, n)
        bounds.append((start, stop - start))
        start = stop
    return bounds


def write_shard(table: pa.Table, path: str, schema: pa.Schema) -> None:
    """`table` as Parquet (zstd) on any Beam filesystem, in deterministic row groups."""
    table = table.select(schema.names).cast(schema)
    with _open_write(path) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for offset, length in row_group_bounds(table):
            group = table.slice(offset, length).combine_chunks()
            writer.write_table(group, row_group_size=length)


def sort_dead_letters(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead-letter rows in (domain, source, record, stage, id, error, raw) order."""

    def key(row: dict[str, Any]) -> tuple:
        return (
            row.get(S.DOMAIN) or "",
            row.get(S.SOURCE) or "",
            row.get(S.RECORD) or 0,
            row.get(S.STAGE) or "",
            row.get(S.ID) or "",
            row.get(S.ERROR) or "",
            row.get(S.RAW) or "",
        )

    return sorted(rows, key=key)
