"""Token counts with a real tokenizer (`tokenizers`): a local tokenizer.json, or a byte-level BPE
trained once on a sample of the input and saved as `<output>/tokenizer.json`.

The saved file is a standard `tokenizers` JSON: `Tokenizer.from_file(...)` (or transformers'
`PreTrainedTokenizerFast(tokenizer_file=...)`) loads it, e.g. in the proxy trainer.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scorers.chunks import CACHE_LIMIT, ChunkValues, binary_bytes, encode_chunks, string_array

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_OPTIONS_FILE = "tokenizer_options.json"  # how a trained tokenizer.json was made
DEFAULT_VOCAB_SIZE = 8192
END_OF_TEXT = "<|endoftext|>"
MIN_VOCAB_SIZE = 257  # the 256 byte tokens and END_OF_TEXT

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


# Byte classes of PRETOKENIZE_PATTERN: 0 whitespace (_WS), 1 ASCII letter, 2 ASCII digit, 3 any other.
_CLASSES = np.full(256, 3, np.uint8)
_CLASSES[[9, 10, 11, 12, 13, 32]] = 0  # _WS
_CLASSES[[*range(ord("A"), ord("Z") + 1), *range(ord("a"), ord("z") + 1)]] = 1
_CLASSES[ord("0") : ord("9") + 1] = 2
_CONTRACTION_ONE = np.frombuffer(b"stmd", np.uint8)  # after an apostrophe: 's 't 'm 'd
_CONTRACTION_TWO = np.array([(ord(a) << 8) | ord(b) for a, b in ("re", "ve", "ll")], np.uint16)


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


class TokenCounter:
    """Counts tokens of a batch of texts (no special tokens added). Built from the JSON text so it pickles
    small and loads once per worker in `setup()`. Raw text is not a special token: a document containing the
    literal `<|endoftext|>` is counted as those characters, i.e. `len(tokenizer.encode(text,
    add_special_tokens=False).ids)` with `tokenizer.encode_special_tokens = True` (a plain `encode` would turn
    the literal into the one end-of-text id, which the corpus does not contain). With our own BPE (see
    `splits_like_python`) a text is cut into chunks (a whitespace run and the word after it), and each
    distinct chunk is counted once and cached (`scorers.chunks.ChunkValues`, exact): the same counts as
    `encode`, about 25x faster than `encode_batch_fast` (the library's per-text pre-tokenization and merges
    dominated the job's time). A new chunk is split into pieces of PRETOKENIZE_PATTERN with numpy
    (`piece_starts`), and a new piece is counted by the byte-level mapping (`_BYTE_CHARS`) and the library's
    model (`encode` per piece, without its per-text overhead). Any other tokenizer.json is counted with
    `encode_batch_fast`."""

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self.tokenizer_: Any = None
        self.cached_ = False
        self._chunks = ChunkValues()  # chunk id -> count
        self._piece_cache: dict[bytes, int] = {}

    def __getstate__(self) -> dict[str, bytes]:
        """Pickled as its tokenizer JSON alone, zlib-compressed: Beam pickles a DoFn again (bz2, level 9)
        each time a worker sets up a bundle, and the JSON as it is with the empty caches took about 0.1
        CPU-s each time. The caches and the loaded tokenizer start empty where it is unpickled."""
        return {"tokenizer_json_zlib": zlib.compress(self.tokenizer_json.encode("utf-8"))}

    def __setstate__(self, state: dict[str, bytes]) -> None:
        self.__init__(zlib.decompress(state["tokenizer_json_zlib"]).decode("utf-8"))  # type: ignore[misc]

    def setup(self) -> TokenCounter:
        if self.tokenizer_ is None:
            from tokenizers import Tokenizer

            self.tokenizer_ = Tokenizer.from_str(self.tokenizer_json)
            self.tokenizer_.encode_special_tokens = True  # raw text is never a special token
            self.cached_ = splits_like_python(self.tokenizer_json)
        return self

    def _chunk_counts(self, chunks: pa.Array) -> np.ndarray:
        """Token counts of new chunks (binary) from their pieces; only pieces never seen are counted. The
        pieces are cut on the UTF-8 bytes with numpy (`piece_starts`), so no chunk or piece becomes a
        Python object (the regex and the pieces as bytes took about 40% of a new chunk's cost), and are
        deduplicated by Arrow; the distinct ones are looked up in a dict (a `scorers.chunks.ChunkTable`
        cost as much on the scale bench's input and 1.3x as much for a batch of new words)."""
        data, offsets = binary_bytes(chunks)
        starts = piece_starts(data, offsets)
        bounds = pa.py_buffer(np.append(starts, offsets[-1]))
        pieces = pa.Array.from_buffers(pa.large_binary(), len(starts), [None, bounds, pa.py_buffer(data)])
        encoded = pieces.dictionary_encode()
        get, tokenize = self._piece_cache.get, self.tokenizer_.model.tokenize
        distinct = encoded.dictionary.to_pylist()
        counts = np.array([get(p, -1) for p in distinct], np.int64)
        for i in np.flatnonzero(counts < 0).tolist():  # new pieces: byte-level characters, then the model
            mapped = distinct[i].decode("latin-1").translate(_BYTE_CHARS)
            counts[i] = self._piece_cache[distinct[i]] = len(tokenize(mapped))
        cumulative = np.concatenate([[0], np.cumsum(counts[encoded.indices.to_numpy()])])
        return np.diff(cumulative[np.searchsorted(starts, offsets)])

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
        if len(self._piece_cache) > CACHE_LIMIT:
            self._piece_cache.clear()
        return self._count_array(string_array(texts))

    def _count_array(self, texts: pa.Array) -> np.ndarray:
        """Chunks are found with numpy on the UTF-8 bytes and deduplicated by Arrow's hash kernel; the
        distinct ones' counts are looked up by id (`scorers.chunks.ChunkValues`) with numpy, so Python
        touches only the chunks it has not seen (`_chunk_counts`). `texts` as `scorers.chunks.string_array`
        gives them."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.int64)
        chunks = encode_chunks(texts)
        if not len(chunks.indices):
            return np.zeros(len(texts), dtype=np.int64)
        # Binary chunks: a new one reaches Python as bytes, cheaper to make and look up than str.
        per_chunk = self._chunks.values(chunks, self._chunk_counts)[chunks.indices]
        cumulative = np.concatenate([[0], np.cumsum(per_chunk)])
        return cumulative[chunks.first[1:]] - cumulative[chunks.first[:-1]]


def piece_starts(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Where PRETOKENIZE_PATTERN's pieces start in chunks (UTF-8 bytes one after another, chunk i at
    `offsets[i]`, PAD bytes after the last), each chunk split alone, as `re.findall` splits it, with
    numpy. A chunk is a whitespace run and the word after it. The word's pieces are its runs of letters,
    digits and other bytes (every byte of a multi-byte character is "other", as the character is), a
    piece that starts with an apostrophe starting with a contraction ('s, 't, 're, 've, 'm, 'll, 'd) when it
    is one. The whitespace run is one piece without its last byte; that byte is a piece of its own, or,
    when it is a space, the start of the word's first piece (which then starts no contraction). A chunk
    of whitespace alone is one piece."""
    n = int(offsets[-1])
    classes = _CLASSES[data[:n]]
    space = classes == 0
    first = np.zeros(n + 3, bool)  # chunk starts, and the end (for the look-ahead of contractions)
    first[offsets] = True
    starts = first[:n].copy()
    starts[1:] |= (classes[1:] != classes[:-1]) & ~space[1:]  # runs of one class in a word
    words = np.flatnonzero(~space[1:] & space[:-1] & ~first[1:n]) + 1  # a word after whitespace
    starts[words - 1] = True
    starts[words[data[words - 1] == 32]] = False  # a space starts the word's first piece
    quotes = np.flatnonzero(starts & (data[:n] == ord("'")))
    one, two = data[quotes + 1], (data[quotes + 1].astype(np.uint16) << 8) | data[quotes + 2]
    short = np.isin(one, _CONTRACTION_ONE) & ~first[quotes + 1]
    long = np.isin(two, _CONTRACTION_TWO) & ~first[quotes + 1] & ~first[quotes + 2]
    starts[quotes[short | long] + 1] = False  # the letters after it were a run of their own
    ends = np.concatenate([quotes[short] + 2, quotes[long] + 3])
    starts[ends[ends < n]] = True  # the piece after a contraction
    return np.flatnonzero(starts)
