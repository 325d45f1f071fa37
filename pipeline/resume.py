"""Resumable local score jobs (`datamixer score --resume`): finished input files are not scored again.

A unit of work is one input file of one domain. While the job runs, every scored batch of a unit
is staged as Arrow part files in the job's resume directory, `.NAME.resume/` beside the output
`NAME`, together with the unit's dead-letter rows. When the step has seen all of a unit's rows (the
reader sends each file's record count after its last batch), the parts are flushed to disk and a
marker `units/<unit>.done` (JSON: the file's size and mtime, the options digest, the part files)
is written atomically. A later run with `--resume` and the same options digest skips those files
and feeds their staged parts, scores and dead letters into the same cut-off combine and shard
writers as the files it scores now, so the output is byte-identical to an uninterrupted run.

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S
from pipeline.progress import documents_done
from pipeline.select import domain_scores
from pipeline.shards import PartWriters, read_parts
from pipeline.stages import conform

STATE_FILE = ".datamixer-resume"
FORMAT = 1
UNITS_DIR = "units"
DEAD_LETTERS = "dead_letter.arrow"


class ResumeRefused(ValueError):
    """`--resume` asked for where it cannot work (another runner, a remote output, a foreign dir)."""


def resume_path(target: str | os.PathLike[str]) -> Path:
    """The resume directory of an output: `.NAME.resume` beside it (absolute: workers write there)."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.resume"


def unit_id(domain: str, source: str) -> str:
    """Name of a (domain, file) unit inside the resume directory."""
    return hashlib.sha256(f"{domain}\x00{source}".encode("utf-8", "surrogatepass")).hexdigest()[:24]


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
    """The resume directory of one output, for one options digest."""

    root: Path
    digest: str
    run: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)  # keys this run's ledger

    @property
    def units_dir(self) -> Path:
        return self.root / UNITS_DIR

    def marker(self, domain: str, source: str) -> Path:
        return self.units_dir / f"{unit_id(domain, source)}.done"

    def finished(self, domain: str, source: str) -> dict[str, Any] | None:
        """The unit's marker when it is valid for this digest and the file is unchanged, else None."""
        try:
            done = json.loads(self.marker(domain, source).read_text())
            stamp = _file_stamp(source)
        except (OSError, ValueError, IndexError):
            return None
        unit_dir = self.units_dir / unit_id(domain, source)
        valid = (
            done.get("digest") == self.digest
            and [done.get("domain"), done.get("source")] == [domain, source]
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
    ours = (root / STATE_FILE).is_file() and not root.is_symlink()
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
        if stored != digest:
            shutil.rmtree(root)  # other options: nothing staged is valid
    root.mkdir(exist_ok=True)
    _write_atomically(root / STATE_FILE, json.dumps({"written_by": "datamixer", "digest": digest}) + "\n")
    (root / UNITS_DIR).mkdir(exist_ok=True)
    return ResumeState(root, digest)


def split_units(
    state: ResumeState, files: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(files still to score, markers of finished units); staged data of any other unit is removed."""
    todo: list[tuple[str, str]] = []
    done: list[dict[str, Any]] = []
    for domain, path in files:
        marker = state.finished(domain, path)
        if marker is None:
            todo.append((domain, path))
        else:
            done.append(marker)
    keep = {unit_id(m["domain"], m["source"]) for m in done}
    for entry in state.units_dir.iterdir():
        if entry.name.split(".", 1)[0] not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return todo, done


def resume_units(
    target: str | os.PathLike[str], config: Any, files: list[tuple[str, str]], tokenizer_json: str
) -> tuple[list[tuple[str, str]], tuple[ResumeState, list[dict[str, Any]]] | None]:
    """(files to score, (state, markers of finished units) or None) for a run of `config` (a
    `ScoreJobConfig` with `num_shards` resolved when it resumes) into the local output `target`."""
    digest = options_digest(config, tokenizer_json, config.num_shards) if config.resume else ""
    state = open_state(target, digest, config.resume)
    if state is None:
        return files, None
    todo, finished = split_units(state, files)
    return todo, (state, finished)


def forget_run(state: ResumeState) -> None:
    """Drop this run's ledger (units left incomplete in this process) once the pipeline is done."""
    with _LEDGER_LOCK:
        _LEDGERS.pop(state.run, None)


def remove_state(target: str | os.PathLike[str]) -> None:
    """Remove the resume directory after a committed output (only when it carries our marker)."""
    root = resume_path(target)
    if (root / STATE_FILE).is_file() and not root.is_symlink():
        shutil.rmtree(root)


# --- staging units during the job --------------------------------------------------------------
#
# A unit is complete when its rows have all been staged: the reader's end-of-file count (with the
# file's read dead letters) must equal the documents staged plus those the tokenizer or scorer
# dead-lettered. The three arrive at three steps of the same fused stage, so they meet in a ledger
# per worker process (a multi-input Flatten would end the fusion: the DirectRunner runs it as a
# separate stage after the whole read). Counts that never meet in one process (a runner that
# splits a file's rows) only mean that unit is scored again: a marker is never written early.


@dataclasses.dataclass
class _Unit:
    parts: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    dead: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rows: int = 0
    expected: int | None = None


_LEDGERS: dict[str, dict[tuple[str, str], _Unit]] = {}
_LEDGER_LOCK = threading.Lock()


def _note(
    state: ResumeState,
    key: tuple[str, str],
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


def _commit_unit(state: ResumeState, key: tuple[str, str], unit: _Unit) -> None:
    """Flush the unit's parts and dead letters to disk, then write its marker atomically."""
    domain, source = key
    unit_dir = state.units_dir / unit_id(domain, source)
    unit_dir.mkdir(parents=True, exist_ok=True)
    dead = unit_dir / DEAD_LETTERS
    with pa.OSFile(str(dead), "wb") as sink, pa.ipc.new_stream(sink, S.DEAD_LETTER_SCHEMA) as writer:
        writer.write_table(pa.Table.from_pylist(unit.dead, schema=S.DEAD_LETTER_SCHEMA))
    for path in [str(dead), *(p for _, p in unit.parts), str(unit_dir)]:
        _fsync(path)
    marker = {
        "domain": domain,
        "source": source,
        "stamp": _file_stamp(source),
        "digest": state.digest,
        "rows": unit.rows,
        "parts": [[shard, os.path.basename(path)] for shard, path in unit.parts],
    }
    _write_atomically(state.marker(domain, source), json.dumps(marker, sort_keys=True) + "\n")


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
        for key, rows in _by_unit(batch):
            writers = PartWriters(str(self._state.units_dir / unit_id(*key)), self._num_shards)
            writers.write(rows)
            parts = writers.close()
            yield from parts
            _note(self._state, key, parts=parts, rows=rows.num_rows)
        documents_done(batch.num_rows)
        if self._score_column is not None:
            for domain, scores in domain_scores(batch, self._score_column):
                yield beam.pvalue.TaggedOutput("scores", (domain, scores))


def _note_end(end: tuple[str, str, int, list[dict[str, Any]]], state: ResumeState) -> None:
    domain, source, rows, dead = end
    _note(state, (domain, source), dead=dead, expected=rows)


def _note_failed(row: dict[str, Any], state: ResumeState) -> None:
    _note(state, (row[S.DOMAIN], row[S.SOURCE]), dead=[row], rows=1)


def _by_unit(batch: pa.RecordBatch) -> Iterator[tuple[tuple[str, str], pa.RecordBatch]]:
    """The rows of each (domain, file) in a batch (one file per batch unless a step merged some)."""
    domains, sources = batch.column(S.DOMAIN), batch.column(S.SOURCE)
    pairs = sorted(set(zip(domains.to_pylist(), sources.to_pylist(), strict=True)))
    if len(pairs) == 1:
        yield pairs[0], batch
        return
    for domain, source in pairs:
        yield (domain, source), batch.filter(pc.and_(pc.equal(domains, domain), pc.equal(sources, source)))


class StageUnits(beam.PTransform):
    """{"docs_<i>": scored batches (and those a stage dropped), "ends": (domain, file, documents, read
    dead letters) per file read whole, "failed_<i>": tokenizer and scorer dead letters} of the files
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
    unit_dir = os.path.join(units_dir, unit_id(marker["domain"], marker["source"]))
    return [(shard, os.path.join(unit_dir, name)) for shard, name in marker["parts"]]


def _unit_dead_letters(marker: dict[str, Any], units_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(units_dir, unit_id(marker["domain"], marker["source"]), DEAD_LETTERS)
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
            "parts": units | "Parts" >> beam.FlatMap(_unit_parts, self._units_dir),
            "dead_letter": units | "DeadLetters" >> beam.FlatMap(_unit_dead_letters, self._units_dir),
            "scores": None,
        }
        if self._score_column is not None:
            column = self._score_column
            out["scores"] = units | "Scores" >> beam.FlatMap(_unit_scores, self._units_dir, column)
        return out
