"""Resumable local score jobs (`datamixer score --resume`): finished work is not done again.

A unit of work is one input file of one domain, or one block of a large file (`blocks_of`, with
or without `--resume`): a local plain JSONL file is cut into equal byte ranges of about
`block_bytes` (at most `BLOCK_BYTES`; smaller when a DirectRunner job has few files for its
workers, so that dealing the blocks round them evens out their work), each ending at a line end,
whose records keep their line numbers in the file (`line_blocks`), and a local Parquet file into
runs of row groups of about that size (`row_group_blocks`); compressed JSONL files (they cannot be
cut by bytes) and remote files are whole-file units. While the job runs, every scored batch of a
unit is staged as Arrow part files in the job's resume directory, `.NAME.resume/` beside the
output `NAME`, together with the unit's dead-letter rows. When the step has seen all of a unit's
rows (the reader sends each unit's record count after its last batch), the parts are flushed to
disk and a marker `units/<unit>.done` (JSON: the file's size and mtime, the block, the options
digest, the part files) is written atomically. A later run with `--resume` and the same options
digest skips those units and feeds their staged parts, scores and dead letters into the same
cut-off combine and shard writers as the units it scores now, so the output is byte-identical to
an uninterrupted run. The BPE trained on the input sample is kept there too (`trained_bpe`).

The commit resumes too: each output shard is written into `shards/` of the resume directory,
flushed, and given a marker (`ShardCommits`: the digest of what went into it, and the size and
sha256 of its files) before it is hard-linked into the output. A resumed run whose shard would be
made of the same parts, dead letters and cut-offs links the verified files instead of writing them.

The digest covers every option that changes the output (the config, the resolved shard count),
the tokenizer JSON and the content of model files (scorer model, language-ID model, heads file):
a run with other options clears the state instead of reusing it. The directory holds a marker
(`STATE_FILE`) and is only ever cleared or removed when it has one; it is removed after the output
is committed. On Dataflow, Spark or Flink the runner retries failed work itself, so `--resume` is
a DirectRunner feature only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixer.files import resume_path
from pipeline import schema as S
from pipeline.progress import documents_done
from pipeline.read import PARQUET_SUFFIXES, is_plain_jsonl
from pipeline.select import domain_scores
from pipeline.shards import PartWriters, read_parts
from pipeline.stages import conform

STATE_FILE = ".datamixer-resume"
FORMAT = 2
UNITS_DIR = "units"
SHARDS_DIR = "shards"
BPE_DIR = "bpe"
DEAD_LETTERS = "dead_letter.arrow"
BLOCK_BYTES = 64 << 20  # the largest block a local plain-JSONL or Parquet file is read by
MIN_BLOCK_BYTES = 4 << 20  # the smallest block cut to even out the workers' work
# The DirectRunner deals the units round its workers once, before any runs (`dealing_order`), so a
# worker's share is fixed. Each file cut into a multiple of the workers' blocks (`file_blocks`), the
# shares are equal in bytes and in domains (a domain's text can cost 20% more per byte than another's);
# what is left between them is the speed of their cores. Blocks of about 1/32 of a worker's share keep
# the rest (the whole files: under about 1.5 blocks) to a few percent, and a resumed job's lost work
# to a block.
BLOCKS_PER_WORKER = 32
_SCAN = 8 << 20

# A file's block: (index, start, end, number of its first record), start and end being bytes of a
# JSONL file or row groups of a Parquet file.
Block = tuple[int, int, int, int]
Unit = tuple[str, str, Block | None]  # (domain, file, its block or None for the whole file)


class ResumeRefused(ValueError):
    """`--resume` asked for where it cannot work (another runner, a remote output, a foreign dir)."""


def unit_id(domain: str, source: str, block: int = 0) -> str:
    """Name of a (domain, file, block) unit inside the resume directory."""
    key = f"{domain}\x00{source}\x00{block}"
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def check_resumable(runner: str, output: str, dedup: bool) -> None:
    """Refuse `--resume` where it cannot apply, saying why."""
    if runner != "direct":
        raise ResumeRefused(
            f"--resume is for the direct runner; on the {runner} runner Beam retries failed work "
            "itself (see docs/reliability.md): run without --resume"
        )
    if "://" in output:
        raise ResumeRefused(f"--resume needs a local --output; {output} is remote")
    if dedup:
        raise ResumeRefused("--resume does not work with --dedup yet (dedup groups all files at once)")


# --- the options digest ------------------------------------------------------------------------


def _content_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\x00")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _model_paths(config: Any) -> list[str]:
    """Local files or directories the config names whose content changes the scores."""
    names: list[Any] = []
    if config.scorer is not None:
        names += [config.scorer.model, *config.scorer.options.values()]
    if config.language is not None:
        names.append(config.language.model)
    return sorted({n for n in names if isinstance(n, str) and "://" not in n and Path(n).exists()})


def options_digest(config: Any, tokenizer_json: str, num_shards: int) -> str:
    """Digest of everything besides the input files that changes the staged units."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("datamixer")
    except PackageNotFoundError:  # a source tree that is not installed
        package = "unknown"
    unrelated = ("inputs", "output", "resume")  # files are checked one by one (`ResumeState.finished`)
    names = [f.name for f in dataclasses.fields(config) if f.name not in unrelated]
    settings = {name: getattr(config, name) for name in names}
    parts = {
        "format": FORMAT,
        "version": package,
        "config": repr(settings),
        "num_shards": num_shards,
        "tokenizer": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        "models": {p: _content_digest(Path(p)) for p in _model_paths(config)},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- blocks of large files ---------------------------------------------------------------------


def _next_line_end(fh: Any, offset: int, size: int) -> int:
    """The offset just past the first newline at or after `offset` (the file size when none)."""
    fh.seek(offset)
    while chunk := fh.read(1 << 16):
        found = chunk.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(chunk)
    return size


def line_blocks(path: str, block_bytes: int) -> list[Block]:
    """(index, start, end, first line number) of a local file cut into blocks of at least
    `block_bytes` that each end just after a newline (the last one at the end of the file)."""
    blocks: list[Block] = []
    start, first = 0, 1
    buffer = bytearray(_SCAN)  # read into, and compared into, the same memory: no fresh pages per read
    data, newline = np.frombuffer(buffer, np.uint8), np.empty(_SCAN, bool)
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        while start < size:
            end = _next_line_end(fh, start + block_bytes - 1, size) if start + block_bytes < size else size
            blocks.append((len(blocks), start, end, first))
            fh.seek(start)
            left = end - start
            while left:
                n = fh.readinto(memoryview(buffer)[: min(_SCAN, left)])
                if not n:
                    raise OSError(f"{path} ended at byte {end - left} while it was read ({size} bytes)")
                np.equal(data[:n], 10, out=newline[:n])
                first += int(np.count_nonzero(newline[:n]))  # about 3x bytes.count
                left -= n
            start = end
    return blocks


def row_group_blocks(path: str, block_bytes: int) -> list[Block]:
    """(index, first row group, end row group, first row number) of a local Parquet file cut into
    runs of whole row groups of at least `block_bytes` compressed (the last one may be smaller)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    blocks: list[Block] = []
    start, first, row, size = 0, 1, 1, 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        size += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        row += group.num_rows
        if size >= block_bytes or i == meta.num_row_groups - 1:
            blocks.append((len(blocks), start, i + 1, first))
            start, first, size = i + 1, row, 0
    return blocks


def block_bytes(input_bytes: int, workers: int) -> int:
    """About how large the blocks of a job's files are: BLOCKS_PER_WORKER per worker process of a
    DirectRunner job (`workers`; at least MIN_BLOCK_BYTES), so that the workers get even shares of
    an input of few or unequal files, and at most BLOCK_BYTES (also the size with one worker or on
    other runners, `workers=0`, which split the work themselves)."""
    if workers <= 1:
        return BLOCK_BYTES
    even = -(-input_bytes // (BLOCKS_PER_WORKER * workers))
    return min(BLOCK_BYTES, max(MIN_BLOCK_BYTES, even))


def file_blocks(path: str, size: int | None = None, workers: int = 1) -> list[Block] | None:
    """The blocks an input file is read by: round(file size / `size`) blocks of equal bytes (`size`
    defaults to BLOCK_BYTES), or None when it is one unit: a remote file, a compressed JSONL file (it
    cannot be cut by bytes), and a file that would make one block.

    With `workers` > 1 (a DirectRunner's processes) a file that is cut is cut into a multiple of
    `workers` blocks: dealt in turn (`dealing_order`), every worker then reads an equal share of every
    such file, and so of every domain. (Cutting a file costs the job a pass over it to number its
    lines: whole files stay whole.)"""
    if "://" in path:
        return None
    parquet = path.lower().endswith(PARQUET_SUFFIXES)
    if not (parquet or is_plain_jsonl(path)):
        return None
    file_bytes = os.path.getsize(path)
    count = round(file_bytes / (BLOCK_BYTES if size is None else size))
    if workers > 1 and count > 1:
        count = -(-count // workers) * workers
    if count <= 1:
        return None
    target = -(-file_bytes // count)
    blocks = row_group_blocks(path, target) if parquet else line_blocks(path, target)
    return blocks if len(blocks) > 1 else None


def blocks_of(
    files: Sequence[tuple[str, str]], size: int, workers: int = 1
) -> dict[tuple[str, str], list[Block]]:
    """The files of `files` that are read by blocks of about `size` bytes, with their blocks (see
    `file_blocks` for `workers`)."""
    blocks = {(domain, path): file_blocks(path, size, workers) for domain, path in files}
    return {key: value for key, value in blocks.items() if value is not None}


def units_of(files: Sequence[tuple[str, str]], blocks: dict[tuple[str, str], list[Block]]) -> list[Unit]:
    """(domain, file, block or None) for every block of every file (None: the whole file)."""
    return [(domain, path, block) for domain, path in files for block in blocks.get((domain, path), [None])]


def dealing_order(
    units: Sequence[tuple[Any, ...]], sizes: dict[str, int], workers: int = 1
) -> list[tuple[Any, ...]]:
    """`units` in the order a job hands them to the runner: the files cut into a multiple of `workers`
    blocks first, then the rest (whole files among them), each group largest file first (`sizes`:
    bytes by path), a file's blocks in a row. A multi-processing DirectRunner of `workers` processes
    deals them round its workers in this order, once: each worker gets every `workers`-th block of
    each file of the first group, the same share of it (`file_blocks`), and the rest in turn, largest
    first. A worker's part files hold the rows of few files, which the shard merge is done with early.
    (Ordered by unit size alone, the equal blocks of all files came in turn, and at 1 GB the peak disk
    went from 1.00 to 1.04x the output.)"""
    count = Counter(unit[:2] for unit in units)
    return sorted(units, key=lambda u: (workers > 1 and count[u[:2]] % workers != 0, -sizes.get(u[1], 0), u))


# --- the state on disk -------------------------------------------------------------------------


def _file_stamp(path: str) -> list[float]:
    """[size, modification time] of an input file (local, or any Beam filesystem)."""
    if "://" not in path:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns]
    from apache_beam.io.filesystems import FileSystems

    meta = FileSystems.match([path])[0].metadata_list[0]
    return [meta.size_in_bytes, meta.last_updated_in_seconds]


def _write_atomically(path: Path, text: str) -> None:
    """Write, flush to disk, rename into place: a reader sees the whole file or none."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """The resume directory of one output, for one options digest; `blocks`: the files read by blocks."""

    root: Path
    digest: str
    run: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)  # keys this run's ledger
    blocks: dict[tuple[str, str], list[Block]] = dataclasses.field(default_factory=dict)

    @property
    def units_dir(self) -> Path:
        return self.root / UNITS_DIR

    def marker(self, domain: str, source: str, block: int = 0) -> Path:
        return self.units_dir / f"{unit_id(domain, source, block)}.done"

    def block_of(self, domain: str, source: str, records: np.ndarray) -> np.ndarray:
        """Index of the block that holds each record (line number) of a file (0: a whole-file unit)."""
        blocks = self.blocks.get((domain, source))
        if blocks is None:
            return np.zeros(len(records), np.int64)
        firsts = np.array([block[3] for block in blocks], np.int64)
        return np.searchsorted(firsts, records, side="right") - 1

    def finished(self, domain: str, source: str, block: Block | None) -> dict[str, Any] | None:
        """The unit's marker when it is valid for this digest and the file is unchanged, else None."""
        index = 0 if block is None else block[0]
        try:
            done = json.loads(self.marker(domain, source, index).read_text())
            stamp = _file_stamp(source)
        except (OSError, ValueError, IndexError):
            return None
        unit_dir = self.units_dir / unit_id(domain, source, index)
        valid = (
            done.get("digest") == self.digest
            and [done.get("domain"), done.get("source")] == [domain, source]
            and done.get("block") == (None if block is None else list(block))
            and done.get("stamp") == stamp
            and all((unit_dir / name).is_file() for _, name in done["parts"])
            and (unit_dir / DEAD_LETTERS).is_file()
        )
        return done if valid else None


def open_state(target: str | os.PathLike[str], digest: str, resume: bool) -> ResumeState | None:
    """The resume state for this run: reused as far as `digest` allows when `resume`, else cleared.

    Without `resume`, a state directory of ours is removed (and None returned); one without our
    marker is never touched: ResumeRefused when `resume` asks to use it."""
    root = resume_path(target)
    ours = _ours(root)
    if root.exists() and not ours:
        if not resume:
            return None
        raise ResumeRefused(f"{root}: exists and was not written by datamixer --resume; remove or rename it")
    if not resume:
        if ours:
            shutil.rmtree(root)
        return None
    if ours:
        try:
            stored = json.loads((root / STATE_FILE).read_text()).get("digest")
        except (OSError, ValueError, AttributeError):
            stored = None
        if stored != digest:  # other options: nothing staged is valid (a trained BPE still is)
            for entry in root.iterdir():
                if entry.name not in (STATE_FILE, BPE_DIR):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    root.mkdir(exist_ok=True)
    _write_atomically(root / STATE_FILE, json.dumps({"written_by": "datamixer", "digest": digest}) + "\n")
    (root / UNITS_DIR).mkdir(exist_ok=True)
    return ResumeState(root, digest)


def _ours(root: Path) -> bool:
    return (root / STATE_FILE).is_file() and not root.is_symlink()


def trained_bpe(sample: Sequence[str], vocab_size: int, target: str | os.PathLike[str]) -> str:
    """`train_byte_level_bpe(sample)` as JSON, kept in the resume directory of the output `target`
    (keyed by the sample and vocabulary size) so that a resumed run does not train it again."""
    from pipeline.tokenize import train_byte_level_bpe

    key = hashlib.sha256(str(vocab_size).encode())
    for text in sample:
        key.update(b"\x00" + text.encode("utf-8", "surrogatepass"))
    root = resume_path(target)
    cached = root / BPE_DIR / f"{key.hexdigest()[:32]}.json"
    if _ours(root) and cached.is_file():
        return cached.read_text(encoding="utf-8")
    text = train_byte_level_bpe(sample, vocab_size=vocab_size).to_str()
    if not root.exists():  # claimed now; `open_state` gives it its digest
        root.mkdir(parents=True)
        _write_atomically(root / STATE_FILE, json.dumps({"written_by": "datamixer", "digest": None}) + "\n")
    if _ours(root):
        cached.parent.mkdir(exist_ok=True)
        _write_atomically(cached, text)
    return text


def split_units(state: ResumeState, files: list[tuple[str, str]]) -> tuple[list[Unit], list[dict[str, Any]]]:
    """(units still to score, markers of finished units); staged data of any other unit is removed."""
    todo: list[Unit] = []
    done: list[dict[str, Any]] = []
    for domain, path, block in units_of(files, state.blocks):
        marker = state.finished(domain, path, block)
        if marker is None:
            todo.append((domain, path, block))
        else:
            done.append(marker)
    keep = {m["unit"] for m in done}
    for entry in state.units_dir.iterdir():
        if entry.name.split(".", 1)[0] not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return todo, done


def resume_units(
    target: str | os.PathLike[str],
    config: Any,
    files: list[tuple[str, str]],
    tokenizer_json: str,
    blocks: dict[tuple[str, str], list[Block]],
) -> tuple[list[Unit], tuple[ResumeState, list[dict[str, Any]]] | None]:
    """(units to score, (state, markers of finished units) or None) for a run of `config` (a
    `ScoreJobConfig` with `num_shards` resolved when it resumes) into the local output `target`,
    whose files are read by `blocks` (`blocks_of`). Without resume: every unit, and None."""
    digest = options_digest(config, tokenizer_json, config.num_shards) if config.resume else ""
    state = open_state(target, digest, config.resume)
    if state is None:
        return units_of(files, blocks), None
    state = dataclasses.replace(state, blocks=blocks)
    todo, finished = split_units(state, files)
    return todo, (state, finished)


def unit_counts(todo: list[Unit], finished: list[dict[str, Any]]) -> dict[str, int]:
    """What a resumed run skipped and did: units (files or blocks), and files with nothing left to do."""
    left = {(domain, path) for domain, path, _ in todo}
    resumed = {(m["domain"], m["source"]) for m in finished} - left
    return {
        "files_resumed": len(resumed),
        "files_scored": len(left),
        "units_resumed": len(finished),
        "units_scored": len(todo),
    }


def forget_run(state: ResumeState) -> None:
    """Drop this run's ledger (units left incomplete in this process) once the pipeline is done."""
    with _LEDGER_LOCK:
        _LEDGERS.pop(state.run, None)


def remove_state(target: str | os.PathLike[str]) -> None:
    """Remove the resume directory after a committed output (only when it carries our marker)."""
    root = resume_path(target)
    if _ours(root):
        shutil.rmtree(root)


# --- staging units during the job --------------------------------------------------------------
#
# A unit is complete when its rows have all been staged: the reader's count at the unit's end (with
# its read dead letters) must equal the documents staged plus those the tokenizer or scorer
# dead-lettered. The three arrive at three steps of the same fused stage, so they meet in a ledger
# per worker process (a multi-input Flatten would end the fusion: the DirectRunner runs it as a
# separate stage after the whole read). Counts that never meet in one process (a runner that
# splits a unit's rows) only mean that unit is scored again: a marker is never written early.

UnitKey = tuple[str, str, int]  # (domain, file, block index)


@dataclasses.dataclass
class _Unit:
    parts: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    dead: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rows: int = 0
    expected: int | None = None


_LEDGERS: dict[str, dict[UnitKey, _Unit]] = {}
_LEDGER_LOCK = threading.Lock()


def _note(
    state: ResumeState,
    key: UnitKey,
    parts: Sequence[tuple[int, str]] = (),
    dead: Sequence[dict[str, Any]] = (),
    rows: int = 0,
    expected: int | None = None,
) -> None:
    """Add what a step staged of a unit; write the unit's marker once all of it is staged."""
    with _LEDGER_LOCK:
        units = _LEDGERS.setdefault(state.run, {})
        unit = units.setdefault(key, _Unit())
        unit.parts += parts
        unit.dead += dead
        unit.rows += rows
        unit.expected = unit.expected if expected is None else expected
        if unit.rows != unit.expected:
            return
        del units[key]
    _commit_unit(state, key, unit)


def _commit_unit(state: ResumeState, key: UnitKey, unit: _Unit) -> None:
    """Flush the unit's parts and dead letters to disk, then write its marker atomically."""
    domain, source, index = key
    blocks = state.blocks.get((domain, source))
    unit_dir = state.units_dir / unit_id(*key)
    unit_dir.mkdir(parents=True, exist_ok=True)
    dead = unit_dir / DEAD_LETTERS
    with pa.OSFile(str(dead), "wb") as sink, pa.ipc.new_stream(sink, S.DEAD_LETTER_SCHEMA) as writer:
        writer.write_table(pa.Table.from_pylist(unit.dead, schema=S.DEAD_LETTER_SCHEMA))
    for path in [str(dead), *(p for _, p in unit.parts), str(unit_dir)]:
        _fsync(path)
    marker = {
        "unit": unit_dir.name,
        "domain": domain,
        "source": source,
        "block": None if blocks is None else list(blocks[index]),
        "stamp": _file_stamp(source),
        "digest": state.digest,
        "rows": unit.rows,
        "parts": [[shard, os.path.basename(path)] for shard, path in unit.parts],
    }
    _write_atomically(state.marker(*key), json.dumps(marker, sort_keys=True) + "\n")


class _StageUnitFn(beam.DoFn):
    """Scored batches -> part files in each unit's directory, emitted as (shard, path) at once (one
    file per batch and shard, so nothing stays open), and (domain, scores) for the cut-off."""

    def __init__(
        self, state: ResumeState, columns: list[str], schema: pa.Schema, num_shards: int, score_column
    ) -> None:
        self._state = state
        self._columns = columns
        self._schema = schema
        self._num_shards = num_shards
        self._score_column = score_column

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        batch = conform(batch, self._columns, self._schema)
        for key, rows in _by_unit(batch, self._state):
            writers = PartWriters(str(self._state.units_dir / unit_id(*key)), self._num_shards)
            writers.write(rows)
            parts = writers.close()
            yield from parts
            _note(self._state, key, parts=parts, rows=rows.num_rows)
        documents_done(batch.num_rows)
        if self._score_column is not None:
            for domain, scores in domain_scores(batch, self._score_column):
                yield beam.pvalue.TaggedOutput("scores", (domain, scores))


def _note_end(end: tuple[str, str, int, int, list[dict[str, Any]]], state: ResumeState) -> None:
    domain, source, block, rows, dead = end
    _note(state, (domain, source, block), dead=dead, expected=rows)


def _note_failed(row: dict[str, Any], state: ResumeState) -> None:
    domain, source = row[S.DOMAIN], row[S.SOURCE]
    block = int(state.block_of(domain, source, np.array([row[S.RECORD] or 1]))[0])
    _note(state, (domain, source, block), dead=[row], rows=1)


def _by_unit(batch: pa.RecordBatch, state: ResumeState) -> Iterator[tuple[UnitKey, pa.RecordBatch]]:
    """The rows of each unit in a batch (one unit per batch unless a step merged some)."""
    domains, sources = batch.column(S.DOMAIN), batch.column(S.SOURCE)
    pairs = sorted(set(zip(domains.to_pylist(), sources.to_pylist(), strict=True)))
    for domain, source in pairs:
        rows = batch
        if len(pairs) > 1:
            rows = batch.filter(pc.and_(pc.equal(domains, domain), pc.equal(sources, source)))
        blocks = state.block_of(domain, source, rows.column(S.RECORD).to_numpy())
        present = np.unique(blocks).tolist()
        for block in present:
            part = rows if len(present) == 1 else rows.filter(pa.array(blocks == block))
            yield (domain, source, block), part


class StageUnits(beam.PTransform):
    """{"docs_<i>": scored batches (and those a stage dropped), "ends": (domain, file, block, documents,
    read dead letters) per unit read whole, "failed_<i>": tokenizer and scorer dead letters} of the files
    scored now -> {"parts":
    (shard, file), "scores": (domain, scores)} of those and of the finished units, and "dead_letter":
    the finished units' dead letters. Each unit is staged in the resume directory as it completes."""

    def __init__(
        self,
        resume: tuple[ResumeState, list[dict[str, Any]]],
        columns: list[str],
        schema: pa.Schema,
        num_shards: int,
        score_column: str | None,
    ) -> None:
        super().__init__()
        self._state, self._markers = resume
        self._fn = _StageUnitFn(self._state, columns, schema, num_shards, score_column)
        self._score_column = score_column

    def expand(self, fresh):
        parts, scores = [], []
        for name in sorted(k for k in fresh if k.startswith("docs")):
            step = beam.ParDo(self._fn).with_outputs("scores", main="parts")
            staged = fresh[name] | f"WriteParts[{name}]" >> step
            parts.append(staged["parts"])
            scores.append(staged["scores"])
        _ = fresh["ends"] | "NoteEnds" >> beam.Map(_note_end, self._state)
        for name in sorted(k for k in fresh if k.startswith("failed")):
            _ = fresh[name] | f"Note[{name}]" >> beam.Map(_note_failed, self._state)
        old = fresh["ends"].pipeline | "Finished" >> FinishedUnits(
            self._state, self._markers, self._score_column
        )
        scores += [] if old["scores"] is None else [old["scores"]]
        return {
            "parts": (*parts, old["parts"]) | "AllParts" >> beam.Flatten(),
            "scores": tuple(scores) | "AllScores" >> beam.Flatten(),
            "dead_letter": old["dead_letter"],
        }


# --- finished units fed back ------------------------------------------------------------------


def _unit_parts(marker: dict[str, Any], units_dir: str) -> list[tuple[int, str]]:
    unit_dir = os.path.join(units_dir, marker["unit"])
    return [(shard, os.path.join(unit_dir, name)) for shard, name in marker["parts"]]


def _finished_parts(marker: dict[str, Any], units_dir: str) -> list[tuple[int, str]]:
    """`_unit_parts`, the unit's documents counted as done (the progress bar's total holds them)."""
    documents_done(marker["rows"])
    return _unit_parts(marker, units_dir)


def _unit_dead_letters(marker: dict[str, Any], units_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(units_dir, marker["unit"], DEAD_LETTERS)
    with pa.memory_map(path) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


def _unit_scores(marker: dict[str, Any], units_dir: str, column: str) -> Iterator[tuple[str, Any]]:
    for _shard, path in _unit_parts(marker, units_dir):
        table = read_parts([path])
        if table is not None:
            yield from domain_scores(table.select([S.DOMAIN, S.DROP_REASON, column]), column)


class FinishedUnits(beam.PTransform):
    """Markers of finished units -> {"parts", "scores" (None without keep-top), "dead_letter"}."""

    def __init__(self, state: ResumeState, markers: list[dict[str, Any]], score_column: str | None):
        super().__init__()
        self._units_dir = str(state.units_dir)
        self._markers = markers
        self._score_column = score_column

    def expand(self, pipeline):
        units = pipeline | "Markers" >> beam.Create(self._markers, reshuffle=False)
        out = {
            "parts": units | "Parts" >> beam.FlatMap(_finished_parts, self._units_dir),
            "dead_letter": units | "DeadLetters" >> beam.FlatMap(_unit_dead_letters, self._units_dir),
            "scores": None,
        }
        if self._score_column is not None:
            column = self._score_column
            out["scores"] = units | "Scores" >> beam.FlatMap(_unit_scores, self._units_dir, column)
        return out


# --- the commit, one shard at a time -----------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _link(source: Path, target: str) -> None:
    """Hard-link `source` as `target` (the same inode: nothing rewritten), or copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@dataclasses.dataclass(frozen=True)
class ShardCommits:
    """Output shards of a `--resume` job, written into the resume directory and linked into the output.

    A shard's marker `<shard>.done` holds the digest of its inputs (`key`), the size and sha256 of
    each of its files, and its per-domain counts; a resumed run whose shard has the same key links
    the verified files into its output instead of sorting and writing them again."""

    directory: str

    @staticmethod
    def of(state: ResumeState) -> ShardCommits:
        (state.root / SHARDS_DIR).mkdir(exist_ok=True)
        return ShardCommits(str(state.root / SHARDS_DIR))

    @staticmethod
    def key(parts: Sequence[str], dead: Sequence[dict[str, Any]], cutoffs: Any) -> str:
        """Digest of what makes a shard: its part files (named uniquely when staged), its dead
        letters and the cut-offs."""
        cut = None if cutoffs is None else sorted(dict(cutoffs).items())
        what = [sorted(os.path.basename(p) for p in parts), list(dead), cut]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def _marker(self, shard: int) -> Path:
        return Path(self.directory) / f"{shard:05d}.done"

    def path(self, name: str) -> str:
        """Where to write the shard file `name` (a file left there by a killed run is removed first)."""
        path = Path(self.directory) / name
        path.unlink(missing_ok=True)  # a new inode: links made of the old file keep their bytes
        return str(path)

    def reuse(self, shard: int, key: str, out_dir: str) -> list[tuple[str, np.ndarray]] | None:
        """The shard's counts, its verified files linked into `out_dir`; None when it must be written."""
        try:
            done = json.loads(self._marker(shard).read_text())
        except (OSError, ValueError):
            return None
        files = [(Path(self.directory) / name, size, sha) for name, size, sha in done.get("files", [])]
        if done.get("key") != key or not all(
            p.is_file() and p.stat().st_size == size and _sha256(p) == sha for p, size, sha in files
        ):
            return None
        for path, _, _ in files:
            _link(path, os.path.join(out_dir, path.name))
        return [(domain, np.array(vec, np.int64)) for domain, vec in done["counts"]]

    def record(
        self, shard: int, key: str, names: Sequence[str], counts: Sequence[tuple[str, Any]], out_dir: str
    ) -> None:
        """Flush the shard's written files, write its marker atomically, link the files into `out_dir`."""
        paths = [Path(self.directory) / name for name in names]
        for path in [*paths, Path(self.directory)]:
            _fsync(str(path))
        marker = {
            "key": key,
            "files": [[p.name, p.stat().st_size, _sha256(p)] for p in paths],
            "counts": [[domain, [int(v) for v in vec]] for domain, vec in counts],
        }
        _write_atomically(self._marker(shard), json.dumps(marker) + "\n")
        for path in paths:
            _link(path, os.path.join(out_dir, path.name))
