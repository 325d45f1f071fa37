"""Deterministic output shards: which shard a document goes to, its order there, and the bytes written.

The same inputs give the same files, byte for byte, whatever the runner, worker count or bundle
layout: a document's shard depends only on (domain, source, record), rows are sorted by that key
within a shard, and Parquet row groups are cut by the data alone. Scored batches travel from the
scoring step to the shard writers as Arrow IPC part files (`_parts/` in the output), not through
the runner, so the text is serialised once. A shard writer merges its parts (`merge_parts`): it
sorts their keys alone, then reads the rows a few record batches at a time, so its memory is about
one row group and the batches whose keys interleave, not the shard. No Beam transforms here:
`pipeline.job` wraps these.
"""

from __future__ import annotations

import math
import os
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
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
PART_BYTES = 4 << 20  # a part holding this much starts a new one at its next input file (see PartWriters)
MERGE_ROWS = 2048  # rows a shard merge gathers at a time
# Parts are compressed like the output (IPC zstd is about as small as Parquet zstd on text, and
# cheaper to write), so the staged parts take about the output's size on disk, not the input's.
PART_LEVEL = 1  # zstd level of the parts: Arrow's default
# With --dedup the staged parts share the disk with dedup's band rows until the shards are written:
# zstd level 3 makes them about 11% smaller on the bench's text for about 2 ms more CPU per MB of
# text (see docs/scale.md).
DEDUP_PART_LEVEL = 3


def part_options(level: int = PART_LEVEL) -> pa.ipc.IpcWriteOptions:
    """IPC write options of part files: zstd at `level`."""
    return pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=level))


PART_OPTIONS = part_options()
SORT_KEY = [(S.DOMAIN, "ascending"), (S.SOURCE, "ascending"), (S.RECORD, "ascending")]
_KEY_COLUMNS = [name for name, _ in SORT_KEY]


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


def _shard_parts(batch: pa.RecordBatch, shards: np.ndarray) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(shard, rows) of a batch, each shard's rows in batch order. A file's batch holds a few runs of
    BLOCK records of one shard: they are sent as zero-copy slices (no copy of the text), in the order
    of the shards; rows that alternate shards more often than that are gathered per shard."""
    cuts = np.flatnonzero(shards[1:] != shards[:-1]) + 1
    starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(shards)]])
    present = np.flatnonzero(np.bincount(shards))  # (np.unique: a hash table, ~25x slower here)
    if len(starts) > 2 * len(present):
        for shard in present.tolist():
            yield shard, batch.filter(pa.array(shards == shard))
        return
    for i in np.argsort(shards[starts], kind="stable").tolist():
        yield int(shards[starts[i]]), batch.slice(int(starts[i]), int(ends[i] - starts[i]))


class PartWriters:
    """Arrow IPC files of the rows of each shard that this bundle touches, under `parts_dir`.

    `write(batch)` splits a batch by shard; `close()` returns (shard, path) for every part written.
    With `per_source`, a shard's part that holds PART_BYTES or more is closed when a batch of another
    input file comes, and a new one begins: parts then hold whole files' rows, so a shard's merge is
    done with most of them (and removes them) long before its end. `level`: their zstd level."""

    def __init__(
        self, parts_dir: str, num_shards: int, per_source: bool = False, level: int = PART_LEVEL
    ) -> None:
        self.parts_dir = parts_dir
        self.num_shards = num_shards
        self.per_source = per_source
        self._options = PART_OPTIONS if level == PART_LEVEL else part_options(level)
        self._open: dict[int, tuple[Any, Any, str]] = {}
        self._filled: dict[int, tuple[int, Any]] = {}  # shard -> (bytes written, last source)
        self._closed: list[tuple[int, str]] = []

    def _writer(self, shard: int, schema: pa.Schema) -> Any:
        if shard not in self._open:
            _make_dirs(self.parts_dir)
            path = f"{self.parts_dir.rstrip('/')}/{shard:05d}-{uuid.uuid4().hex}.arrow"
            sink = _open_write(path)
            self._open[shard] = (sink, pa.ipc.new_file(sink, schema, options=self._options), path)
        return self._open[shard][1]

    def _rotate(self, shard: int, part: pa.RecordBatch) -> None:
        """Close the shard's part when it is full and `part` comes from another file."""
        source = part.column(S.SOURCE)[0].as_py() if S.SOURCE in part.schema.names else None
        written, last = self._filled.get(shard, (0, source))
        if shard in self._open and written >= PART_BYTES and source != last:
            self._closed.append(self._close(shard))
            written = 0
        self._filled[shard] = (written + part.nbytes, source)

    def write(self, batch: pa.RecordBatch, shards: np.ndarray | None = None) -> None:
        """Rows to the part of their shard: `shard_ids`, or the given shard of each row."""
        if batch.num_rows == 0:
            return
        if shards is None:
            shards = shard_ids(batch, self.num_shards)
        for shard, part in _shard_parts(batch, shards):
            if self.per_source:
                self._rotate(shard, part)
            self._writer(shard, batch.schema).write_batch(part)

    def _close(self, shard: int) -> tuple[int, str]:
        sink, writer, path = self._open.pop(shard)
        writer.close()
        sink.close()
        return shard, path

    def close(self) -> list[tuple[int, str]]:
        out = self._closed + [self._close(shard) for shard in sorted(self._open)]
        self._closed, self._filled = [], {}
        return sorted(out)


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
            tables.append(pa.ipc.open_file(source).read_all())
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def _part_keys(paths: Sequence[str]) -> tuple[pa.Table, list[int]]:
    """The sort key of every row of the parts (only those columns are read), in the order of
    `paths` then of the rows in each, with its batch's index among all the parts' batches; and the
    number of batches of each part."""
    keys, batches_per_part, first = [], [], 0
    for path in paths:
        with _open_read(path) as source:
            schema = pa.ipc.open_file(source).schema
            fields = [schema.get_field_index(name) for name in _KEY_COLUMNS]
            reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=fields))
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                batch_ids = pa.array(np.full(batch.num_rows, first + i, np.int64))
                keys.append(pa.table([*batch.select(_KEY_COLUMNS).columns, batch_ids], [*_KEY_COLUMNS, "b"]))
            batches_per_part.append(reader.num_record_batches)
            first += reader.num_record_batches
    table = pa.concat_tables(keys, promote_options="permissive") if keys else None
    return (table if table is not None else pa.table({"b": pa.array([], pa.int64())})), batches_per_part


class _PartBatches:
    """Record batches of part files, read when first needed and dropped once all their rows are
    taken; a part file is closed (and removed, with `remove`) once all its batches are."""

    def __init__(self, paths: Sequence[str], batches_per_part: list[int], rows: np.ndarray, remove: bool):
        self._paths = paths
        self._part = np.repeat(np.arange(len(paths)), batches_per_part)
        self._index = np.concatenate([np.arange(n) for n in batches_per_part]) if paths else np.array([], int)
        self._rows_left = rows.copy()  # per batch
        self._batches_left = np.array(batches_per_part) - np.bincount(
            self._part[rows == 0], minlength=len(paths)
        )  # a batch without rows is done already
        self._readers: dict[int, tuple[Any, Any]] = {}
        self._loaded: dict[int, pa.RecordBatch] = {}
        self._remove = remove
        if remove:  # parts without a row are done already
            remove_files([path for path, n in zip(paths, self._batches_left, strict=True) if not n])

    def get(self, b: int) -> pa.RecordBatch:
        if b not in self._loaded:
            part = int(self._part[b])
            if part not in self._readers:
                source = _open_read(self._paths[part])
                self._readers[part] = (source, pa.ipc.open_file(source))
            self._loaded[b] = self._readers[part][1].get_batch(int(self._index[b]))
        return self._loaded[b]

    def taken(self, b: int, n: int) -> None:
        self._rows_left[b] -= n
        if self._rows_left[b]:
            return
        self._loaded.pop(b, None)
        part = int(self._part[b])
        self._batches_left[part] -= 1
        if not self._batches_left[part]:
            source, _ = self._readers.pop(part, (None, None))
            if source is not None:
                source.close()
            if self._remove:
                remove_files([self._paths[part]])


def merge_parts(paths: Sequence[str], remove: bool = False) -> Iterator[pa.Table]:
    """The rows of the part files in (domain, source, record) order, as consecutive tables of up to
    MERGE_ROWS rows; rows with equal keys in the order of `paths`, then of the rows in each (as
    `sort_documents` on their concatenation). Only the key columns are read to sort; the rows are
    read a record batch at a time, each dropped once its rows are all out, so memory holds the
    batches whose keys interleave, not the parts. `remove`: delete each part once it is all out."""
    keys, batches_per_part = _part_keys(paths)
    order = pc.sort_indices(keys, sort_keys=SORT_KEY).to_numpy() if keys.num_rows else np.array([], int)
    batch_of = keys.column("b").to_numpy()
    starts = np.concatenate([[0], np.cumsum(np.bincount(batch_of, minlength=sum(batches_per_part)))])
    row_in_batch = np.arange(len(batch_of)) - starts[batch_of]  # rows are in batch order in `keys`
    del keys
    batches = _PartBatches(paths, batches_per_part, np.diff(starts), remove)
    for chunk in range(0, len(order), MERGE_ROWS):
        rows = order[chunk : chunk + MERGE_ROWS]
        b, r = batch_of[rows], row_in_batch[rows]
        cut = np.flatnonzero((np.diff(b) != 0) | (np.diff(r) != 1)) + 1  # runs of consecutive rows
        run_starts, run_ends = np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])
        pieces = [
            pa.Table.from_batches([batches.get(int(b[s])).slice(int(r[s]), int(e - s))])
            for s, e in zip(run_starts, run_ends, strict=True)
        ]
        yield pa.concat_tables(pieces, promote_options="permissive")
        taken = np.bincount(b)
        for batch in np.flatnonzero(taken).tolist():
            batches.taken(batch, int(taken[batch]))


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
    return _group_bounds(_text_sizes(table, S.TEXT in table.column_names))


def _text_sizes(table: pa.Table, with_text: bool) -> np.ndarray:
    if not with_text:
        return np.zeros(table.num_rows, np.int64)
    return pc.fill_null(pc.binary_length(table.column(S.TEXT)), 0).to_numpy().astype(np.int64)


def _group_bounds(sizes: np.ndarray) -> list[tuple[int, int]]:
    n = len(sizes)
    ends = np.cumsum(sizes)
    bounds, start = [], 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + ROW_GROUP_BYTES, side="right"))
        stop = min(max(stop, start + 1), start + ROW_GROUP_ROWS, n)
        bounds.append((start, stop - start))
        start = stop
    return bounds


def row_groups(tables: Iterable[pa.Table], with_text: bool) -> Iterator[pa.Table]:
    """Consecutive tables of rows -> the row groups `row_group_bounds` cuts their concatenation into
    (by the text when `with_text`, else by rows), holding about one row group at a time."""
    held: list[pa.Table] = []
    sizes = np.zeros(0, np.int64)
    for table in tables:
        held.append(table)
        sizes = np.concatenate([sizes, _text_sizes(table, with_text)])
        while len(sizes) >= ROW_GROUP_ROWS or sizes.sum() > ROW_GROUP_BYTES:  # the first group is whole
            buffer = pa.concat_tables(held)
            _, length = _group_bounds(sizes)[0]
            held, sizes = [buffer.slice(0, length), buffer.slice(length)], sizes[length:]
            del buffer
            yield held.pop(0)  # the group's rows are then held by the caller alone, and freed with it
    if held:
        buffer = pa.concat_tables(held)
        del held
        for offset, length in _group_bounds(sizes):
            yield buffer.slice(offset, length)


def write_row_groups(groups: Iterable[pa.Table], path: str, schema: pa.Schema) -> None:
    """Parquet (zstd) on any Beam filesystem, one row group per table of `groups`; a local file
    appears whole or not at all (written beside, then renamed)."""
    target = f"{path}.partial" if _is_local(path) else path
    with _open_write(target) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for group in groups:
            group = group.select(schema.names).cast(schema).combine_chunks()
            writer.write_table(group, row_group_size=group.num_rows)
    if target != path:
        os.replace(target, path)


def write_shard(table: pa.Table, path: str, schema: pa.Schema) -> None:
    """`table` as Parquet (zstd) on any Beam filesystem, in deterministic row groups."""
    write_row_groups(row_groups([table], S.TEXT in schema.names), path, schema)


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
