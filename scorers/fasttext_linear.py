"""fastText's supervised prediction as a linear map: fast batch scoring with the binding's results.

A supervised fastText model's output for a line is a function of W_out . mean(E[rows]), where rows are
the line's word ids, then its word n-gram buckets. That is mean((E W_out^T)[rows]): the input matrix is
projected on the labels once (P = E W_out^T in float64, in row blocks; for a 2-label softmax only the
difference of the two columns is needed), and a document then gathers one float per row and column
instead of `dim`. Words, their hashes and n-gram buckets are found as fastText's `Dictionary` finds them
(src/dictionary.cc), once per distinct chunk of text (`scorers.chunks.ChunkValues`), so Python touches only
chunks that it has not seen. Models with subword n-grams (maxn > 0), hierarchical softmax, quantized
models and a label prefix other than `__label__` are not linear here: `linear_support` says why, and
`scorers.fasttext.FastTextScorer` scores them with the binding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorers.chunks import ChunkIds, ChunkValues, binary_bytes, encode_chunks, string_array

LABEL_PREFIX = "__label__"
# A `__label__` inside a text becomes this word, never a label; no character after "label" is "_",
# so no replacement can join its neighbours into a new `__label__` (as "__label___x" -> "__label__x" would).
LABEL_ESCAPE = "__label:"
EOS = b"</s>"  # fastText's end-of-line word: the line's '\n' gives one; a literal one ends the line too
FASTTEXT_SPACE = " \n\r\t\v\f\0"  # the bytes that separate fastText's words
NGRAM_PRIME = np.uint64(116049371)
SIGMOID_TABLE_SIZE, MAX_SIGMOID = 512, 8  # fastText's sigmoid table (ova, ns losses)
PROBABILITY_FLOOR = 1e-5  # fastText returns exp(log(p + 1e-5))
LINEAR_LOSSES = ("softmax", "ova", "ns")
BLOCK_ROWS = 1 << 14  # rows of the input matrix projected at a time (float64 copies stay small)
ID_BITS = 29  # a chunk's value: bit 0 a word, bit 1 the word is EOS, bits 2-33 its hash, 34-62 its id + 1


def linear_support(model: Any) -> str | None:
    """Why `model` (a loaded fastText model) cannot be scored as a linear map; None when it can."""
    args = model.f.getArgs()
    if model.f.isQuant():
        return "quantized model"
    if args.model.name != "supervised":
        return f"not a supervised model ({args.model.name})"
    if args.loss.name not in LINEAR_LOSSES:
        return f"loss {args.loss.name}"
    if args.maxn > 0:
        return f"subword n-grams (maxn {args.maxn})"
    if args.label != LABEL_PREFIX:
        return f"label prefix {args.label!r}"
    rows = np.asarray(model.f.getInputMatrix()).shape[0]
    if (args.wordNgrams > 1 and args.bucket <= 0) or rows - args.bucket >= (1 << ID_BITS) - 1:
        return "dictionary or buckets out of range"
    return None


def fnv1a(words: pa.Array) -> np.ndarray:
    """fastText's word hash of each of `words` (a string or binary array), as uint32: 32-bit FNV-1a over
    the bytes, each sign-extended (`uint32_t(int8_t(c))`). Vectorised over the words, longest first, so
    that the words still going on at byte j are the first ones."""
    data, offsets = binary_bytes(words)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts, lengths = offsets[:-1][order], lengths[order]
    signed = data.view(np.int8).astype(np.int32).view(np.uint32)
    hashes = np.full(len(order), 2166136261, np.uint32)
    going_on = np.searchsorted(-lengths, -np.arange(int(lengths.max(initial=0))), side="left")
    for j, m in enumerate(going_on.tolist()):
        hashes[:m] = (hashes[:m] ^ signed[starts[:m] + j]) * np.uint32(16777619)
    out = np.empty_like(hashes)
    out[order] = hashes
    return out


def fasttext_sigmoid(x: np.ndarray) -> np.ndarray:
    """fastText's sigmoid: a table of SIGMOID_TABLE_SIZE + 1 float32 values over [-8, 8], 0 and 1 outside."""
    grid = np.arange(SIGMOID_TABLE_SIZE + 1, dtype=np.float32) * np.float32(2 * MAX_SIGMOID)
    grid = grid / np.float32(SIGMOID_TABLE_SIZE) - np.float32(MAX_SIGMOID)
    table = (1.0 / (1.0 + np.exp(-grid).astype(np.float64))).astype(np.float32).astype(np.float64)
    inside = np.clip(x, -MAX_SIGMOID, MAX_SIGMOID)
    index = ((inside + MAX_SIGMOID) * SIGMOID_TABLE_SIZE / MAX_SIGMOID / 2).astype(np.int64)
    return np.where(x < -MAX_SIGMOID, 0.0, np.where(x > MAX_SIGMOID, 1.0, table[index]))


def project(model: Any, label: str) -> tuple[np.ndarray, str]:
    """The input matrix projected on the output (float64, one row per column: rows of the input matrix,
    then a 0.0 that unknown words' id -1 gathers) and how columns become the label's probability:
    "difference" (2-label softmax: the label's logit minus the other's), "softmax" (a column per label,
    the label's first), or "sigmoid" (ova, ns)."""
    inputs, outputs = np.asarray(model.f.getInputMatrix()), np.asarray(model.f.getOutputMatrix())
    index = list(model.get_labels()).index(label)
    order = [index] + [i for i in range(len(outputs)) if i != index]
    weights = outputs[order].astype(np.float64)
    kind = model.f.getArgs().loss.name
    if kind == "softmax" and len(outputs) == 2:
        weights, kind = weights[:1] - weights[1:], "difference"
    elif kind != "softmax":
        weights, kind = weights[:1], "sigmoid"
    out = np.zeros((len(weights), len(inputs) + 1), np.float64)
    for start in range(0, len(inputs), BLOCK_ROWS):
        block = inputs[start : start + BLOCK_ROWS].astype(np.float64)
        out[:, start : start + len(block)] = weights @ block.T
    return out, kind


def _segment_sums(values: np.ndarray, begins: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sums of `values` over [begins[i], ends[i]) (clipped to the values), from one cumulative sum."""
    cumulative = np.concatenate([[0], np.cumsum(values)])
    return cumulative[np.minimum(ends, len(values))] - cumulative[np.minimum(begins, len(values))]


class WordIds:
    """fastText's word ids (`get_word_id`: -1 for a word not in the dictionary) of a whole string array
    at once: the model's words, in order, given ids 0, 1, ... by a `scorers.chunks.ChunkIds` at set-up
    (64 to 128 bytes a word: 6 to 13 MB for a model of 100,000 words). The binding's one call per new
    word cost about 1 µs, 10% of a worker's CPU on the 0.2 GB input of `bench/scale_bench.py`."""

    def __init__(self, model: Any) -> None:
        words = model.get_words(on_unicode_error="surrogateescape")
        self._ids = ChunkIds(len(words))
        self._ids.ids(pa.array([w.encode("utf-8", "surrogateescape") for w in words], pa.binary()))

    def __call__(self, words: pa.Array) -> np.ndarray:
        """The id of each of `words` (a string or binary array without nulls)."""
        return self._ids.find(words)


class LinearFastText:
    """Probability of one label of a supervised fastText model for a batch of texts, as the binding's
    `predict` gives it (normalised as `scorers.fasttext.normalize`, clamped to [0, 1], 0.0 for a text with
    no input rows), from the model projected on its labels (`project`). Build it only for a model that
    `linear_support` accepts."""

    def __init__(self, model: Any, label: str) -> None:
        args = model.f.getArgs()
        self.model = model
        self.projection_, self.kind_ = project(model, label)
        self.word_ngrams = int(args.wordNgrams)
        self.bucket = int(args.bucket)
        self.nwords = self.projection_.shape[1] - 1 - self.bucket
        self._cache = ChunkValues()
        self._word_ids = WordIds(model)
        self._eos = int(self._pack_words(pa.array([EOS.decode()]))[0])

    def _pack_words(self, words: pa.Array) -> np.ndarray:
        """Values of words (a string array; see ID_BITS): a word (if not empty), whether it is EOS, its hash
        and its id + 1 (0: unknown)."""
        ids = self._word_ids(words)
        flags = (pc.binary_length(words).to_numpy(zero_copy_only=False) > 0).astype(np.int64)
        flags |= pc.equal(words, EOS.decode()).to_numpy(zero_copy_only=False).astype(np.int64) << 1
        return np.where(flags > 0, flags | fnv1a(words).astype(np.int64) << 2 | (ids + 1) << 34, 0)

    def _pack_chunks(self, chunks: pa.Array) -> np.ndarray:
        """Values of new chunks (whitespace, then a word or nothing): their word's, escaped as `normalize`
        escapes it (a replacement inside the word); 0 for whitespace alone."""
        words = pc.utf8_ltrim(chunks.cast(pa.string()), characters=FASTTEXT_SPACE)
        return self._pack_words(pc.replace_substring(words, LABEL_PREFIX, LABEL_ESCAPE))

    def _words(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """The words of each text as fastText reads its line (the words, then EOS; words after a literal
        EOS are not read), as chunk values, and where each text's words begin (len(texts) + 1)."""
        chunks = encode_chunks(texts, nul=True)
        packed = np.zeros(0, np.int64)
        if len(chunks.indices):
            packed = self._cache.values(chunks, self._pack_chunks)[chunks.indices]
        is_word = (packed & 1).astype(bool)
        per_text = np.diff(np.concatenate([[0], np.cumsum(is_word)])[chunks.first]) + 1
        starts = np.concatenate([[0], np.cumsum(per_text)])
        words = np.full(int(starts[-1]), self._eos, np.int64)
        inner = np.ones(len(words), bool)
        inner[starts[1:] - 1] = False  # each text's EOS
        words[inner] = packed[is_word]
        if np.count_nonzero(packed & 2):  # a literal EOS: the line ends there
            is_eos = (words & 2).astype(np.int64)
            before = np.cumsum(is_eos) - is_eos
            keep = before == np.repeat(before[starts[:-1]], per_text)
            kept = np.cumsum(keep)
            words, starts = words[keep], np.concatenate([[0], kept[starts[1:] - 1]])
        return words, starts

    def _sums(self, words: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each text's sum of its rows' projected values (a row per projection column) and its number of
        rows: known words' ids (an unknown word's -1 gathers the 0.0 that ends each column), then word
        n-gram buckets from the hashes (sign-extended to 64 bits). Values are added at the position of
        the n-gram's first word, and each text's positions summed on their own (`np.add.reduceat`; every
        text has one, its EOS), so a text's score does not depend on the others in its batch."""
        ids = (words >> 34) - 1
        hashes = ((words << 30) >> 32).view(np.uint64)  # bits 2-33, sign-extended
        begins, ends = starts[:-1], starts[1:]
        counts = _segment_sums(ids >= 0, begins, ends)
        totals = [column[ids] for column in self.projection_]
        ngram = hashes
        for k in range(1, self.word_ngrams):
            ngram = ngram[:-1] * NGRAM_PRIME + hashes[k:]
            rows = (ngram % np.uint64(self.bucket) + np.uint64(self.nwords)).view(np.int64)
            last = np.concatenate([ends - j for j in range(1, k + 1)])  # k-grams that run into the next text
            last = last[(last >= np.tile(begins, k)) & (last < len(rows))]
            for total, column in zip(totals, self.projection_, strict=True):
                values = column[rows]
                values[last] = 0.0
                total[:-k] += values
            counts += np.maximum(ends - begins - k, 0)
        return np.stack([np.add.reduceat(total, begins) for total in totals]), counts

    def scores(self, texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The label's probability for each text (a list of str, or an Arrow string array)."""
        texts = string_array(texts)
        n = len(texts)
        if n == 0:
            return np.zeros(0, np.float64)
        sums, counts = self._sums(*self._words(texts))
        means = sums / np.maximum(counts, 1)
        if self.kind_ == "difference":
            p = 0.5 + 0.5 * np.tanh(0.5 * means[0])
        elif self.kind_ == "sigmoid":
            p = fasttext_sigmoid(means[0])
        else:
            e = np.exp(means - means.max(axis=0))
            p = e[0] / e.sum(axis=0)
        scores = np.where(counts > 0, np.clip(p + PROBABILITY_FLOOR, 0.0, 1.0), 0.0)
        # float32 precision, as the binding returns them: fuller float64 mantissas added 6% to the Parquet
        return scores.astype(np.float32).astype(np.float64)
