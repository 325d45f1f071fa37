"""Reading and validation without running Beam: every bad-input case becomes a dead-letter row."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline import schema as S
from pipeline.read import ReadOptions, expand_inputs, read_file, stable_id

BAD_LINES = {
    b'{"text": broken': "invalid JSON",
    b'{"text": "caf\xe9 latin-1"}': "not valid UTF-8",
    b'{"body": "no text field"}': "missing or null",
    b'{"text": null}': "missing or null",
    b'{"text": 42}': "is int, not a string",
    b'{"text": ["a", "b"]}': "is list, not a string",
    b'{"text": "  \\n\\t "}': "is empty",
    b"[1, 2]": "not an object",
}


def read_all(path, opts=None):
    opts = opts or ReadOptions()
    docs, dead = [], []
    for batch, rows in read_file("web", str(path), opts):
        if batch is not None:
            docs += batch.to_pylist()
        dead += rows
    return docs, dead


def test_every_bad_line_is_dead_lettered_with_its_reason(tmp_path):
    good = [json.dumps({"id": f"g{i}", "text": f"good document {i}"}).encode() for i in range(5)]
    lines = good[:2] + list(BAD_LINES) + good[2:] + [b"", b"   "]  # blank lines are not records
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, dead = read_all(path)
    assert [d[S.ID] for d in docs] == [f"g{i}" for i in range(5)]
    assert len(docs) + len(dead) == len(good) + len(BAD_LINES)
    for row, (raw, reason) in zip(dead, BAD_LINES.items(), strict=True):
        assert reason in row[S.ERROR], row
        assert row[S.SOURCE] == str(path) and row[S.DOMAIN] == "web" and row[S.STAGE] == "read"
        assert row[S.RAW] == raw.decode("utf-8", "replace")
    assert [row[S.RECORD] for row in dead] == list(range(3, 3 + len(BAD_LINES)))


@pytest.mark.parametrize("policy", ["dead-letter", "truncate"])
def test_huge_document_is_truncated_or_dead_lettered(tmp_path, policy):
    path = tmp_path / "huge.jsonl"
    huge = "word " * 4_000_000  # 20 MB
    path.write_text(json.dumps({"text": huge}) + "\n" + json.dumps({"text": "small one"}) + "\n")
    docs, dead = read_all(path, ReadOptions(max_chars=1000, oversize=policy))
    if policy == "truncate":
        assert len(dead) == 0 and len(docs) == 2
        assert docs[0][S.N_CHARS] == 1000 and docs[0][S.TEXT] == huge[:1000]
    else:
        assert len(docs) == 1 and len(dead) == 1
        assert "20,000,000 characters" in dead[0][S.ERROR]
        assert len(dead[0][S.RAW]) == S.RAW_MAX_CHARS


def test_compressed_jsonl_and_id_options(tmp_path):
    records = [{"doc_id": i, "body": f"text number {i}"} for i in range(3)]
    payload = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    opts = ReadOptions(text_field="body", id_field="doc_id")
    for name in ("a.jsonl.gz", "b.jsonl.zst"):
        docs, dead = read_all(tmp_path / name, opts)
        assert not dead
        assert [d[S.ID] for d in docs] == ["0", "1", "2"]  # integer ids become strings
        assert [d[S.TEXT] for d in docs] == [r["body"] for r in records]


def test_missing_ids_are_stable_content_hashes(tmp_path):
    path = tmp_path / "noid.jsonl"
    path.write_text('{"text": "alpha"}\n{"text": "beta"}\n')
    first, _ = read_all(path)
    second, _ = read_all(path)
    assert [d[S.ID] for d in first] == [d[S.ID] for d in second] == [stable_id("alpha"), stable_id("beta")]
    assert stable_id("alpha") != stable_id("beta")


def test_parquet_bad_rows(tmp_path):
    table = pa.table(
        {
            "text": pa.array([b"fine text", b"\xff\xfe bad bytes", b"", None, b"also fine"], pa.binary()),
            "id": ["a", "b", "c", "d", None],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    docs, dead = read_all(tmp_path / "t.parquet")
    assert [d[S.TEXT] for d in docs] == ["fine text", "also fine"]
    assert docs[1][S.ID] == stable_id("also fine")
    assert [r[S.RECORD] for r in dead] == [2, 3, 4]
    assert "UTF-8" in dead[0][S.ERROR] and "empty" in dead[1][S.ERROR] and "missing" in dead[2][S.ERROR]
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    docs, dead = read_all(tmp_path / "ints.parquet")
    assert not docs and all("int, not a string" in r[S.ERROR] for r in dead) and len(dead) == 2


def test_batches_end_at_batch_bytes_for_long_documents(tmp_path):
    """Long documents make smaller batches (JSONL, compressed or not, and Parquet), each at most one
    record past `batch_bytes`, so a batch's memory does not grow with the documents' length; every
    record is read once, numbered as in its file."""
    rng = random.Random(3)
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    texts = [" ".join(rng.choices(words, k=rng.choice([10, 600, 2000]))) for _ in range(300)]
    lines = "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    (tmp_path / "a.jsonl").write_text(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    pq.write_table(
        pa.table({"text": texts, "id": [str(i) for i in range(300)]}),
        tmp_path / "c.parquet",
        row_group_size=64,
    )
    opts = ReadOptions(batch_bytes=20_000)
    for name in ("a.jsonl", "b.jsonl.gz", "c.parquet"):
        batches = [batch for batch, dead in read_file("d", str(tmp_path / name), opts) if not dead]
        assert [t for b in batches for t in b.column(S.TEXT).to_pylist()] == texts
        assert [r for b in batches for r in b.column(S.RECORD).to_pylist()] == list(range(1, 301))
        assert len(batches) > 15  # 300 records of 1.6 MB in all: not one batch of 4,096
        assert all(sum(map(len, b.column(S.TEXT).to_pylist()[:-1])) < 20_000 for b in batches)
    whole = [len(b) for b, _ in read_file("d", str(tmp_path / "c.parquet"), ReadOptions())]
    assert whole == [300]  # 1.6 MB: one batch under the default BATCH_BYTES
    pq.write_table(pa.table({"text": ["the same long text " * 500] * 300}), tmp_path / "d.parquet")
    batches = [b for b, _ in read_file("d", str(tmp_path / "d.parquet"), opts)]  # dictionary-encoded
    assert [len(b) for b in batches] == [3] * 100  # 9,500 characters each: the third reaches 20,000


def test_unmatched_glob_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        expand_inputs({"web": [str(tmp_path / "*.jsonl")]})


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_line_chunks_are_the_non_blank_lines_in_batches(monkeypatch, block):
    """Chunks hold `batch_size` non-blank lines numbered as in the file, or end at the line that
    brings them to `batch_bytes`, whatever the read block size (lines and batches across blocks),
    with blank lines of every kind between and around them."""
    import io

    import pipeline.read as read

    lines = [b"", b'{"a": 1}', b" \t", b"\r", b'  {"b": 2}', b"\x0b\x0c", b'{"c": 3}\r']
    lines += [b"x" * 99, b"", b"z"]
    data = b"\n".join(lines * 5)
    expected = [(i + 1, line) for i, line in enumerate(data.split(b"\n")) if line.strip()]
    monkeypatch.setattr(read, "_READ_BLOCK", block)
    for batch_size, batch_bytes in [
        (1, 1 << 20),
        (3, 1 << 20),
        (1000, 1 << 20),
        (1000, 1),
        (1000, 120),
        (3, 40),
    ]:
        got, chunks = [], list(read._line_chunks(io.BytesIO(data), batch_size, batch_bytes))
        for k, (numbers, chunk) in enumerate(chunks):
            lines = read.chunk_lines(chunk)
            assert len(numbers) <= batch_size
            assert len(chunk) - len(lines[-1]) <= batch_bytes  # at most one line past batch_bytes
            if k < len(chunks) - 1:  # cut for one of the two reasons
                assert len(numbers) == batch_size or len(chunk) + 1 >= batch_bytes
            got += list(zip(numbers, lines, strict=True))
        assert got == expected
        if batch_bytes == 1:
            assert all(len(numbers) == 1 for numbers, _ in chunks)
