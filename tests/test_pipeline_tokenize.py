"""Token counts: the trained byte-level BPE, and the cached counter giving the library's exact counts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from pipeline import tokenize
from pipeline.corpus import CorpusOptions, build_corpus
from pipeline.tokenize import (
    ChunkCounts,
    TokenCounter,
    chunk_hashes,
    chunk_words,
    read_tokenizer_json,
    splits_like_python,
    train_byte_level_bpe,
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


def test_chunk_counts_store_and_find_exactly_even_when_hashes_collide():
    values = [b" the", b" cat", b"\n  x", b" a" * 40, b" a" * 39 + b" b", "\u00e9t\u00e9".encode(), b"x" * 8]
    chunks = pa.array(values)
    words = chunk_words(chunks)
    assert words.lengths.tolist() == [len(v) for v in values]
    assert [
        b"".join(int(w).to_bytes(8, "little") for w in words.words[a:b])[: len(v)]
        for a, b, v in zip(words.first, [*words.first[1:], len(words.words)], values, strict=True)
    ] == values
    hashes = chunk_hashes(words)
    assert len(set(hashes.tolist())) == len(chunks)
    assert chunk_hashes(chunk_words(chunks.slice(2, 2))).tolist() == hashes[2:4].tolist()  # own bytes alone
    index = ChunkCounts()
    assert index.find(words, hashes).tolist() == [-1] * 7
    assert index.add(chunk_words(chunks.slice(0, 4)), hashes[:4], np.array([1, 2, 3, 4])).all()
    assert index.find(words, hashes).tolist() == [1, 2, 3, 4, -1, -1, -1]
    others = chunk_words(chunks.slice(4, 3))
    same = np.zeros(3, np.uint64) + hashes[3]  # other chunks with a taken hash: never its count
    assert index.find(others, same).tolist() == [-1, -1, -1]
    assert index.add(others, same, np.array([5, 6, 7])).tolist() == [False, False, False]
    assert index.add(others, hashes[4:], np.array([5, 6, 7])).all()
    assert index.find(words, hashes).tolist() == [1, 2, 3, 4, 5, 6, 7] and len(index) == 7


def test_counts_stay_exact_when_every_chunk_hash_collides(texts, monkeypatch):
    """With a hash that collides all the time, chunks fall back to the dict and counts stay exact."""
    spec = train_byte_level_bpe(texts, vocab_size=1000).to_str()
    reference = Tokenizer.from_str(spec)
    reference.encode_special_tokens = True
    docs = texts[:60] + ODD
    expected = [len(e.ids) for e in reference.encode_batch(docs, add_special_tokens=False)]
    monkeypatch.setattr(tokenize, "chunk_hashes", lambda words: np.full(len(words.first), 7, np.uint64))
    counter = TokenCounter(spec).setup()
    assert counter.count(docs).tolist() == expected
    assert counter.count(docs[::-1]).tolist() == expected[::-1]
    assert len(counter._index) == 1 and len(counter._cache) > 100
