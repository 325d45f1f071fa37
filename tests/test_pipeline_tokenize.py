"""Token counts: the trained byte-level BPE, and the cached counter giving the library's exact counts."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from pipeline import tokenize
from pipeline.corpus import CorpusOptions, build_corpus
from pipeline.tokenize import (
    TokenCounter,
    read_tokenizer_json,
    splits_like_python,
    train_byte_level_bpe,
)
from scorers import chunks
from scorers.chunks import (
    LONG_CHUNK,
    SHORT_CHUNK,
    ChunkTable,
    KeyTable,
    binary_bytes,
    split_chunks,
    word_view,
)

ODD = [
    "tab\tand\x0bvt and\u00a0nbsp\u2003em  and\x1c\x1dseps\r\n",
    "form\x0cfeed\x08back\x0e\x1f and\x7f\x85next \x0c\x0b\t x",  # whitespace bytes 9-13, 32 and neighbours
    "日本語のテキスト。 Ünïcödé wörds’s don't can't 'll",
    "   leading\n\n\n  trailing   ",
    "x" * 5000,
    "    def f(x):\n        return x  # comment\n\n\n",
    "".join(chr(i) for i in range(1, 0x2600, 3)) + " \U0001f600x\U0001f600 end",  # bytes of every width
    " \t \n",  # whitespace alone: one chunk that is no word
    "word",
    "a'sb 's 're12 ?!x --  ..y\u00a0z",
]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "corpus"
    build_corpus(out, CorpusOptions(max_bytes_per_domain=150_000))
    return [
        json.loads(line)["text"]
        for d in ("code", "prose", "legal")
        for line in (out / f"{d}.jsonl").read_text().splitlines()
    ]


def test_trained_bpe_is_deterministic_and_counts_exactly(texts):
    first = train_byte_level_bpe(texts, vocab_size=2000).to_str()
    assert first == train_byte_level_bpe(texts, vocab_size=2000).to_str()
    assert splits_like_python(first)
    reference = Tokenizer.from_str(first)
    counter = TokenCounter(first).setup()
    assert counter.cached_
    docs = texts + ODD
    expected = [len(e.ids) for e in reference.encode_batch(docs, add_special_tokens=False)]
    assert counter.count(docs).tolist() == expected
    assert counter.count(docs[::-1]).tolist() == expected[::-1]  # warm cache, same answer
    assert reference.decode(reference.encode(ODD[1]).ids) == ODD[1]  # byte-level: lossless


def test_counts_match_the_library_on_random_hostile_text(texts):
    """Random texts from pieces that meet at every kind of boundary (whitespace runs of every kind,
    contractions, digits, punctuation, multi-byte characters, the special token's literal, long words)
    in batches that share chunks: the library's counts, cold and warm."""
    spec = train_byte_level_bpe(texts, vocab_size=800).to_str()
    reference = Tokenizer.from_str(spec)
    reference.encode_special_tokens = True
    parts = [
        " ",
        "  ",
        "\n",
        "\t",
        " \n ",
        "\r\n",
        "\x0b",
        "a",
        "the",
        "'s",
        "'",
        "'ll",
        "12",
        "3",
        ".",
        "?!",
        "é",
        "日本",
        "\u00a0",
        "\U0001f600",
        "<|endoftext|>",
        "x" * 30,
        "y" * 200,
        "\x00",
        "-",
    ]
    rng = np.random.default_rng(7)
    docs = ["".join(rng.choice(parts, rng.integers(0, 40))) for _ in range(400)]
    expected = [len(e.ids) for e in reference.encode_batch(docs, add_special_tokens=False)]
    counter = TokenCounter(spec).setup()
    assert sum((counter.count(docs[i : i + 50]).tolist() for i in range(0, 400, 50)), []) == expected
    assert counter.count(pa.array(docs[::-1], pa.large_string())).tolist() == expected[::-1]


def test_other_tokenizers_use_the_library(tmp_path):
    spec = (
        '{"version":"1.0","model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1},"unk_token":"[UNK]"},'
        '"pre_tokenizer":{"type":"Whitespace"}}'
    )
    path = tmp_path / "tokenizer.json"
    path.write_text(Tokenizer.from_str(spec).to_str())
    counter = TokenCounter(read_tokenizer_json(path)).setup()
    assert not counter.cached_
    assert counter.count(["a b c", "a"]).tolist() == [3, 1]
    path.write_text("not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        read_tokenizer_json(path)
    with pytest.raises(FileNotFoundError):
        read_tokenizer_json(tmp_path / "absent.json")


def test_special_token_literal_in_text_counts_as_text(texts):
    """Raw text is not a special token: `<|endoftext|>` inside a document counts as its characters,
    as `encode` does with `encode_special_tokens = True`; a plain `encode` gives fewer tokens."""
    spec = train_byte_level_bpe(texts, vocab_size=2000).to_str()
    docs = [texts[0] + " <|endoftext|> " + texts[1], "a<|endoftext|>b<|endoftext|>", texts[2]]
    raw = Tokenizer.from_str(spec)
    raw.encode_special_tokens = True
    expected = [len(e.ids) for e in raw.encode_batch(docs, add_special_tokens=False)]
    plain = [len(e.ids) for e in Tokenizer.from_str(spec).encode_batch(docs, add_special_tokens=False)]
    assert expected[0] > plain[0] and expected[1] > plain[1] and expected[2] == plain[2]
    cached = TokenCounter(spec).setup()
    assert cached.cached_ and cached.count(docs).tolist() == expected
    wordpiece = json.loads(spec)
    wordpiece["normalizer"] = {"type": "NFC"}  # not our pre-tokenizer: counted by the library itself
    uncached = TokenCounter(json.dumps(wordpiece)).setup()
    assert not uncached.cached_
    raw_nfc = Tokenizer.from_str(json.dumps(wordpiece))
    raw_nfc.encode_special_tokens = True
    assert uncached.count(docs).tolist() == [
        len(e.ids) for e in raw_nfc.encode_batch(docs, add_special_tokens=False)
    ]


def test_added_tokens_that_are_not_special_use_the_library(texts):
    """A non-special added token is cut out of raw text before pre-tokenization, across chunks: such
    a tokenizer is counted by the library itself, exactly."""
    tokenizer = train_byte_level_bpe(texts, vocab_size=600)
    tokenizer.add_tokens(["of the"])
    spec = tokenizer.to_str()
    assert not splits_like_python(spec)
    counter = TokenCounter(spec).setup()
    docs = ["one of the two", texts[0]]
    raw = Tokenizer.from_str(spec)
    raw.encode_special_tokens = True
    assert counter.count(docs).tolist() == [
        len(e.ids) for e in raw.encode_batch(docs, add_special_tokens=False)
    ]


def test_byte_chars_are_the_libraries_byte_level_mapping():
    """Latin-1 text of UTF-8 bytes, translated by _BYTE_CHARS, is what ByteLevel makes of the text."""
    from tokenizers import pre_tokenizers

    text = "".join(ODD) + "".join(chr(i) for i in range(0x80, 0x800)) + "\U0001f600\u20ac\x00"
    mapped = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    assert text.encode("utf-8").decode("latin-1").translate(tokenize._BYTE_CHARS) == mapped[0][0]


def test_key_table_probes_past_taken_slots_and_grows(monkeypatch):
    """Every key in one slot: each look-up walks the run of taken slots; the table grows while keys go
    in (4 slots at first), and keys that differ in any word are never each other's."""
    monkeypatch.setattr(KeyTable, "_slots", lambda self, a, b, c: np.zeros(len(a), np.int64))
    table = KeyTable(capacity=2)
    keys = [np.array([i % 3 for i in range(60)], np.uint64), np.arange(60, dtype=np.uint64) // 3]
    keys.append(np.full(60, 1 << 60, np.uint64) | np.arange(60, dtype=np.uint64) % 2)
    for part in (slice(0, 1), slice(1, 25), slice(25, 60)):
        table.add([k[part] for k in keys], np.arange(60)[part] * 10)
    assert len(table) == 60 and len(table._rows) >= 128
    assert table.find(keys).tolist() == list(range(0, 600, 10))
    absent = [keys[0] + np.uint64(3), keys[1], keys[2]]
    assert table.find(absent).tolist() == [-1] * 60


def test_chunk_counts_are_exact_for_every_length_and_shared_prefixes():
    """Chunks of every length up to LONG_CHUNK, sharing long prefixes, with zero bytes: each finds its
    own count; a stored chunk's prefix or extension is not stored."""
    rng = np.random.default_rng(0)
    base = bytes(rng.integers(0, 256, LONG_CHUNK, dtype=np.uint8))
    values = [base[:n] for n in range(1, LONG_CHUNK + 1)]  # each a prefix of the longer ones
    values += [b"a", b"a\x00", b"\x00a", b" the", b"x" * SHORT_CHUNK, b"x" * (SHORT_CHUNK + 1)]
    values += [base[:40] + b"!" + base[41:90]]  # shares 40 bytes with another, then differs
    chunks = pa.array(values, pa.binary())
    index = ChunkTable()
    stored = list(range(0, len(values), 2))
    data, offsets = _chunk_bytes(chunks.take(pa.array(stored)))
    index.add(data, offsets[:-1], np.diff(offsets), np.array(stored) * 7)
    data, offsets = _chunk_bytes(chunks)
    found = index.find(data, offsets[:-1], np.diff(offsets))
    assert found.tolist() == [7 * i if i % 2 == 0 else -1 for i in range(len(values))]
    rest = [i for i in range(len(values)) if i % 2]
    data, offsets = _chunk_bytes(chunks.take(pa.array(rest)))
    index.add(data, offsets[:-1], np.diff(offsets), np.array(rest) * 7)
    data, offsets = _chunk_bytes(chunks)
    assert index.find(data, offsets[:-1], np.diff(offsets)).tolist() == [7 * i for i in range(len(values))]


def _chunk_bytes(chunks: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    data, offsets = binary_bytes(chunks)
    return word_view(data), offsets


def test_counts_stay_exact_when_the_cache_starts_again(texts, monkeypatch):
    """Past CACHE_LIMIT keys the process's chunk ids start again (the table keeps its size) and the
    counts kept by id are dropped; long chunks go to the dict."""
    spec = train_byte_level_bpe(texts, vocab_size=1000).to_str()
    reference = Tokenizer.from_str(spec)
    reference.encode_special_tokens = True
    docs = texts[:60] + ODD
    expected = [len(e.ids) for e in reference.encode_batch(docs, add_special_tokens=False)]
    monkeypatch.setattr(chunks, "CACHE_LIMIT", 500)
    counter = TokenCounter(spec).setup()
    got, generations, long = [], set(), False
    for i in range(0, len(docs), 7):
        got += counter.count(docs[i : i + 7]).tolist()
        generations.add(counter._chunks._generation)
        long = long or bool(chunks.shared_chunk_ids()._long)  # "x" * 5000: over LONG_CHUNK bytes
    assert got == expected and len(generations) > 2  # started again more than once
    assert len(chunks.shared_chunk_ids()._table._table._rows) == 1024  # made for 500 keys, never doubled
    assert long
    assert counter.count(docs[::-1]).tolist() == expected[::-1]


def test_piece_starts_split_every_chunk_as_the_pattern_does():
    """Chunks of random hostile text (every contraction, apostrophes in runs and after whitespace of each
    kind, upper case, digits, multi-byte characters, NUL), all split at once with numpy: the pieces that
    `re.findall(PRETOKENIZE_PATTERN)` gives each chunk alone, in order."""
    pattern = re.compile(tokenize.PRETOKENIZE_PATTERN.encode())
    parts = [*"sStmdrevlLa1Z9!-'", *" \t\n\r\x0b\x0c", "'s", "'re", "'ve", "'ll", "'d", "'m", "'t"]
    parts += [" '", "''", "é", "€", "\U0001f600", "\x00", "  ", " \n"]
    rng = np.random.default_rng(3)
    chunks = []
    for _ in range(3000):
        text = "".join(parts[i] for i in rng.integers(0, len(parts), rng.integers(1, 40))).encode()
        chunks += split_chunks(pa.array([text.decode()], pa.string()))[0].to_pylist()
    chunks += [b"x'r", b"e", b"'", b"s", b"'l", b"l"]  # texts of their own: no contraction across them
    data, offsets = binary_bytes(pa.array(chunks, pa.binary()))
    bounds = [*tokenize.piece_starts(data, offsets).tolist(), int(offsets[-1])]
    pieces = [data[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert pieces == [piece for chunk in chunks for piece in pattern.findall(chunk)]
    assert {b"'s", b"'re", b"'ll", b" '", b"\x0c", b"'d"} <= set(pieces)  # the cases were met


def test_counter_pickles_as_its_compressed_json_and_counts_the_same(texts):
    """A used counter pickles small (its JSON compressed, no caches: what Beam pickles per bundle set-up)
    and counts the same where it is unpickled."""
    spec = train_byte_level_bpe(texts, vocab_size=1000).to_str()
    counter = TokenCounter(spec).setup()
    expected = counter.count(texts[:50] + ODD).tolist()
    copy = pickle.loads(pickle.dumps(counter))
    assert len(pickle.dumps(counter)) < len(spec) / 2
    assert copy.tokenizer_json == spec and copy.tokenizer_ is None and not len(copy._chunks)
    assert copy.count(texts[:50] + ODD).tolist() == expected
