"""Deterministic shards without Beam: shard assignment, row order, row groups, part files, bytes."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline import shards
from pipeline.read import docs_batch


def batch(source: str, records: list[int], domain: str = "web") -> pa.RecordBatch:
    texts = [f"text of {source} line {r} " + "word " * (r % 7) for r in records]
    return docs_batch(domain, source, [f"{source}:{r}" for r in records], texts, records)


def test_shard_ids_match_shard_of_and_deal_blocks():
    b = batch("a.jsonl", list(range(1, 5000, 3)))
    ids = shards.shard_ids(b, 4)
    assert ids.tolist() == [shards.shard_of("web", "a.jsonl", r, 4) for r in b.column(S.RECORD).to_pylist()]
    per_block = {r // shards.BLOCK for r in range(0, 5000)}
    assert len(per_block) == 5 and len(set(ids.tolist())) == 4  # 5 blocks dealt round 4 shards
    records = np.asarray(b.column(S.RECORD))
    for block in range(5):  # a block of consecutive records stays together
        assert len(set(ids[(records - 1) // shards.BLOCK == block].tolist())) == 1
    assert shards.default_num_shards(0) == shards.DEFAULT_NUM_SHARDS
    assert shards.default_num_shards(10 * shards.BYTES_PER_SHARD + 1) == 11


def test_part_files_round_trip_and_sort_to_one_order(tmp_path):
    batches = [batch("b.jsonl", list(range(1, 3000))), batch("a.jsonl", [5, 9, 12]), batch("a.jsonl", [1, 2])]
    writers = shards.PartWriters(str(tmp_path / "parts"), 3)
    for b in reversed(batches):  # arrival order differs from the output order
        writers.write(b)
    parts = writers.close()
    assert sorted({shard for shard, _ in parts}) == [shard for shard, _ in parts]
    rows = []
    for shard in range(3):
        table = shards.read_parts([p for s, p in parts if s == shard])
        if table is None:
            continue
        ordered = shards.sort_documents(table)
        expected = table.take(pc.sort_indices(table, sort_keys=shards.SORT_KEY))
        assert ordered.equals(expected)
        rows += ordered.column(S.ID).to_pylist()
    assert sorted(rows) == sorted(pa.Table.from_batches(batches).column(S.ID).to_pylist())


def test_parts_at_a_higher_zstd_level_are_smaller_and_read_the_same(tmp_path):
    """--dedup stages its parts at DEDUP_PART_LEVEL: the same rows, in fewer bytes (on real text: here
    Python's own modules, each a document once)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    n = len(texts)
    b = docs_batch("web", "a.jsonl", [f"d{i}" for i in range(n)], texts, list(range(1, n + 1)))
    sizes, tables = {}, {}
    for level in (shards.PART_LEVEL, shards.DEDUP_PART_LEVEL):
        writers = shards.PartWriters(str(tmp_path / f"level{level}"), 1, level=level)
        writers.write(b)
        [(_, path)] = writers.close()
        sizes[level], tables[level] = os.path.getsize(path), shards.read_parts([path])
    assert tables[shards.PART_LEVEL].equals(tables[shards.DEDUP_PART_LEVEL])
    assert tables[shards.PART_LEVEL].equals(pa.Table.from_batches([b]))
    assert n > 100 and sizes[shards.DEDUP_PART_LEVEL] < 0.95 * sizes[shards.PART_LEVEL]


def test_shard_parts_hold_each_shards_rows_in_order_as_slices_or_gathered():
    b = batch("a.jsonl", list(range(1, 5000, 2)))  # runs of BLOCK records: zero-copy slices
    ids = shards.shard_ids(b, 4)
    parts = list(shards._shard_parts(b, ids))
    assert len(parts) > 4 and [s for s, _ in parts] == sorted(s for s, _ in parts)
    text = b.column(S.TEXT)
    for _, part in parts:  # a slice shares the batch's text buffer
        assert part.column(S.TEXT).buffers()[2].address == text.buffers()[2].address
    alternating = np.arange(b.num_rows) % 3  # rows that alternate shards: gathered per shard
    for ids_ in (ids, alternating):
        got: dict[int, list[str]] = {}
        for shard, part in shards._shard_parts(b, ids_):
            got.setdefault(shard, []).extend(part.column(S.ID).to_pylist())
        assert got == {
            int(s): b.filter(pa.array(ids_ == s)).column(S.ID).to_pylist() for s in np.unique(ids_)
        }
    assert len(list(shards._shard_parts(b, alternating))) == 3


def test_parquet_bytes_do_not_depend_on_chunking(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 20_000)  # several row groups
    schema = pa.schema([f for f in batch("x", [1]).schema if f.name != S.RECORD])
    table = pa.Table.from_batches([batch("a.jsonl", list(range(1, 2001)))])
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=77))
    shards.write_shard(table, str(tmp_path / "one.parquet"), schema)
    shards.write_shard(rechunked, str(tmp_path / "two.parquet"), schema)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    meta = pq.ParquetFile(tmp_path / "one.parquet").metadata
    assert meta.num_row_groups > 1 and meta.num_rows == 2000
    bounds = shards.row_group_bounds(table)
    assert sum(n for _, n in bounds) == 2000 and bounds[0][0] == 0
    empty = tmp_path / "empty.parquet"
    shards.write_shard(schema.empty_table(), str(empty), schema)
    assert pq.read_table(empty).schema.equals(schema) and pq.read_table(empty).num_rows == 0


def test_dead_letters_sort_with_missing_fields():
    rows = [
        {S.DOMAIN: "b", S.SOURCE: "f", S.RECORD: 2, S.STAGE: "read", S.ERROR: "x"},
        {S.DOMAIN: None, S.SOURCE: None, S.RECORD: None, S.STAGE: "read", S.ERROR: "y"},
        {S.DOMAIN: "b", S.SOURCE: "f", S.RECORD: 1, S.STAGE: "read", S.ERROR: "z"},
    ]
    assert [r[S.ERROR] for r in shards.sort_dead_letters(rows)] == ["y", "z", "x"]


def test_shard_writer_removes_its_parts_and_a_retry_recounts_from_the_written_shard(tmp_path):
    from pipeline.job import _WriteShardFn
    from pipeline.select import Selection
    from pipeline.stages import conform

    schema = S.scored_schema([], with_text=True).append(pa.field(S.RECORD, pa.int64()))
    columns = [c for c in schema.names if c not in (S.KEEP, S.DUPLICATE_OF)]
    writers = shards.PartWriters(str(tmp_path / "out" / shards.PARTS_DIR), 1)
    for b in (batch("b.jsonl", list(range(1, 900))), batch("a.jsonl", [3, 1, 2])):
        b = b.append_column(S.N_TOKENS, pa.array([5] * b.num_rows, pa.int64()))
        writers.write(conform(b, columns, schema))
    parts = [("part", path) for _, path in writers.close()]
    assert len(parts) == 1 and all(os.path.exists(path) for _, path in parts)
    fn = _WriteShardFn(str(tmp_path / "out"), 1, None, Selection(), with_text=True)
    (first,) = list(fn.process((0, parts)))
    assert not any((tmp_path / "out" / shards.PARTS_DIR).iterdir())  # committed parts are gone
    written = (tmp_path / "out" / shards.shard_name(S.SCORED_PREFIX, 0, 1)).read_bytes()
    (retry,) = list(fn.process((0, parts)))  # the runner retries the shard after its parts went
    assert (tmp_path / "out" / shards.shard_name(S.SCORED_PREFIX, 0, 1)).read_bytes() == written
    assert retry[0] == first[0] == 0
    assert [(d, c.tolist()) for d, c in retry[1]] == [(d, c.tolist()) for d, c in first[1]]
    assert first[1][0][1][:3].tolist() == [902, 902, 902 * 5]  # scored, kept, tokens


def _scored_part(tmp_path, name: str, batches: list[pa.RecordBatch]) -> str:
    """A part file as the stage step writes it (possibly with empty batches, or none)."""
    from pipeline.stages import conform

    schema = S.scored_schema([], with_text=True).append(pa.field(S.RECORD, pa.int64()))
    columns = [c for c in schema.names if c not in (S.KEEP, S.DUPLICATE_OF)]
    path = str(tmp_path / f"{name}.arrow")

    def scored(b: pa.RecordBatch) -> pa.RecordBatch:
        b = b.append_column(S.N_TOKENS, pa.array([len(b) % 5] * b.num_rows, pa.int64()))
        return conform(b, columns, schema)

    part_schema = scored(batch("x", [1])).schema
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, part_schema, options=shards.PART_OPTIONS) as w:
        for b in batches:
            w.write_batch(scored(b))
    return path


def test_merged_shard_equals_the_in_memory_sort_on_adversarial_parts(tmp_path, monkeypatch):
    """Records of one file interleaved across parts and within batches, equal keys in several parts,
    empty parts, dead letters: the streaming merge writes the bytes of sorting it all in memory."""
    from pipeline.job import _WriteShardFn
    from pipeline.select import Selection
    from pipeline.stats import stats_table

    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 3_000)  # row groups and merge chunks cut across
    monkeypatch.setattr(shards, "ROW_GROUP_ROWS", 50)
    monkeypatch.setattr(shards, "MERGE_ROWS", 37)
    rng = np.random.default_rng(0)
    records = rng.permutation(np.arange(1, 400)).tolist()
    paths = [
        _scored_part(tmp_path, "odd", [batch("f.jsonl", sorted(records[0:150:2])), batch("a.jsonl", [7, 3])]),
        _scored_part(tmp_path, "none", []),
        _scored_part(tmp_path, "empty", [batch("f.jsonl", [])]),
        _scored_part(tmp_path, "mixed", [batch("f.jsonl", records[150:300]), batch("a.jsonl", [3, 1, 3])]),
        _scored_part(tmp_path, "rest", [batch("f.jsonl", sorted(records[1:150:2]) + records[300:])]),
        _scored_part(tmp_path, "other", [batch("f.jsonl", [5, 6], domain="code"), batch("f.jsonl", [9])]),
    ]
    parts = sorted(paths)
    table = shards.read_parts(parts)
    schema = S.scored_schema([], with_text=True)
    expected = shards.sort_documents(table).append_column(S.KEEP, pa.array([True] * table.num_rows))
    expected = expected.append_column(S.DUPLICATE_OF, pa.nulls(table.num_rows, pa.string()))
    shards.write_shard(expected, str(tmp_path / "expected.parquet"), schema)
    assert pq.ParquetFile(tmp_path / "expected.parquet").metadata.num_row_groups > 5

    merged = pa.concat_tables(shards.merge_parts(parts))
    assert merged.equals(shards.sort_documents(table))  # equal keys keep the order of `parts`
    ids = ["f.jsonl:5", "f.jsonl:6", "a.jsonl:1", "a.jsonl:3", "a.jsonl:3", "a.jsonl:3", "a.jsonl:7"]
    assert merged.column(S.ID).to_pylist()[:7] == ids  # "code" first; f.jsonl:9 of "other" is web's
    assert merged.column(S.N_TOKENS).to_pylist()[3:6] == [3, 3, 2]  # ties: part "mixed", then "odd"
    assert all(os.path.exists(p) for p in parts)  # not asked to remove

    dead = [
        {S.DOMAIN: "web", S.SOURCE: "f.jsonl", S.RECORD: 4, S.STAGE: "read", S.ERROR: "bad json", S.RAW: "{"},
        {S.DOMAIN: "web", S.SOURCE: "a.jsonl", S.RECORD: 2, S.STAGE: "read", S.ERROR: "no text", S.RAW: "{}"},
    ]
    values = [("part", p) for p in parts] + [("dead", row) for row in dead]
    fn = _WriteShardFn(str(tmp_path / "out"), 1, None, Selection(), with_text=True)
    (tmp_path / "out").mkdir()
    ((shard, counts),) = list(fn.process((0, values)))
    written = tmp_path / "out" / shards.shard_name(S.SCORED_PREFIX, 0, 1)
    assert written.read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert not any(os.path.exists(p) for p in parts)  # each part went once merged
    written.unlink()  # as if the attempt died mid-merge: parts gone, no shard (it appears whole or not)
    with pytest.raises(RuntimeError, match="shard 0: an earlier attempt removed part files"):
        list(fn.process((0, values)))
    shards.write_shard(expected, str(written), schema)
    dead_written = pq.read_table(tmp_path / "out" / shards.shard_name(S.DEAD_LETTER_PREFIX, 0, 1))
    assert dead_written.column(S.ERROR).to_pylist() == ["no text", "bad json"]
    stats = {r[S.DOMAIN]: r for r in stats_table(counts, ["code", "web"]).to_pylist()}
    assert [stats["code"][S.DOCS_SCORED], stats["web"][S.DOCS_SCORED]] == [2, table.num_rows - 2]
    assert [stats["code"][S.DOCS_DEAD_LETTER], stats["web"][S.DOCS_DEAD_LETTER]] == [0, 2]
    assert (
        stats["web"][S.TOKENS_IN]
        == pc.sum(pc.filter(table[S.N_TOKENS], pc.equal(table[S.DOMAIN], "web"))).as_py()
    )


def test_parts_per_input_file_merge_a_few_batches_at_a_time(tmp_path, monkeypatch):
    """Parts cut at a new input file once full: the merge holds about one batch per part it reads
    from at once, not the shard, and removes each part when it is done with it."""
    monkeypatch.setattr(shards, "PART_BYTES", 1)  # every new file starts a part
    monkeypatch.setattr(shards, "MERGE_ROWS", 100)
    writers = shards.PartWriters(str(tmp_path / "parts"), 1, per_source=True)
    for name in ["c.jsonl", "a.jsonl", "b.jsonl"]:  # arrival order is not the key order
        for first in range(1, 2000, 250):
            writers.write(batch(name, list(range(first, first + 250))))
    parts = [path for _, path in writers.close()]
    assert len(parts) == 3 and all(
        len(set(shards.read_parts([p]).column(S.SOURCE).to_pylist())) == 1 for p in parts
    )
    held, gone = [], []
    real_get = shards._PartBatches.get

    def get(self, b):
        held.append(len(self._loaded))
        gone.append(sum(not os.path.exists(p) for p in parts))
        return real_get(self, b)

    monkeypatch.setattr(shards._PartBatches, "get", get)
    merged = pa.concat_tables(shards.merge_parts(sorted(parts), remove=True))
    assert merged.column(S.ID).to_pylist() == [f"{n}.jsonl:{r}" for n in "abc" for r in range(1, 2001)]
    assert max(held) <= 1  # a batch is dropped once its rows are out, before the next is read
    assert gone[-1] == 2 and not any(os.path.exists(p) for p in parts)  # a, b gone before c's end
