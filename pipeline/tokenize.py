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
from typing import Any

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


def _byte_chars() -> list[str]:
    """The character that byte-level BPE (GPT-2's `bytes_to_unicode`, as `tokenizers`' ByteLevel)
    gives each byte: printable Latin-1 bytes stay, the others move to 256 and up, in order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(moved)) for b in range(256)]


_BYTE_CHARS = _byte_chars()  # a `str.translate` table from Latin-1 text (one character per byte)


def _is_whitespace(data: np.ndarray) -> np.ndarray:
    """Which UTF-8 bytes are whitespace in _WS (9 to 13, and 32): comparisons, ~20x faster than a table."""
    return (data == 32) | ((data >= 9) & (data <= 13))


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
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


_ODD = [np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]
SHORT_CHUNK = 23  # bytes: a chunk up to this long is one key of `ChunkCounts` (most chunks)
LONG_CHUNK = 135  # bytes: longer chunks (rare) are cached in a dict
PAD = 24  # zero bytes after the bytes that `ChunkCounts` reads
_LOW = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)  # masks of a word's low n bytes
_N = np.arange(SHORT_CHUNK + 2)  # by min(length, 24), the first key's masks and tag (24: the chunk goes on)
_FIRST_MASKS = [_LOW[np.clip(_N - 8 * k, 0, 8 if k < 2 else 7)] for k in range(3)]
_FIRST_TAG = _N.astype(np.uint64) << np.uint64(56)
_NEXT = np.arange(18)  # by min(bytes left, 17), the next key's masks (17: the chunk goes on)
_NEXT_MASKS = [_LOW[np.clip(_NEXT - 8 * k, 0, 8)] for k in range(2)]
_NEXT_TAG = np.uint64(0xFF << 56)


def _word_view(data: np.ndarray) -> np.ndarray:
    """The 8 bytes (a little-endian uint64) at every byte of `data` but its last 7: a view."""
    return np.ndarray((len(data) - 7,), "<u8", data, 0, (1,))


def _binary_bytes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A binary or string array's bytes followed by PAD zero bytes (a copy), and its offsets from 0."""
    offset_type = np.int64 if values.type in (pa.large_binary(), pa.large_string()) else np.int32
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, offset_type)[values.offset : values.offset + len(values) + 1]
    lo, size = int(offsets[0]), int(offsets[-1] - offsets[0])
    data = np.zeros(size + PAD, np.uint8)
    data[:size] = np.frombuffer(data_buf, np.uint8, size, lo) if size else []
    return data, (offsets - lo).astype(np.int64)


class KeyTable:
    """Distinct keys of three uint64 words (a last word of 0 marks an empty slot) -> int64 values, in
    numpy: open addressing with linear probing, probed for a whole batch of keys at once, so a look-up's
    cost does not grow with the table. A slot is one 32-byte row (the key, its value): one memory
    access per key."""

    def __init__(self, bits: int = 16) -> None:
        self._empty(bits)

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
            free = self._rows[slot, 2] == 0
            _, first = np.unique(slot[free], return_index=True)  # one key per free slot in this round
            won = np.flatnonzero(free)[first]
            self._rows[slot[won]] = rows[todo[won]]
            on = np.ones(len(todo), bool)
            on[won] = False
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


class ChunkCounts:
    """Exact token counts of chunks (UTF-8 bytes, up to LONG_CHUNK) in one `KeyTable`, without hashes
    to verify: a chunk's first 23 bytes and its length are one key (exact for chunks up to SHORT_CHUNK
    bytes, most of them); a longer chunk goes on 16 bytes a key, each key holding the node id that the
    previous key maps to (a trie), and its last key maps to the count. The chunks are given as starts
    and lengths in bytes seen through `_word_view`, with PAD bytes after each chunk's end."""

    def __init__(self) -> None:
        self._table = KeyTable()
        self._nodes = 0  # node ids given to keys of chunks that go on

    def __len__(self) -> int:
        return len(self._table)

    def find(self, words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The count of each chunk (-1 where not stored)."""
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

    def add(self, words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> None:
        """Store chunks (distinct, none stored, up to LONG_CHUNK bytes) with their counts."""
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


class TokenCounter:
    """Counts tokens of a batch of texts (no special tokens added). Built from the JSON text so it
    pickles small and loads once per worker in `setup()`.

    Raw text is not a special token: a document containing the literal `<|endoftext|>` is counted
    as those characters, i.e. `len(tokenizer.encode(text, add_special_tokens=False).ids)` with
    `tokenizer.encode_special_tokens = True` (a plain `encode` would turn the literal into the one
    end-of-text id, which the corpus does not contain).

    With our own BPE (see `splits_like_python`) a text is cut into chunks (a whitespace run and
    the word after it), and each distinct chunk is counted once and cached (`ChunkCounts`, exact,
    with a dict for the rare chunk over LONG_CHUNK bytes): the same counts as `encode`, about 25x
    faster than `encode_batch_fast` (the library's per-text pre-tokenization and merges dominated the
    job's time). A new chunk is split into pieces by PRETOKENIZE_PATTERN and a new piece counted by
    the byte-level mapping (`_BYTE_CHARS`) and the library's model (`encode` per piece, without its
    per-text overhead). Any other tokenizer.json is counted with `encode_batch_fast`."""

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self.tokenizer_: Any = None
        self.cached_ = False
        self._index = ChunkCounts()
        self._cache: dict[bytes, int] = {}  # chunk (UTF-8) -> count, for chunks over LONG_CHUNK bytes
        self._piece_cache: dict[bytes, int] = {}

    def setup(self) -> TokenCounter:
        if self.tokenizer_ is None:
            from tokenizers import Tokenizer

            self.tokenizer_ = Tokenizer.from_str(self.tokenizer_json)
            self.tokenizer_.encode_special_tokens = True  # raw text is never a special token
            self.cached_ = splits_like_python(self.tokenizer_json)
            self._pieces = re.compile(PRETOKENIZE_PATTERN.encode()).findall
        return self

    def _chunk_counts(self, chunks: pa.Array) -> np.ndarray:
        """Token counts of new chunks (binary) from their pieces; only pieces never seen are counted. The
        UTF-8 bytes are split as bytes (the pattern's classes are ASCII, and every byte of a multi-byte
        character falls in its class of other characters, as the character does), so pieces are cut
        where they are in the text and no chunk becomes a str; the pieces are deduplicated by Arrow."""
        data, offsets = _binary_bytes(chunks)
        text, starts, ends = _joined(data, offsets)
        pieces = self._pieces(text.tobytes())
        alone = np.flatnonzero(ends < 0)  # ends with whitespace: split alone, after the others
        firsts = np.zeros(len(alone) + 1, np.int64)
        for k, i in enumerate(alone.tolist()):
            firsts[k] = len(pieces)
            pieces += self._pieces(data[offsets[i] : offsets[i + 1]].tobytes())
        firsts[-1] = len(pieces)
        array = pa.array(pieces, pa.large_binary())
        piece_starts = np.frombuffer(array.buffers()[1], np.int64)[: len(pieces)]
        first, last = np.searchsorted(piece_starts, starts), np.searchsorted(piece_starts, ends)
        first[alone], last[alone] = firsts[:-1], firsts[1:]
        encoded = array.dictionary_encode()
        get, tokenize = self._piece_cache.get, self.tokenizer_.model.tokenize
        distinct = encoded.dictionary.to_pylist()
        counts = np.array([get(p, -1) for p in distinct], np.int64)
        for i in np.flatnonzero(counts < 0).tolist():  # new pieces: byte-level characters, then the model
            mapped = distinct[i].decode("latin-1").translate(_BYTE_CHARS)
            counts[i] = self._piece_cache[distinct[i]] = len(tokenize(mapped))
        cumulative = np.concatenate([[0], np.cumsum(counts[encoded.indices.to_numpy()])])
        return cumulative[last] - cumulative[first]

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

    def _distinct_counts(self, chunks: pa.Array) -> np.ndarray:
        """Counts of distinct chunks: looked up in `ChunkCounts`, then those over LONG_CHUNK bytes in a
        dict (looked at only when it holds any); new ones are counted (`_chunk_counts`) and stored."""
        data, offsets = _binary_bytes(chunks)
        lengths = np.diff(offsets)
        counts = self._index.find(_word_view(data), offsets[:-1], lengths)
        long = np.flatnonzero(lengths > LONG_CHUNK)
        if self._cache and len(long):
            get = self._cache.get
            counts[long] = [get(k, -1) for k in chunks.take(pa.array(long)).to_pylist()]
        new = np.flatnonzero(counts < 0)
        if len(new):
            fresh = chunks.take(pa.array(new))
            counts[new] = self._chunk_counts(fresh)
            short, long = new[lengths[new] <= LONG_CHUNK], new[lengths[new] > LONG_CHUNK]
            self._index.add(_word_view(data), offsets[short], lengths[short], counts[short])
            if len(long):
                unstored = chunks.take(pa.array(long)).to_pylist()
                self._cache.update(zip(unstored, counts[long].tolist(), strict=True))
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
        bounds = _chunk_starts(np.frombuffer(data_buf, np.uint8, hi - lo, lo), offsets[:-1] - lo) + lo
        chunk_offsets = pa.py_buffer(np.append(bounds, hi).astype(offset_type))
        # Binary chunks: a new one reaches Python as bytes, cheaper to make and look up than str.
        chunks = pa.Array.from_buffers(dtype, len(bounds), [None, chunk_offsets, data_buf])
        encoded = chunks.dictionary_encode()
        per_chunk = self._distinct_counts(encoded.dictionary)[encoded.indices.to_numpy()]
        cumulative = np.concatenate([[0], np.cumsum(per_chunk)])
        first_chunk = np.searchsorted(bounds, offsets)
        return cumulative[first_chunk[1:]] - cumulative[first_chunk[:-1]]


def _chunk_starts(data: np.ndarray, text_starts: np.ndarray) -> np.ndarray:
    """Where each chunk of `data` (UTF-8 bytes) starts: at each text's start, and where whitespace
    follows a byte that is not whitespace."""
    space = _is_whitespace(data)
    starts = np.empty(len(data), dtype=bool)
    starts[0] = True
    np.greater(space[1:], space[:-1], out=starts[1:])
    starts[text_starts[text_starts < len(data)]] = True
    return np.flatnonzero(starts)


def _joined(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bytes of chunks (`_binary_bytes`) put one after another so that PRETOKENIZE_PATTERN splits each
    as it does alone (no piece crosses a word -> whitespace boundary): a chunk that starts with a word (a
    text's first) goes after a newline, a piece of its own; one that ends with whitespace (its last piece
    could run on) is left out, its end -1. Returns the bytes and each chunk's start and end in them."""
    lengths = np.diff(offsets)
    space = _is_whitespace(data)
    inner = ~space[offsets[1:] - 1]
    newline = inner & ~space[offsets[:-1]]
    sizes = np.where(inner, lengths + newline, 0)
    ends = np.cumsum(sizes)
    text = np.full(int(ends[-1]) if len(ends) else 0, ord("\n"), np.uint8)
    is_chunk = np.ones(len(text), bool)
    is_chunk[(ends - lengths - 1)[newline]] = False
    text[is_chunk] = data[: offsets[-1]][np.repeat(inner, lengths)]
    return text, np.where(inner, ends - lengths, -1), np.where(inner, ends, -1)
