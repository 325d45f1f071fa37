"""Token counts with a real tokenizer (`tokenizers`): a local tokenizer.json, or a byte-level BPE
trained once on a sample of the input and saved as `<output>/tokenizer.json`.

The saved file is a standard `tokenizers` JSON: `Tokenizer.from_file(...)` (or transformers'
`PreTrainedTokenizerFast(tokenizer_file=...)`) loads it, e.g. in the proxy trainer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_OPTIONS_FILE = "tokenizer_options.json"  # how a trained tokenizer.json was made
DEFAULT_VOCAB_SIZE = 8192
END_OF_TEXT = "<|endoftext|>"
MIN_VOCAB_SIZE = 257  # the 256 byte tokens and END_OF_TEXT
CACHE_LIMIT = 2_000_000

# GPT-2's pre-tokenization with ASCII character classes only, so that Python's `re` and the
# library's Oniguruma split text identically: token counting can then cache counts per piece.
_WS = r" \t\n\r\f\v"
PRETOKENIZE_PATTERN = (
    rf"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
)
# Counts are cached per chunk: a whitespace run with the word after it. No piece of PRETOKENIZE_PATTERN
# crosses a word -> whitespace boundary, so a chunk is a union of whole pieces and the pattern splits it
# alone as it does in context. Chunks are found on UTF-8 bytes: one starts where whitespace follows a
# non-whitespace byte.


_WS_CHARS = frozenset(" \t\n\r\f\v")


def _byte_level():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def _is_whitespace(data: np.ndarray) -> np.ndarray:
    """Which UTF-8 bytes are whitespace in _WS (9 to 13, and 32): comparisons, ~20x faster than a table."""
    return (data == 32) | ((data >= 9) & (data <= 13))


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            _byte_level(),
        ]
    )


def splits_like_python(tokenizer_json: str) -> bool:
    """True when the tokenizer pre-tokenizes with PRETOKENIZE_PATTERN (ours) and has no added tokens
    other than special ones (raw text never holds those), so pieces can be cached."""
    spec = json.loads(tokenizer_json)
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") or []
    return (
        spec.get("normalizer") is None
        and all(token.get("special") for token in spec.get("added_tokens") or [])
        and pre.get("type") == "Sequence"
        and len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern") == {"Regex": PRETOKENIZE_PATTERN}
        and steps[0].get("behavior") == "Isolated"
        and steps[1].get("type") == "ByteLevel"
        and steps[1].get("use_regex") is False
        and not steps[1].get("add_prefix_space")
    )


def train_byte_level_bpe(texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2):
    """A GPT-2-style byte-level BPE trained on `texts` (every byte is in the vocabulary; with no texts,
    the bytes alone)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (the 256 bytes and {END_OF_TEXT})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def read_tokenizer_json(path: str | os.PathLike[str]) -> str:
    """The tokenizer.json text (any Beam filesystem), validated by loading it."""
    from tokenizers import Tokenizer

    path = str(path)
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as fh:
            text = fh.read().decode("utf-8")
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such tokenizer.json")
        text = Path(path).read_text(encoding="utf-8")
    try:
        Tokenizer.from_str(text)
    except Exception as exc:
        raise ValueError(f"{path}: not a `tokenizers` tokenizer.json ({exc})") from None
    return text


_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)  # masks of a word's low n bytes
_ODD = [
    np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)
]
_POWERS = np.zeros(0, np.uint64)


class ChunkWords(NamedTuple):
    """Binary values as little-endian 8-byte words: each value's bytes, zero-padded to whole words."""

    words: np.ndarray  # uint64, the values' words one after another
    first: np.ndarray  # int64, each value's first word
    lengths: np.ndarray  # int64, each value's bytes


def chunk_words(chunks: pa.Array) -> ChunkWords:
    """The words of a binary array's values: a gather per word, not a pass per byte."""
    if not len(chunks):
        return ChunkWords(np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    _, offsets_buf, data_buf = chunks.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(chunks.type) else np.int32
    offsets = np.frombuffer(offsets_buf, offset_type)[chunks.offset : chunks.offset + len(chunks) + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.zeros(hi - lo + 8, np.uint8)  # 8 zero bytes after the last value
    data[: hi - lo] = np.frombuffer(data_buf, np.uint8, hi - lo, lo) if hi > lo else []
    starts, lengths = offsets[:-1].astype(np.int64) - lo, np.diff(offsets).astype(np.int64)
    n_words = np.maximum((lengths + 7) // 8, 1)
    first = np.cumsum(n_words) - n_words
    at = np.repeat(starts - 8 * first, n_words) + 8 * np.arange(int(n_words.sum()))  # each word's byte
    words = np.ndarray((len(data) - 7,), "<u8", data, 0, (1,))[at]  # the 8 bytes at every byte: a view
    last = first + n_words - 1
    words[last] &= _LOW_BYTES[lengths - 8 * (n_words - 1)]  # a value's bytes alone in its last word
    return ChunkWords(words, first, lengths)


def _word_powers(n: int) -> np.ndarray:
    """ODD^k mod 2^64 for k < n (at least): the weights of a chunk's words."""
    global _POWERS
    powers = _POWERS  # this call's own reference: another thread may replace the module's
    if len(powers) < n:
        powers = _POWERS = np.cumprod(np.full(max(n, 2 * len(powers)), _ODD[0], np.uint64)) * _ODD[1]
    return powers


def chunk_hashes(chunks: ChunkWords) -> np.ndarray:
    """A 64-bit hash of each value: its words weighted by position (a polynomial mod 2^64) and its
    length. `ChunkCounts` compares the words of every match, so colliding values only cost a slower
    look-up."""
    words, first, lengths = chunks
    if not len(first):
        return np.zeros(0, np.uint64)
    k = np.arange(len(words)) - np.repeat(first, np.diff(first, append=len(words)))
    hashed = np.add.reduceat(words * _word_powers(int(k.max()) + 1)[k], first)
    hashed ^= lengths.astype(np.uint64) * _ODD[2]
    return (hashed ^ (hashed >> np.uint64(29))) * _ODD[3]


def _grown(buffer: np.ndarray, used: int, values: np.ndarray) -> np.ndarray:
    """`buffer` holding `values` after its first `used` items, its room doubled when short."""
    if used + len(values) > len(buffer):
        buffer = np.concatenate([buffer[:used], np.zeros(max(used, len(values)), buffer.dtype)])
    buffer[used : used + len(values)] = values
    return buffer


class ChunkCounts:
    """Token counts of chunks (UTF-8 bytes) kept in numpy, not as Python objects: the chunks' hashes
    sorted (`chunk_hashes`), and each chunk's words (`chunk_words`) and count. `find` looks a batch's
    distinct chunks up with `np.searchsorted` and compares the words of each match with the stored
    chunk's, so a count is never another chunk's. A chunk whose hash is taken is not stored here (the
    caller keeps it)."""

    def __init__(self) -> None:
        self.hashes = np.zeros(0, np.uint64)  # sorted
        self.entries = np.zeros(0, np.int64)  # the stored chunk of each hash
        # Per stored chunk (then spare room, so that storing costs O(1) per chunk): its count, first
        # word in _words and length; and the stored chunks' words, then spare room.
        self._counts, self._first, self._lengths = (np.zeros(0, np.int64) for _ in range(3))
        self._words = np.zeros(0, np.uint64)
        self._n = self._used = 0

    def __len__(self) -> int:
        return self._n

    def find(self, chunks: ChunkWords, hashes: np.ndarray) -> np.ndarray:
        """The count of each chunk (-1 where not stored)."""
        if not self._n or not len(hashes):
            return np.full(len(hashes), -1, np.int64)
        order = np.argsort(hashes)  # sorted needles: searchsorted walks the table once
        at = np.minimum(np.searchsorted(self.hashes, hashes[order]), len(self.hashes) - 1)
        entry = np.zeros(len(hashes), np.int64)
        entry[order] = self.entries[at]
        hit = np.zeros(len(hashes), bool)
        hit[order] = self.hashes[at] == hashes[order]
        words, first, lengths = chunks
        shift = np.repeat(self._first[entry] - first, np.diff(first, append=len(words)))
        stored = self._words[np.minimum(np.arange(len(words)) + shift, self._used - 1)]
        same = hit & (self._lengths[entry] == lengths) & np.logical_and.reduceat(words == stored, first)
        return np.where(same, self._counts[entry], -1)

    def add(self, chunks: ChunkWords, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Store new chunks (distinct, none stored) with their counts; returns which were stored (not
        those whose hash another chunk has)."""
        order = np.argsort(hashes, kind="stable")  # (np.unique on hashes: much slower than a sort)
        ordered = hashes[order]
        at = np.searchsorted(self.hashes, ordered)
        taken = np.zeros(len(ordered), bool)
        if len(self):
            taken = self.hashes[np.minimum(at, len(self.hashes) - 1)] == ordered
        keep = np.concatenate([[True], ordered[1:] != ordered[:-1]]) & ~taken
        new = np.zeros(len(hashes), bool)
        new[order[keep]] = True
        words, first, lengths = chunks
        n_words = np.diff(first, append=len(words))
        starts = self._used + np.cumsum(n_words[new]) - n_words[new]
        self._words = _grown(self._words, self._used, words[np.repeat(new, n_words)])
        self._counts = _grown(self._counts, self._n, counts[new])
        self._first = _grown(self._first, self._n, starts)
        self._lengths = _grown(self._lengths, self._n, lengths[new])
        stored_as = self._n + np.cumsum(new) - 1  # the new chunks are stored in their order
        self._n += int(new.sum())
        self._used += int(n_words[new].sum())
        self.hashes = np.insert(self.hashes, at[keep], ordered[keep])  # O(size): memmove, no sort
        self.entries = np.insert(self.entries, at[keep], stored_as[order[keep]])
        return new


class TokenCounter:
    """Counts tokens of a batch of texts (no special tokens added). Built from the JSON text so it
    pickles small and loads once per worker in `setup()`.

    Raw text is not a special token: a document containing the literal `<|endoftext|>` is counted
    as those characters, i.e. `len(tokenizer.encode(text, add_special_tokens=False).ids)` with
    `tokenizer.encode_special_tokens = True` (a plain `encode` would turn the literal into the one
    end-of-text id, which the corpus does not contain).

    With our own BPE (see `splits_like_python`) a text is cut into chunks (a whitespace run and
    the word after it), and each distinct chunk is counted once and cached (`ChunkCounts`, with a
    dict for the rare chunk whose hash another took): the same counts as `encode`, about 25x faster
    than `encode_batch_fast` (the library's per-text pre-tokenization and merges dominated the job's
    time). A new chunk is split into pieces by PRETOKENIZE_PATTERN and a new piece counted by the
    library's byte-level mapping and model (`encode` per piece, without its per-text overhead). Any
    other tokenizer.json is counted with `encode_batch_fast`."""

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self.tokenizer_: Any = None
        self.cached_ = False
        self._index = ChunkCounts()
        self._cache: dict[bytes, int] = {}  # chunk (UTF-8) -> count, for chunks whose hash is taken
        self._piece_cache: dict[str, int] = {}

    def setup(self) -> TokenCounter:
        if self.tokenizer_ is None:
            from tokenizers import Tokenizer

            self.tokenizer_ = Tokenizer.from_str(self.tokenizer_json)
            self.tokenizer_.encode_special_tokens = True  # raw text is never a special token
            self.cached_ = splits_like_python(self.tokenizer_json)
            self._pieces = re.compile(PRETOKENIZE_PATTERN).findall
            self._byte_level = _byte_level()
        return self

    def _chunk_counts(self, chunks: list[str]) -> np.ndarray:
        """Counts of new chunks from their pieces; only pieces never seen are encoded."""
        pieces, firsts = self._split(chunks)
        cache = self._piece_cache
        missing = list({p for p in pieces if p not in cache})
        if missing:
            cache.update(zip(missing, self._piece_counts(missing), strict=True))
        counts = np.fromiter(map(cache.__getitem__, pieces), np.int64, len(pieces))
        order = np.argsort(firsts)  # chunks in the order of their pieces
        out = np.empty(len(chunks), np.int64)
        out[order] = np.add.reduceat(counts, firsts[order]) if len(chunks) else []
        return out

    def _split(self, chunks: list[str]) -> tuple[list[str], np.ndarray]:
        """The pieces of `chunks` in order, and the index of each chunk's first piece.

        A chunk that starts with whitespace and ends with a word splits alone as it does after another
        such chunk (no piece crosses a word -> whitespace boundary), so those are split in one pass over
        their concatenation; the others (a text's first word, its trailing whitespace) one by one."""
        joinable = [c[0] in _WS_CHARS and c[-1] not in _WS_CHARS for c in chunks]
        inner = [i for i, ok in enumerate(joinable) if ok]
        outer = [i for i, ok in enumerate(joinable) if not ok]
        joined = "".join(chunks[i] for i in inner)
        pieces = self._pieces(joined)
        ends = np.cumsum(np.fromiter(map(len, pieces), np.int64, len(pieces)))
        starts = np.concatenate([[0], np.cumsum([len(chunks[i]) for i in inner], dtype=np.int64)[:-1]])
        firsts = np.empty(len(chunks), np.int64)
        firsts[inner] = np.searchsorted(ends, starts, side="right")
        for i in outer:
            firsts[i] = len(pieces)
            pieces += self._pieces(chunks[i])
        return pieces, firsts

    def _piece_counts(self, pieces: list[str]) -> list[int]:
        """Token counts of pre-tokenized pieces: the library's byte-level mapping of all of them at once
        (one character per UTF-8 byte), then its model on each piece, as `encode` does per piece."""
        mapped = self._byte_level.pre_tokenize_str("".join(pieces))[0][0]
        ends = np.cumsum([len(p.encode("utf-8")) for p in pieces]).tolist()
        tokenize = self.tokenizer_.model.tokenize
        return [len(tokenize(mapped[a:b])) for a, b in zip([0, *ends[:-1]], ends, strict=True)]

    def _encode_counts(self, texts: list[str]) -> list[int]:
        return [len(e) for e in self.tokenizer_.encode_batch_fast(texts, add_special_tokens=False)]

    def count(self, texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Token count of each text (a list of str, or an Arrow string array)."""
        if self.tokenizer_ is None:
            self.setup()
        if not self.cached_:
            if not isinstance(texts, list):
                texts = texts.to_pylist() if hasattr(texts, "to_pylist") else list(texts)
            return np.array(self._encode_counts(texts), dtype=np.int64)
        if len(self._index) + len(self._cache) > CACHE_LIMIT or len(self._piece_cache) > CACHE_LIMIT:
            self._index = ChunkCounts()
            self._cache.clear()
            self._piece_cache.clear()
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if not isinstance(texts, pa.Array):
            texts = pa.array(list(texts), pa.string())
        return self._count_array(texts)

    def _other_counts(self, chunks: pa.Array, hashes: np.ndarray) -> np.ndarray:
        """Counts of distinct chunks not in the index: those whose hash another chunk took (in a dict,
        looked at only when it holds any), and new ones, counted (`_chunk_counts`) and stored. New
        chunks reach Python once, as str (Arrow's cast: cut at ASCII whitespace, each is valid UTF-8)."""
        counts = np.full(len(chunks), -1, np.int64)
        if self._cache:
            get = self._cache.get
            counts = np.fromiter((get(k, -1) for k in chunks.to_pylist()), np.int64, len(chunks))
        missing = np.flatnonzero(counts < 0)
        if len(missing):
            new = chunks if len(missing) == len(chunks) else chunks.take(pa.array(missing))
            text = pa.large_string() if pa.types.is_large_binary(new.type) else pa.string()
            counts[missing] = self._chunk_counts(new.cast(text).to_pylist())
            stored = self._index.add(chunk_words(new), hashes[missing], counts[missing])
            if not stored.all():
                unstored = new.filter(pa.array(~stored)).to_pylist()
                self._cache.update(zip(unstored, counts[missing[~stored]].tolist(), strict=True))
        return counts

    def _count_array(self, texts: pa.Array) -> np.ndarray:
        """Chunks are found with numpy on the UTF-8 bytes and deduplicated by Arrow's hash kernel; the
        distinct ones are looked up in `ChunkCounts` with numpy, so Python touches only the chunks it has
        not seen."""
        if texts.null_count:
            texts = texts.fill_null("")
        if pa.types.is_large_string(texts.type):
            offset_type, dtype = np.int64, pa.large_binary()
        else:
            texts = texts.cast(pa.string())
            offset_type, dtype = np.int32, pa.binary()
        if len(texts) == 0:
            return np.zeros(0, dtype=np.int64)
        _, offsets_buf, data_buf = texts.buffers()
        offsets = np.frombuffer(offsets_buf, offset_type)[texts.offset : texts.offset + len(texts) + 1]
        lo, hi = int(offsets[0]), int(offsets[-1])
        if hi == lo:
            return np.zeros(len(texts), dtype=np.int64)
        space = _is_whitespace(np.frombuffer(data_buf, np.uint8, hi - lo, lo))
        starts = np.empty(hi - lo, dtype=bool)
        starts[0] = True
        np.greater(space[1:], space[:-1], out=starts[1:])
        doc_starts = offsets[:-1] - lo
        starts[doc_starts[doc_starts < hi - lo]] = True
        bounds = np.flatnonzero(starts) + lo
        chunk_offsets = np.append(bounds, hi).astype(offset_type)
        # Binary chunks: a new one reaches Python as bytes, cheaper to make and look up than str.
        chunks = pa.Array.from_buffers(dtype, len(bounds), [None, pa.py_buffer(chunk_offsets), data_buf])
        encoded = chunks.dictionary_encode()
        distinct = encoded.dictionary
        hashes = chunk_hashes(words := chunk_words(distinct))
        counts = self._index.find(words, hashes)
        rest = np.flatnonzero(counts < 0)
        if len(rest):
            counts[rest] = self._other_counts(distinct.take(pa.array(rest)), hashes[rest])
        per_chunk = counts[encoded.indices.to_numpy()]
        cumulative = np.concatenate([[0], np.cumsum(per_chunk)])
        first_chunk = np.searchsorted(bounds, offsets)
        return cumulative[first_chunk[1:]] - cumulative[first_chunk[:-1]]
