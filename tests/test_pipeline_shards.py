"""Deterministic shards without Beam: shard assignment, row order, row groups, part files, bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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


def test_parquet_bytes_do_not_depend_on_chunking(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 20_000)  # several row groups
    schema = pa.schema([f for f in batch("x", [1]).schema if f.name != S.RECORD])
    table = pa.Table.from_batches([batch("a.jsonl", list(range(1, 2001)))])
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=77))
    shards.write_parquet(table, str(tmp_path / "one.parquet"), schema)
    shards.write_parquet(rechunked, str(tmp_path / "two.parquet"), schema)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    meta = pq.ParquetFile(tmp_path / "one.parquet").metadata
    assert meta.num_row_groups > 1 and meta.num_rows == 2000
    bounds = shards.row_group_bounds(table)
    assert sum(n for _, n in bounds) == 2000 and bounds[0][0] == 0
    empty = tmp_path / "empty.parquet"
    shards.write_parquet(schema.empty_table(), str(empty), schema)
    assert pq.read_table(empty).schema.equals(schema) and pq.read_table(empty).num_rows == 0


def test_dead_letters_sort_with_missing_fields():
    rows = [
        {S.DOMAIN: "b", S.SOURCE: "f", S.RECORD: 2, S.STAGE: "read", S.ERROR: "x"},
        {S.DOMAIN: None, S.SOURCE: None, S.RECORD: None, S.STAGE: "read", S.ERROR: "y"},
        {S.DOMAIN: "b", S.SOURCE: "f", S.RECORD: 1, S.STAGE: "read", S.ERROR: "z"},
    ]
    assert [r[S.ERROR] for r in shards.sort_dead_letters(rows)] == ["y", "z", "x"]
