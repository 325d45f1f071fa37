"""Exact tables from short byte strings (chunks of UTF-8 text) to int64 values, in numpy: a batch of
chunks is looked up in one pass, so Python touches only the chunks a table has not seen. A batch's
distinct chunks get ids in the process's one `ChunkIds` table (`encode_chunks`), and token counts
(`pipeline.tokenize.TokenCounter`) and the fastText scorer keep what they compute per chunk by id
(`ChunkValues`)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

_ODD = [np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]
SHORT_CHUNK = 23  # bytes: a chunk up to this long is one key of `ChunkTable` (most chunks)
LONG_CHUNK = 135  # bytes: longer chunks (rare) are cached in a dict
PAD = 24  # zero bytes after the bytes that `ChunkTable` reads
_LOW = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)  # masks of a word's low n bytes
_N = np.arange(SHORT_CHUNK + 2)  # by min(length, 24), the first key's masks and tag (24: the chunk goes on)
_FIRST_MASKS = [_LOW[np.clip(_N - 8 * k, 0, 8 if k < 2 else 7)] for k in range(3)]
_FIRST_TAG = _N.astype(np.uint64) << np.uint64(56)
_NEXT = np.arange(18)  # by min(bytes left, 17), the next key's masks (17: the chunk goes on)
_NEXT_MASKS = [_LOW[np.clip(_NEXT - 8 * k, 0, 8)] for k in range(2)]
_NEXT_TAG = np.uint64(0xFF << 56)


CACHE_LIMIT = 2_000_000  # distinct chunks a cache holds before it starts again (token counts, fastText)


def _offsets(values: pa.Array) -> tuple[np.ndarray, pa.Buffer]:
    """A string or binary array's offsets (its own slice, len(values) + 1) and its data buffer."""
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64 if large else np.int32)
    return offsets[values.offset : values.offset + len(values) + 1], data_buf


def string_array(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Texts (a list of str, or an Arrow string array, chunked or not) as one string or large_string
    array without nulls (a null is the empty text)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), pa.string())
    if texts.null_count:
        texts = texts.fill_null("")
    return texts if pa.types.is_large_string(texts.type) else texts.cast(pa.string())


def word_view(data: np.ndarray) -> np.ndarray:
    """The 8 bytes (a little-endian uint64) at every byte of `data` but its last 7: a view."""
    return np.ndarray((len(data) - 7,), "<u8", data, 0, (1,))


def binary_bytes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A binary or string array's bytes followed by PAD zero bytes (a copy), and its offsets from 0."""
    offsets, data_buf = _offsets(values)
    lo, size = int(offsets[0]), int(offsets[-1] - offsets[0])
    data = np.zeros(size + PAD, np.uint8)
    data[:size] = np.frombuffer(data_buf, np.uint8, size, lo) if size else []
    return data, (offsets - lo).astype(np.int64)


class KeyTable:
    """Distinct keys of three uint64 words (a last word of 0 marks an empty slot) -> int64 values, in
    numpy: open addressing with linear probing, probed for a whole batch of keys at once, so a look-up's
    cost does not grow with the table. A slot is one 32-byte row (the key, its value): one memory
    access per key. Made with room for `capacity` keys (at most half full; the rows are zero pages
    until touched), it doubles only past that: a doubling stores every key again (a table grown
    from the smallest size to 700,000 random keys cost 2.2x the CPU to fill of one made for them)."""

    def __init__(self, capacity: int = 1 << 15) -> None:
        self._empty(max(2, (2 * capacity - 1).bit_length()))

    def _empty(self, bits: int) -> None:
        self._rows = np.zeros((1 << bits, 4), np.uint64)
        self._shift = np.uint64(64 - bits)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _slots(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (((a * _ODD[0] ^ b) * _ODD[1] ^ c) * _ODD[2] >> self._shift).astype(np.int64)

    def find(self, keys: Sequence[np.ndarray]) -> np.ndarray:
        """The value of each key (-1 where not stored); `keys`: the three words of each."""
        a, b, c = keys
        slot = self._slots(a, b, c)
        rows = np.take(self._rows, slot, axis=0)  # the first probe of all keys: most end here
        hit = (rows[:, 0] == a) & (rows[:, 1] == b) & (rows[:, 2] == c)
        out = np.where(hit, rows[:, 3].view(np.int64), -1)
        todo, mask = np.flatnonzero(~hit & (rows[:, 2] != 0)), len(self._rows) - 1
        a, b, c, slot = a[todo], b[todo], c[todo], slot[todo]
        while len(todo):  # a slot taken by another key: try the next one
            slot = (slot + 1) & mask
            rows = np.take(self._rows, slot, axis=0)
            hit = (rows[:, 0] == a) & (rows[:, 1] == b) & (rows[:, 2] == c)
            out[todo[hit]] = rows[hit, 3]
            on = ~hit & (rows[:, 2] != 0)
            todo, a, b, c, slot = todo[on], a[on], b[on], c[on], slot[on]
        return out

    def add(self, keys: Sequence[np.ndarray], values: np.ndarray) -> None:
        """Store keys (distinct, none stored) with their values; the table doubles past half full."""
        a, b, c = keys
        if 2 * (self._n + len(a)) > len(self._rows):
            old = self._rows[self._rows[:, 2] != 0]
            self._empty(int(2 * (self._n + len(a))).bit_length())
            self.add(old[:, :3].T, old[:, 3])
        rows = np.stack([a, b, c, np.asarray(values).astype(np.uint64)], axis=1)
        todo, slot, mask = np.arange(len(a)), self._slots(a, b, c), len(self._rows) - 1
        while len(todo):
            free = np.flatnonzero(self._rows[slot, 2] == 0)
            claim, who = slot[free], todo[free]
            self._rows[claim, 3] = who  # each free slot keeps one claim: its key goes in (no sort)
            won = self._rows[claim, 3].view(np.int64) == who
            self._rows[claim[won]] = rows[who[won]]
            on = np.ones(len(todo), bool)
            on[free[won]] = False
            todo, slot = todo[on], (slot[on] + 1) & mask
        self._n += len(a)


def _first_keys(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each chunk's first key: its first 8 bytes, the next 8, the next 7 with min(length, 24) in the
    top byte (zero-padded)."""
    n = np.minimum(lengths, SHORT_CHUNK + 1)
    a = words[starts] & np.take(_FIRST_MASKS[0], n)
    b = words[starts + 8] & np.take(_FIRST_MASKS[1], n)
    return a, b, words[starts + 16] & np.take(_FIRST_MASKS[2], n) | np.take(_FIRST_TAG, n)


def _next_keys(
    words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, offset: int, nodes: np.ndarray
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Keys of the 16 bytes at `offset` of chunks that go on past it: the bytes, then the previous
    key's node with the bytes left (1 to 16; 17: the chunk goes on); and which chunks end here."""
    left = np.minimum(lengths - offset, 17)
    at = starts + offset
    a = words[at] & np.take(_NEXT_MASKS[0], left)
    b = words[at + 8] & np.take(_NEXT_MASKS[1], left)
    return (a, b, _NEXT_TAG | nodes.astype(np.uint64) << np.uint64(8) | left.astype(np.uint64)), left <= 16


class ChunkTable:
    """Exact int64 values (>= 0; e.g. token counts) of chunks (UTF-8 bytes, up to LONG_CHUNK) in one
    `KeyTable`, without hashes to verify: a chunk's first 23 bytes and its length are one key (exact for
    chunks up to SHORT_CHUNK bytes, most of them); a longer chunk goes on 16 bytes a key, each key holding the
    node id that the previous key maps to (a trie), and its last key maps to the count. The chunks are given
    as starts and lengths in bytes seen through `word_view`, with PAD bytes after each chunk's end."""

    def __init__(self, capacity: int = 1 << 15) -> None:
        self._table = KeyTable(capacity)
        self._nodes = 0  # node ids given to keys of chunks that go on

    def __len__(self) -> int:
        return len(self._table)

    def find(self, words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The value of each chunk (-1 where not stored)."""
        found = self._table.find(_first_keys(words, starts, lengths))
        on = lengths > SHORT_CHUNK
        counts = np.where(on, -1, found)
        more, offset = np.flatnonzero(on & (found >= 0)), SHORT_CHUNK
        nodes = found[more]
        while len(more):
            keys, last = _next_keys(words, starts[more], lengths[more], offset, nodes)
            found = self._table.find(keys)
            counts[more[last]] = found[last]
            on = ~last & (found >= 0)
            more, nodes, offset = more[on], found[on], offset + 16
        return counts

    @staticmethod
    def keys_for(lengths: np.ndarray) -> int:
        """At most how many keys storing chunks of these lengths (in bytes, up to LONG_CHUNK) adds."""
        more = np.maximum(lengths - SHORT_CHUNK, 0)
        return len(lengths) + int(np.sum((more + 15) // 16))

    def add(self, words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> None:
        """Store chunks (distinct, none stored, up to LONG_CHUNK bytes) with their values."""
        keys = _first_keys(words, starts, lengths)
        last = lengths <= SHORT_CHUNK
        self._table.add([k[last] for k in keys], counts[last])
        more, offset = np.flatnonzero(~last), SHORT_CHUNK
        nodes = self._node_ids([k[more] for k in keys])
        while len(more):
            keys, last = _next_keys(words, starts[more], lengths[more], offset, nodes)
            self._table.add([k[last] for k in keys], counts[more[last]])
            more, nodes, offset = more[~last], self._node_ids([k[~last] for k in keys]), offset + 16

    def _node_ids(self, keys: list[np.ndarray]) -> np.ndarray:
        """The node id of each key of chunks that go on (several chunks may share one), new ones stored."""
        ids = np.full(len(keys[0]), -1, np.int64)
        if not len(ids):
            return ids
        order = np.lexsort(keys)
        sorted_keys = [k[order] for k in keys]
        first = np.ones(len(ids), bool)  # the first of each distinct key in sorted order
        first[1:] = np.logical_or.reduce([k[1:] != k[:-1] for k in sorted_keys])
        distinct = [k[first] for k in sorted_keys]
        found = self._table.find(distinct)
        new = np.flatnonzero(found < 0)
        found[new] = self._nodes + np.arange(len(new))
        self._nodes += len(new)
        self._table.add([k[new] for k in distinct], found[new])
        ids[order] = found[np.cumsum(first) - 1]
        return ids


def is_whitespace(data: np.ndarray, nul: bool = False) -> np.ndarray:
    """Which UTF-8 bytes are ASCII whitespace (9 to 13, and 32; with `nul`, also 0 as fastText reads it):
    comparisons, ~20x faster than a table."""
    space = (data == 32) | ((data >= 9) & (data <= 13))
    return space | (data == 0) if nul else space


def split_chunks(texts: pa.Array, nul: bool = False) -> tuple[pa.Array, np.ndarray]:
    """A string array's chunks (a whitespace run, see `is_whitespace`, and the word after it) as a binary
    array on the texts' bytes (no copy), and where each text's chunks begin (len(texts) + 1 indices).

    A chunk starts at each text's start and where whitespace follows a byte that is not whitespace."""
    offsets, data_buf = _offsets(texts)
    dtype = pa.large_binary() if offsets.dtype == np.int64 else pa.binary()
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi == lo:
        return pa.array([], dtype), np.zeros(len(texts) + 1, np.int64)
    space = is_whitespace(np.frombuffer(data_buf, np.uint8, hi - lo, lo), nul)
    starts = np.empty(len(space), dtype=bool)
    starts[0] = True
    np.greater(space[1:], space[:-1], out=starts[1:])
    text_starts = offsets[:-1] - lo
    starts[text_starts[text_starts < len(space)]] = True
    bounds = np.flatnonzero(starts) + lo
    chunk_offsets = pa.py_buffer(np.append(bounds, hi).astype(offsets.dtype))
    chunks = pa.Array.from_buffers(dtype, len(bounds), [None, chunk_offsets, data_buf])
    return chunks, np.searchsorted(bounds, offsets)


@dataclass(frozen=True)
class EncodedChunks:
    """A batch's chunks deduplicated: the distinct chunks (binary), each chunk's index into them, where
    each text's chunks begin (len(texts) + 1 indices), and the distinct chunks' `ChunkIds` ids with the
    generation they belong to."""

    distinct: pa.Array
    indices: np.ndarray
    first: np.ndarray
    ids: np.ndarray
    generation: int


_LAST = threading.local()  # this thread's last batch: (key, nul, whether it has a NUL byte, chunks, texts)


def _batch_key(texts: pa.Array) -> tuple[int, int, int, int, str]:
    """The memory a string array reads (its buffers' addresses, offset, length) and its type."""
    _, offsets, data = texts.buffers()
    return offsets.address, data.address if data is not None else 0, texts.offset, len(texts), str(texts.type)


def encode_chunks(texts: pa.Array, nul: bool = False) -> EncodedChunks:
    """`split_chunks`, deduplicated by Arrow's `dictionary_encode`, with the process's `ChunkIds` ids of
    the distinct chunks. The last batch's result is kept (per thread, with the texts, so their memory
    stays theirs): token counts and fastText scores of one batch split, encode and look it up once.
    fastText also splits at NUL, so a batch with a NUL byte is encoded again. A batch is known by the
    memory it reads: Arrow's buffers do not change once written."""
    key, last = _batch_key(texts), getattr(_LAST, "batch", None)
    if last is not None and last[0] == key and (last[1] == nul or not last[2]):
        return last[3]
    chunks, first = split_chunks(texts, nul)
    encoded = chunks.dictionary_encode()
    with _SHARED_LOCK:
        table = shared_chunk_ids()
        ids = table.ids(encoded.dictionary)
        generation = table.generation
    result = EncodedChunks(encoded.dictionary, encoded.indices.to_numpy(), first, ids, generation)
    has_nul = len(chunks) > 0 and not np.all(_text_bytes(texts))
    _LAST.batch = (key, nul, has_nul, result, texts)
    return result


def _text_bytes(texts: pa.Array) -> np.ndarray:
    """The bytes of a string array's texts (a view)."""
    offsets, data_buf = _offsets(texts)
    lo, hi = int(offsets[0]), int(offsets[-1])
    return np.frombuffer(data_buf, np.uint8, hi - lo, lo)


_GENERATIONS = itertools.count()  # every start of every `ChunkIds` gets its own number


class ChunkIds:
    """Dense ids (0, 1, ...) of distinct chunks, exact: a `ChunkTable` from a chunk to its id, and a dict
    for the rare chunk over LONG_CHUNK bytes (looked at only when it holds any). It holds at most `limit`
    keys: when a batch's new chunks would take it past that, it starts again, empty, at the size it was
    made with (it never doubles), and its `generation` changes (earlier ids then mean nothing)."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._start()

    def _start(self) -> None:
        self._table = ChunkTable(self.limit)
        self._long: dict[bytes, int] = {}
        self._next = 0
        self.generation = next(_GENERATIONS)

    def __len__(self) -> int:
        return len(self._table) + len(self._long)

    def _find(self, chunks: pa.Array, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        lengths = np.diff(offsets)
        ids = np.full(len(lengths), -1, np.int64)
        some = np.flatnonzero(lengths > 0)  # an empty key would be an empty slot's: never stored
        ids[some] = self._table.find(word_view(data), offsets[some], lengths[some])
        long = np.flatnonzero(lengths > LONG_CHUNK)
        if self._long and len(long):
            get = self._long.get
            ids[long] = [get(k, -1) for k in chunks.take(pa.array(long)).cast(pa.binary()).to_pylist()]
        return ids

    def find(self, chunks: pa.Array) -> np.ndarray:
        """The id of each of `chunks` (a binary or string array without nulls; -1 for one not held)."""
        return self._find(chunks, *binary_bytes(chunks))

    def ids(self, chunks: pa.Array) -> np.ndarray:
        """The id of each of `chunks` (distinct, non-empty, binary); new chunks get the next ids, in
        their order."""
        data, offsets = binary_bytes(chunks)
        lengths = np.diff(offsets)
        ids = self._find(chunks, data, offsets)
        new = np.flatnonzero(ids < 0)
        if not len(new):
            return ids
        short, long = new[lengths[new] <= LONG_CHUNK], new[lengths[new] > LONG_CHUNK]
        if len(self) and len(self) + ChunkTable.keys_for(lengths[short]) + len(long) > self.limit:
            self._start()
            return self.ids(chunks)
        ids[new] = self._next + np.arange(len(new))
        self._next += len(new)
        self._table.add(word_view(data), offsets[short], lengths[short], ids[short])
        if len(long):
            self._long.update(zip(chunks.take(pa.array(long)).to_pylist(), ids[long].tolist(), strict=True))
        return ids


_SHARED: list[ChunkIds] = []  # the process's ids, shared by every `ChunkValues` (token counts, fastText)
_SHARED_LOCK = threading.Lock()


def shared_chunk_ids() -> ChunkIds:
    """The process's `ChunkIds` (made anew when CACHE_LIMIT changed): the one hash table that the
    consumers of a batch's chunks look them up in, once per batch (`encode_chunks`). One table for
    token counts and fastText halved the look-ups and stores of each batch's distinct chunks, and the
    memory (a table made for CACHE_LIMIT keys is 128 MB)."""
    if not _SHARED or _SHARED[0].limit != CACHE_LIMIT:
        _SHARED[:] = [ChunkIds(CACHE_LIMIT)]
    return _SHARED[0]


class ChunkValues:
    """One consumer's exact values (int64 >= 0) of chunks by their `ChunkIds` id, e.g. token counts:
    `values` computes the values of chunks it has not seen and keeps them until the ids start again."""

    def __init__(self) -> None:
        self._values = np.zeros(0, np.int64)
        self._generation = -1

    def __len__(self) -> int:
        return int(np.count_nonzero(self._values >= 0))

    def values(self, chunks: EncodedChunks, compute: Callable[[pa.Array], np.ndarray]) -> np.ndarray:
        """The value of each of `chunks.distinct`; `compute(new chunks)` gives the new ones'."""
        ids = chunks.ids
        if chunks.generation != self._generation:
            self._values, self._generation = np.zeros(0, np.int64), chunks.generation
        if len(ids) and ids.max() >= len(self._values):
            grown = np.full(max(2 * len(self._values), int(ids.max()) + 1), -1, np.int64)
            grown[: len(self._values)] = self._values
            self._values = grown
        values = self._values[ids]
        new = np.flatnonzero(values < 0)
        if len(new):
            values[new] = compute(chunks.distinct.take(pa.array(new)))
            self._values[ids[new]] = values[new]
        return values
