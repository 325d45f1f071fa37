"""Reading corpora into Arrow batches of documents, and the reasons a record is dead-lettered.

JSONL (plain, .gz, .zst, ... by suffix) and Parquet files are read through Beam's FileSystems, so
local paths and gs:// / s3:// / hdfs:// globs work alike. A file yields batches of up to a few
thousand documents and tens of MB of records (`BATCH_BYTES`); each bad record becomes one
dead-letter row naming its file, record number and reason. No Beam transforms here: `pipeline.job`
wraps these functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S

DEFAULT_MAX_CHARS = 1_000_000
OVERSIZE_POLICIES = ("dead-letter", "truncate")
PARQUET_SUFFIXES = (".parquet", ".pq")
_READ_BLOCK = 8 << 20
# A batch ends at the record that brings it to this many bytes, so a worker's memory for a batch (about
# ten times its text, in the scorers' arrays) does not grow with the documents' length. Batches of
# documents up to 8 KB on average (web text, most code) keep their `ReadOptions.batch_size` records
# (with a 4 MiB cap the scale bench's 4 GB job ran up to 20% slower; docs/scale.md).
BATCH_BYTES = 32 << 20
# A text needs one character outside these Unicode categories (spaces, controls, format characters
# such as zero-width spaces); the same rule in Arrow's regex syntax for whole batches.
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})
VISIBLE_PATTERN = r"[^\p{Z}\p{Cc}\p{Cf}]"


@dataclass(frozen=True)
class ReadOptions:
    """How records become documents. `oversize` applies to texts longer than `max_chars`. A batch holds
    at most `batch_size` records, and ends at the record that brings it to `batch_bytes` (JSONL lines
    as read; Parquet rows by `batch_rows` and `byte_slices`)."""

    text_field: str = "text"
    id_field: str = "id"
    max_chars: int = DEFAULT_MAX_CHARS
    oversize: str = "dead-letter"
    batch_size: int = 4096
    batch_bytes: int = BATCH_BYTES
    keep_fields: tuple[str, ...] | None = None  # other input fields kept in `metadata` (None: all)

    def __post_init__(self) -> None:
        if self.oversize not in OVERSIZE_POLICIES:
            raise ValueError(f"oversize must be one of {OVERSIZE_POLICIES}; got {self.oversize!r}")
        if self.max_chars < 1 or self.batch_size < 1 or self.batch_bytes < 1:
            raise ValueError("max_chars, batch_size and batch_bytes must be positive")


class BadRecord(ValueError):
    """A record that cannot become a document; its message is the dead-letter reason."""


def stable_id(text: str) -> str:
    """Content hash used when a record has no id: the same text gets the same id on every run."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def expand_inputs(domain_globs: dict[str, list[str]], exclude: str | None = None) -> list[tuple[str, str]]:
    """(domain, file) pairs, files sorted within each domain; a glob matching nothing is an error.

    Files inside the local directory `exclude` (the job's own output), its temporaries or its resume
    state are never inputs, so a recursive glob over a tree that holds the output does not read it."""
    from apache_beam.io.filesystems import FileSystems

    pairs: list[tuple[str, str]] = []
    for domain, globs in domain_globs.items():
        if not domain or not isinstance(domain, str):
            raise ValueError(f"domain names must be non-empty strings; got {domain!r}")
        files: set[str] = set()
        for pattern in globs:
            matched = [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]
            kept = [path for path in matched if not _inside_output(path, exclude)]
            if not kept:
                why = " outside the output directory" if matched else ""
                raise FileNotFoundError(f"{pattern}: no files match this input glob{why} (domain {domain!r})")
            files.update(kept)
        pairs += [(domain, f) for f in sorted(files)]
    return pairs


def _inside_output(path: str, output: str | None) -> bool:
    """True when local `path` is `output`, inside it, or inside one of its temporaries."""
    if output is None or "://" in path or "://" in output:
        return False
    from mixer.files import resume_path, temp_prefix

    out, resolved = Path(output).resolve(), Path(path).resolve()
    chain = [resolved, *resolved.parents]
    owned = (out, resume_path(out))
    return any(p in owned or p.parent == out.parent and p.name.startswith(temp_prefix(out)) for p in chain)


def file_sizes(paths: Iterable[str]) -> dict[str, int]:
    """Size in bytes of each file (any Beam filesystem)."""
    from apache_beam.io.filesystems import FileSystems

    paths = list(paths)
    if not paths:
        return {}
    return {m.path: m.size_in_bytes for result in FileSystems.match(paths) for m in result.metadata_list}


# --- documents batch -------------------------------------------------------------------------

DOCS_SCHEMA = pa.schema(
    [
        pa.field(S.ID, pa.string(), nullable=False),
        pa.field(S.DOMAIN, pa.string(), nullable=False),
        pa.field(S.SOURCE, pa.string()),
        pa.field(S.RECORD, pa.int64(), nullable=False),
        pa.field(S.N_CHARS, pa.int64(), nullable=False),
        pa.field(S.TEXT, pa.string(), nullable=False),
        pa.field(S.METADATA, pa.string()),
    ]
)


def record_metadata(record: dict[str, Any], opts: ReadOptions) -> str | None:
    """The record's fields other than the text and id (only `opts.keep_fields` when given), as a
    JSON object string; None when there are none."""
    skip = (opts.text_field, opts.id_field)
    keep = opts.keep_fields
    fields = {k: v for k, v in record.items() if k not in skip and (keep is None or k in keep)}
    return json.dumps(fields, ensure_ascii=False, sort_keys=True, default=str) if fields else None


def line_metadata(line: bytes, opts: ReadOptions) -> str | None:
    """`record_metadata` of one valid JSONL line (None where Python's json cannot read it)."""
    try:
        record = json.loads(line.decode("utf-8").removeprefix("\ufeff"))
    except (ValueError, RecursionError):
        return None
    return record_metadata(record, opts) if isinstance(record, dict) else None


def docs_batch(
    domain: str,
    source: str,
    ids: list[str] | pa.Array,
    texts: list[str] | pa.Array,
    records: list[int] | None = None,
    metadata: list[str | None] | None = None,
) -> pa.RecordBatch:
    """A batch of valid documents with the columns every later step reads.

    `records` are the 1-based line (JSONL) or row (Parquet) numbers in `source`; with
    (domain, source) they order the output deterministically. Default: 1..n. `metadata` holds
    each record's other fields as JSON (`record_metadata`); default: none."""
    text_arr = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())
    n = len(text_arr)
    return pa.RecordBatch.from_arrays(
        [
            ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string()),
            pa.array([domain] * n, pa.string()),
            pa.array([source] * n, pa.string()),
            pa.array(range(1, n + 1) if records is None else records, pa.int64()),
            pc.utf8_length(text_arr).cast(pa.int64()),
            text_arr,
            pa.array([None] * n if metadata is None else metadata, pa.string()),
        ],
        schema=DOCS_SCHEMA,
    )


def dead_letter_row(
    domain: str | None,
    source: str | None,
    record: int | None,
    stage: str,
    raw: Any,
    error: str,
    doc_id: str | None = None,
) -> dict[str, Any]:
    """One dead-letter row; `raw` is kept readable and truncated to RAW_MAX_CHARS."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    elif raw is not None and not isinstance(raw, str):
        raw = repr(raw)
    return {
        S.DOMAIN: domain,
        S.SOURCE: source,
        S.RECORD: record,
        S.ID: doc_id,
        S.STAGE: stage,
        S.RAW: None if raw is None else raw[: S.RAW_MAX_CHARS],
        S.ERROR: error,
    }


# --- validation of one record ------------------------------------------------------------------


def check_text(text: Any, field: str, opts: ReadOptions) -> str:
    """The document text, or BadRecord naming why it is not one."""
    if text is None:
        raise BadRecord(f"field {field!r} is missing or null")
    if not isinstance(text, str):
        raise BadRecord(f"field {field!r} is {type(text).__name__}, not a string")
    if not text.strip():
        raise BadRecord(f"field {field!r} is empty")
    if not any(unicodedata.category(c) not in INVISIBLE_CATEGORIES for c in text):
        raise BadRecord(f"field {field!r} has no visible characters (only control, format or space)")
    if len(text) > opts.max_chars:
        if opts.oversize == "dead-letter":
            raise BadRecord(f"text has {len(text):,} characters, more than max_chars={opts.max_chars:,}")
        text = text[: opts.max_chars]
    return text


def check_id(value: Any, field: str) -> str | None:
    """A record's id as a string: strings as they are, integers in decimal (so `1` and `"1"` are the
    same id), None when absent; any other type is a BadRecord."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # more digits than Python converts
            raise BadRecord(f"field {field!r} is an integer too long to be an id") from None
    raise BadRecord(f"field {field!r} is {type(value).__name__}; an id must be a string or an integer")


def _no_lone_surrogates(value: str, field: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRecord(
            f"field {field!r} holds a lone surrogate escape (\\u{ord(value[exc.start]):04x}) at character "
            f"{exc.start}; it is not text"
        ) from None
    return value


def parse_json_line(line: bytes, opts: ReadOptions) -> tuple[str, str]:
    """(id, text) of one JSONL line, or BadRecord: every failure of one line is its own."""
    try:
        decoded = line.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"not valid UTF-8: byte {exc.start} is {line[exc.start : exc.start + 1]!r}") from None
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise BadRecord(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:  # nested too deeply, or an integer of > 4,300 digits
        return _parse_with_arrow(line, opts, exc)
    if not isinstance(record, dict):
        raise BadRecord(f"record is a JSON {type(record).__name__}, not an object")
    text = _no_lone_surrogates(
        check_text(record.get(opts.text_field), opts.text_field, opts), opts.text_field
    )
    doc_id = check_id(record.get(opts.id_field), opts.id_field)
    if doc_id is not None:
        _no_lone_surrogates(doc_id, opts.id_field)
    return (stable_id(text) if doc_id is None else doc_id), text


def _parse_with_arrow(line: bytes, opts: ReadOptions, exc: Exception) -> tuple[str, str]:
    """One line that Python's json refuses only for its limits (nesting depth, integer digits):
    read it as the fast path does, so a record's fate never depends on its neighbours."""
    parsed = _fast_parse(line, 1, opts, other_fields=False)
    if parsed is None:
        what = (
            "values nested too deeply"
            if isinstance(exc, RecursionError)
            else "an integer of over 4,300 digits"
        )
        raise BadRecord(f"invalid JSON: {what}")
    text_arr, id_arr, _ = parsed
    text = check_text(text_arr[0].as_py(), opts.text_field, opts)
    doc_id = None if id_arr is None else id_arr[0].as_py()
    return (stable_id(text) if doc_id is None else doc_id), text


# --- JSONL -------------------------------------------------------------------------------------


class _Decompressed(io.RawIOBase):
    """The decompressed bytes of a raw stream, read by `read(n)`; a compressed stream that ends early
    or is corrupt stops the data where it breaks and sets `broken` to the reason."""

    def __init__(self, raw: Any, suffix: str) -> None:
        import bz2
        import gzip
        import lzma

        self._raw = raw
        self.broken: str | None = None
        self._zstd: Any = None
        if suffix == ".zst":
            import zstandard

            self._zstd, self._started = zstandard, False
            self._frame: Any = None
            self._stream = None
        else:
            opener = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}[suffix]
            self._stream = opener(fileobj=raw) if suffix == ".gz" else opener(raw)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._raw.close()
        super().close()

    def read(self, size: int = -1) -> bytes:
        if self.broken is not None:
            return b""
        try:
            return self._stream.read1(size) if self._stream is not None else self._read_zstd(size)
        except EOFError:
            self.broken = "file is truncated: the compressed stream ends before its end marker"
        except Exception as exc:  # noqa: BLE001 - zlib/lzma/zstd errors all mean corrupt data here
            self.broken = f"compressed data is corrupt: {exc}"
        return b""

    def _read_zstd(self, size: int) -> bytes:
        while True:
            if self._frame is not None and self._frame.eof:
                rest, self._frame = self._frame.unused_data, None
            else:
                rest = b""
            chunk = rest or self._raw.read(max(size, 1 << 20))
            if not chunk:
                if self._frame is not None:
                    raise EOFError
                return b""
            if self._frame is None:
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
            out = self._frame.decompress(chunk)
            if out:
                return out


COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def _open_jsonl(path: str) -> Any:
    """A byte stream of the file's JSONL, decompressed by suffix (truncation noticed, see _Decompressed)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    suffix = next((s for s in COMPRESSED_SUFFIXES if path.lower().endswith(s)), None)
    if suffix is None:
        return FileSystems.open(path, compression_type=CompressionTypes.AUTO)
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return _Decompressed(raw, suffix)


def _line_chunks(
    stream: Any, batch_size: int, batch_bytes: int, first_line: int = 1
) -> Iterator[tuple[list[int], bytes]]:
    """(line numbers, lines) chunks of `batch_size` non-blank lines of a byte stream whose first line is
    line `first_line` (blank lines are not records), or fewer: a chunk ends at the line that brings it
    to `batch_bytes`. The lines come as the bytes from the first to the last of them, any blank lines
    between them included (`chunk_lines` splits them). Newlines are found with numpy: no Python object
    per line.

    When the stream breaks (`stream.broken`), the partial last line is not a record: it is left in
    `stream.partial` as (line number, bytes) for the caller to dead-letter with the reason."""
    carry = b""
    line_no = first_line - 1
    numbers: list[int] = []
    parts: list[bytes] = []
    size = 0  # bytes in parts, with the newlines that join them
    while True:
        block = stream.read(_READ_BLOCK)
        if not block:
            break
        data = carry + block
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        if not len(ends):
            carry = data
            continue
        carry = data[ends[-1] + 1 :]
        starts = np.concatenate(([0], ends[:-1] + 1))
        kept = _non_blank(data, starts, ends)
        here = (line_no + 1 + kept).tolist()
        line_no += len(ends)
        i = 0
        while i < len(here):
            take = min(batch_size - len(numbers), len(here) - i)
            spans = ends[kept[i : i + take]] - starts[kept[i]]  # from this line's start to each line's end
            take = min(take, int(np.searchsorted(spans, batch_bytes - size)) + 1)
            parts.append(data[starts[kept[i]] : ends[kept[i + take - 1]]])
            size += len(parts[-1]) + 1
            numbers += here[i : i + take]
            i += take
            if len(numbers) >= batch_size or size >= batch_bytes:
                yield numbers, b"\n".join(parts)
                numbers, parts, size = [], [], 0
    if getattr(stream, "broken", None) is not None:
        stream.partial = (line_no + 1, carry)
    elif carry.strip():
        parts.append(carry)
        numbers.append(line_no + 1)
    if numbers:
        yield numbers, b"\n".join(parts)


def _non_blank(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of the lines data[starts[i]:ends[i]] that hold more than whitespace (`bytes.strip`'s)."""
    first = np.frombuffer(data, np.uint8)[starts]  # a start is at most the last newline's position
    maybe_blank = (starts == ends) | (first == 32) | ((first >= 9) & (first <= 13))
    blank = np.zeros(len(starts), dtype=bool)
    for i in np.flatnonzero(maybe_blank).tolist():  # rare: a line that starts with whitespace
        blank[i] = not data[starts[i] : ends[i]].strip()
    return np.flatnonzero(~blank)


def chunk_lines(data: bytes) -> list[bytes]:
    """The non-blank lines of a `_line_chunks` chunk, in order."""
    return [line for line in data.split(b"\n") if line.strip()]


def _count_lines(stream: Any) -> int:
    """The non-blank lines of a byte stream, as `_line_chunks` finds them, with no Python object per line
    (counting the 0.2 GB input of `bench/scale_bench.py` took 0.21 CPU-s, by `_line_chunks` 0.53)."""
    carry, total = b"", 0
    while block := stream.read(_READ_BLOCK):
        data = carry + block
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        if len(ends):
            total += len(_non_blank(data, np.concatenate(([0], ends[:-1] + 1)), ends))
            data = data[ends[-1] + 1 :]
        carry = data
    return total + bool(carry.strip())


def count_records(
    inputs: dict[str, list[str]], exclude: str | None = None, max_bytes: int = 256 << 20
) -> int | None:
    """Records in a job's inputs (domain -> globs, as `expand_inputs` takes them), counted the way the
    reader splits them (non-blank JSONL lines; Parquet rows from the footer): a progress total. None
    for remote files, unreadable ones, or JSONL files holding more than `max_bytes` on disk (counting
    them would cost a noticeable part of the job)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    paths = [path for _, path in expand_inputs(inputs, exclude)]
    if any("://" in p for p in paths):
        return None
    jsonl = {p for p in paths if not p.lower().endswith(PARQUET_SUFFIXES)}
    if sum(file_sizes(jsonl).values()) > max_bytes:
        return None
    total = 0
    try:
        for path in paths:
            if path in jsonl:
                with contextlib.closing(_open_jsonl(path)) as stream:
                    total += _count_lines(stream)
            else:
                with contextlib.closing(FileSystems.open(path)) as source:
                    total += pq.ParquetFile(source).metadata.num_rows
    except (OSError, ValueError):
        return None
    return total


def _fast_parse(
    data: bytes, n_lines: int, opts: ReadOptions, other_fields: bool = True
) -> tuple[pa.Array, pa.Array | None, bool] | None:
    """Parse a chunk of `n_lines` non-blank lines with Arrow's JSON reader (which skips blank ones):
    (texts, ids, whether records have other fields to keep as metadata); None when any record needs
    the per-line path."""
    import pyarrow.json as pj

    fields = [(opts.text_field, pa.string())]
    if opts.id_field != opts.text_field:
        fields.append((opts.id_field, pa.string()))
    block = max(1 << 20, 2 * len(data))

    def read(unexpected: str) -> pa.Table:
        parse = pj.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior=unexpected)
        return pj.read_json(
            io.BytesIO(data), read_options=pj.ReadOptions(block_size=block), parse_options=parse
        )

    # Other fields are only detected here ("error"), never typed by Arrow: inferring the type of a
    # deeply nested value recurses in C++ and can overflow the stack. Their values are read by `json`.
    look_for_other = other_fields and opts.keep_fields != ()
    has_other = False
    try:
        table = read("error" if look_for_other else "ignore")
    except (pa.ArrowInvalid, UnicodeDecodeError):
        if not look_for_other:
            return None
        try:
            table, has_other = read("ignore"), True
        except (pa.ArrowInvalid, UnicodeDecodeError):
            return None
    if table.num_rows != n_lines:
        return None
    text = table.column(opts.text_field).combine_chunks()
    if text.null_count:
        return None
    ids = table.column(opts.id_field).combine_chunks() if opts.id_field != opts.text_field else None
    try:  # Arrow lets invalid UTF-8 (e.g. CESU-8 surrogates) through; no Python conversion before this
        text.validate(full=True)
        if ids is not None:
            ids.validate(full=True)
    except pa.ArrowInvalid:
        return None
    return text, ids, has_other


def _chunk_documents(
    domain: str, source: str, numbers: list[int], data: bytes, opts: ReadOptions
) -> tuple[pa.RecordBatch | None, list[dict[str, Any]]]:
    fast = _fast_parse(data, len(numbers), opts)
    ids: list[str] = []
    texts: list[str] = []
    records: list[int] = []
    metadata: list[str | None] = []
    dead: list[dict[str, Any]] = []
    if fast is not None:
        text_arr, id_arr, has_metadata = fast
        meta = [line_metadata(line, opts) for line in chunk_lines(data)] if has_metadata else None
        lengths = pc.utf8_length(text_arr).to_numpy()
        blank = pc.invert(pc.match_substring_regex(text_arr, VISIBLE_PATTERN)).to_numpy(zero_copy_only=False)
        if not blank.any() and lengths.max(initial=0) <= opts.max_chars:
            if id_arr is not None and not id_arr.null_count:
                return docs_batch(domain, source, id_arr, text_arr, numbers, meta), []
            raw_ids = id_arr.to_pylist() if id_arr is not None else [None] * len(numbers)
            if None in raw_ids:
                texts_py = text_arr.to_pylist()
                raw_ids = [stable_id(t) if i is None else i for i, t in zip(raw_ids, texts_py, strict=True)]
            return docs_batch(domain, source, raw_ids, text_arr, numbers, meta), []
    for number, line in zip(numbers, chunk_lines(data), strict=True):
        try:
            doc_id, text = parse_json_line(line, opts)
        except BadRecord as exc:
            dead.append(dead_letter_row(domain, source, number, "read", line, str(exc)))
            continue
        ids.append(doc_id)
        texts.append(text)
        records.append(number)
        metadata.append(line_metadata(line, opts) if opts.keep_fields != () else None)
    batch = docs_batch(domain, source, ids, texts, records, metadata) if ids else None
    return batch, dead


def read_jsonl(domain: str, path: str, opts: ReadOptions) -> Iterator[tuple[pa.RecordBatch | None, list]]:
    """(documents batch, dead-letter rows) per chunk of lines (`_line_chunks`); a compressed file that
    ends early keeps every record before the break and dead-letters the break itself."""
    with _open_jsonl(path) as stream:
        for numbers, data in _line_chunks(stream, opts.batch_size, opts.batch_bytes):
            yield _chunk_documents(domain, path, numbers, data, opts)
        broken = getattr(stream, "broken", None)
        if broken is not None:
            number, partial = stream.partial
            if number == 1 and not partial:  # not one byte decompressed: the file itself is unreadable
                yield None, [dead_letter_row(domain, path, None, "read", path, f"cannot read file: {broken}")]
                return
            reason = f"{broken} (after line {number - 1}; the records before it are kept)"
            yield None, [dead_letter_row(domain, path, number, "read", partial, reason)]


class _ByteRange(io.RawIOBase):
    """The bytes [start, end) of a local file, read by `read(n)`."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._file.seek(start)
        self._left = end - start

    def close(self) -> None:
        self._file.close()
        super().close()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(self._left if size < 0 else min(size, self._left))
        self._left -= len(data)
        return data


def is_plain_jsonl(path: str) -> bool:
    """A local JSONL file read as its bytes are on disk (not compressed): one that `read_jsonl_block`
    can read in byte ranges."""
    from apache_beam.io.filesystem import CompressionTypes

    lower = path.lower()
    return (
        "://" not in path
        and not lower.endswith(PARQUET_SUFFIXES + COMPRESSED_SUFFIXES)
        and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
    )


def read_jsonl_block(
    domain: str, path: str, opts: ReadOptions, start: int, end: int, first_line: int
) -> Iterator[tuple[pa.RecordBatch | None, list]]:
    """`read_jsonl` of the bytes [start, end) of an uncompressed local JSONL file, cut at line ends,
    whose first line is line `first_line` of the file: records keep their line numbers in the file."""
    with _ByteRange(path, start, end) as stream:
        for numbers, data in _line_chunks(stream, opts.batch_size, opts.batch_bytes, first_line):
            yield _chunk_documents(domain, path, numbers, data, opts)


# --- Parquet -----------------------------------------------------------------------------------


def _row_raw(batch: pa.RecordBatch, i: int) -> str:
    row = batch.slice(i, 1)
    try:
        row.validate(full=True)
        return json.dumps(row.to_pylist()[0], default=str, ensure_ascii=False)
    except (pa.ArrowInvalid, UnicodeDecodeError):  # invalid UTF-8 somewhere in the row
        return repr({name: _as_python(row.column(name))[0] for name in row.schema.names})


def _as_python(column: pa.Array) -> list[Any]:
    """Python values of a column; strings that are not valid UTF-8 come back as bytes (judged per row)."""
    try:
        column.validate(full=True)
        return column.to_pylist()
    except pa.ArrowInvalid:
        large = pa.types.is_large_string(column.type)
        return column.cast(pa.large_binary() if large else pa.binary()).to_pylist()


def _parquet_record(text: Any, doc_id: Any, opts: ReadOptions) -> tuple[str, str]:
    """(id, text) of one Parquet row, or BadRecord."""
    text = check_text(_decode(text) if isinstance(text, bytes) else text, opts.text_field, opts)
    doc_id = check_id(_decode(doc_id) if isinstance(doc_id, bytes) else doc_id, opts.id_field)
    return (stable_id(text) if doc_id is None else doc_id), text


def read_parquet(
    domain: str, path: str, opts: ReadOptions, row_groups: range | None = None, first_row: int = 1
) -> Iterator[tuple[pa.RecordBatch | None, list]]:
    """(documents batch, dead-letter rows) per Parquet record batch: of the whole file, or of the
    given `row_groups` whose first row is row `first_row` of the file."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    # Arrow never gets a Python file object with threads on: its I/O threads would call back into
    # Python and abort the process at interpreter exit ("terminate called ..."; exit 134).
    local = "://" not in path
    with (
        contextlib.nullcontext(path) if local else FileSystems.open(path) as source,
        pq.ParquetFile(source, pre_buffer=local) as parquet,
    ):
        names = parquet.schema_arrow.names
        other = [n for n in names if n not in (opts.text_field, opts.id_field)]
        other = [n for n in other if opts.keep_fields is None or n in opts.keep_fields]
        row = first_row - 1
        rows = batch_rows(parquet.metadata, row_groups, opts)
        read = parquet.iter_batches(batch_size=rows, row_groups=row_groups, use_threads=local)
        for batch in (part for whole in read for part in byte_slices(whole, opts)):
            meta_rows = batch.select(other).to_pylist() if other else None
            texts_in = _as_python(batch.column(opts.text_field)) if opts.text_field in names else None
            raw_ids = _as_python(batch.column(opts.id_field)) if opts.id_field in names else None
            ids: list[str] = []
            texts: list[str] = []
            records: list[int] = []
            metadata: list[str | None] = []
            dead: list[dict[str, Any]] = []
            for i in range(batch.num_rows):
                try:
                    doc_id, text = _parquet_record(
                        None if texts_in is None else texts_in[i],
                        None if raw_ids is None else raw_ids[i],
                        opts,
                    )
                except BadRecord as exc:
                    dead.append(
                        dead_letter_row(domain, path, row + i + 1, "read", _row_raw(batch, i), str(exc))
                    )
                    continue
                ids.append(doc_id)
                texts.append(text)
                records.append(row + i + 1)
                metadata.append(record_metadata(meta_rows[i], opts) if meta_rows else None)
            row += batch.num_rows
            yield (docs_batch(domain, path, ids, texts, records, metadata) if ids else None), dead


def batch_rows(metadata: Any, row_groups: range | None, opts: ReadOptions) -> int:
    """Rows a Parquet batch reads: `opts.batch_size`, or fewer where the densest of the row groups
    (their uncompressed bytes per row) would bring a batch past `opts.batch_bytes`."""
    groups = [
        metadata.row_group(i)
        for i in (row_groups if row_groups is not None else range(metadata.num_row_groups))
    ]
    per_row = max((g.total_byte_size / g.num_rows for g in groups if g.num_rows), default=0.0)
    return max(1, min(opts.batch_size, int(opts.batch_bytes // per_row) if per_row else opts.batch_size))


def byte_slices(batch: pa.RecordBatch, opts: ReadOptions) -> Iterator[pa.RecordBatch]:
    """A Parquet batch in slices that each end at the row that brings their text to `opts.batch_bytes`
    (row groups' sizes per row misjudge texts that the file dictionary-encodes, e.g. repeated ones)."""
    names = batch.schema.names
    column = batch.column(opts.text_field) if opts.text_field in names else None
    if column is None or column.type not in (pa.string(), pa.large_string(), pa.binary(), pa.large_binary()):
        yield batch
        return
    ends = np.cumsum(pc.binary_length(column).fill_null(0).to_numpy(zero_copy_only=False))
    start = 0
    while start < len(batch):
        before = int(ends[start - 1]) if start else 0
        stop = min(len(batch), int(np.searchsorted(ends, before + opts.batch_bytes)) + 1)
        yield batch.slice(start, stop - start)
        start = stop


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(
            f"not valid UTF-8: byte {exc.start} is {value[exc.start : exc.start + 1]!r}"
        ) from None


def read_file(domain: str, path: str, opts: ReadOptions) -> Iterator[tuple[pa.RecordBatch | None, list]]:
    """Dispatch on the file's suffix (after any compression suffix for JSONL)."""
    if path.lower().endswith(PARQUET_SUFFIXES):
        return read_parquet(domain, path, opts)
    return read_jsonl(domain, path, opts)


def read_block(
    domain: str, path: str, opts: ReadOptions, start: int, end: int, first: int
) -> Iterator[tuple[pa.RecordBatch | None, list]]:
    """One block of a file (`pipeline.resume`): the row groups [start, end) of a Parquet file whose
    first row is row `first`, or the bytes [start, end) of a plain JSONL file whose first line is line
    `first` (`read_jsonl_block`). Records keep their numbers in the whole file."""
    if path.lower().endswith(PARQUET_SUFFIXES):
        return read_parquet(domain, path, opts, range(start, end), first)
    return read_jsonl_block(domain, path, opts, start, end, first)


def sample_texts(pairs: Iterable[tuple[str, str]], opts: ReadOptions, max_chars_per_domain: int) -> list[str]:
    """The first valid texts of each domain, up to `max_chars_per_domain` characters (for BPE training)."""
    budget: dict[str, int] = {}
    out: list[str] = []
    for domain, path in pairs:
        if budget.get(domain, 0) >= max_chars_per_domain:
            continue
        try:
            for batch, _ in read_file(domain, path, opts):
                if batch is None:
                    continue
                for text in batch.column(S.TEXT).to_pylist():
                    out.append(text)
                    budget[domain] = budget.get(domain, 0) + len(text)
                    if budget[domain] >= max_chars_per_domain:
                        break
                if budget.get(domain, 0) >= max_chars_per_domain:
                    break
        except Exception:  # noqa: BLE001 - an unreadable file is dead-lettered by the job itself
            continue
    return out


def read_texts(globs: list[str], text_field: str = "text", max_docs: int | None = None) -> list[str]:
    """Texts of the JSONL/Parquet files matching `globs`, in order, up to `max_docs` (oversized texts
    truncated; records without a usable text skipped, as the job dead-letters them)."""
    opts = ReadOptions(text_field=text_field, oversize="truncate")
    texts: list[str] = []
    for domain, path in expand_inputs({"input": globs}):
        for batch, _dead in read_file(domain, path, opts):
            if batch is not None:
                texts += batch.column(S.TEXT).to_pylist()
            if max_docs and len(texts) >= max_docs:
                return texts[:max_docs]
    return texts
