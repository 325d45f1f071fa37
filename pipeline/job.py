"""The scoring job: read -> validate -> language ID -> heuristic filters -> tokenize -> score -> dedup
-> stage -> select -> write, as named PTransforms (language ID, filters, dedup and the scorer are
each optional).

Elements between steps are Arrow record batches of up to a few thousand documents, not single
documents: Beam's per-element cost (tens of microseconds) would otherwise exceed fastText's.
Read, tokenize, score and stage are consecutive ParDos, which runners fuse into one step: a batch
passes through them without being encoded. The stage step writes scored batches to part files
per output shard and sends on only file names and scores, so the text never goes through the
runner; the top-fraction cut-offs come from a combine over those scores, and one writer per shard
merges its parts in (domain, source, record) order, a row group at a time, and marks `keep`.
Output is therefore byte-identical for the same inputs on any runner, worker count or batch size
(see `pipeline.shards`).
Every record that cannot be read, tokenized or scored becomes a dead-letter row, so
`docs_in = docs_scored + docs_dead_letter` per domain. A document a stage drops stays in
`scored-*` with its `drop_reason` (language and filter drops are not scored); dedup sends only
band keys and the removed documents' (node, representative) pairs through the runner, and the
shard writers mark them, so `docs_scored = docs_kept + sum(docs_dropped_<stage>)`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows

from pipeline import schema as S
from pipeline.dedup import (
    BANDS_DIR,
    DedupOptions,
    FindDuplicates,
    mark_duplicates,
    read_removed,
    removed_scores,
)
from pipeline.direct_workers import direct_worker_count, direct_workers
from pipeline.domains import read_domains_yaml
from pipeline.filters import ApplyFilters
from pipeline.langid import IdentifyLanguage, LanguageOptions, check_model
from pipeline.progress import documents_done
from pipeline.read import (
    ReadOptions,
    dead_letter_row,
    expand_inputs,
    file_sizes,
    read_block,
    read_file,
    sample_texts,
)
from pipeline.registry import scoring_transform
from pipeline.resume import (
    ResumeState,
    ShardCommits,
    StageUnits,
    block_bytes,
    blocks_of,
    check_resumable,
    dealing_order,
    forget_run,
    remove_state,
    resume_units,
    trained_bpe,
    unit_counts,
    units_of,
)
from pipeline.scoring import ScorerConfig, failed_batch_rows
from pipeline.select import DomainCutoffs, Selection, domain_scores, mark_keep
from pipeline.shards import (
    DEDUP_PART_LEVEL,
    DEFAULT_NUM_SHARDS,
    PART_LEVEL,
    PARTS_DIR,
    PartWriters,
    all_exist,
    default_num_shards,
    merge_parts,
    read_counted_columns,
    remove_files,
    remove_parts,
    row_groups,
    shard_name,
    shard_of,
    sort_dead_letters,
    write_row_groups,
    write_shard,
)
from pipeline.stages import conform, pending
from pipeline.stats import (
    dead_letter_counts,
    read_stats,
    scored_counts,
    stats_table,
    totals,
    write_stats,
)
from pipeline.tokenize import (
    DEFAULT_VOCAB_SIZE,
    END_OF_TEXT,
    MIN_VOCAB_SIZE,
    TOKENIZER_FILE,
    TOKENIZER_OPTIONS_FILE,
    TokenCounter,
    read_tokenizer_json,
    train_byte_level_bpe,
)


@dataclass(frozen=True)
class ScoreJobConfig:
    """Everything the job needs; `inputs` maps a domain to its globs (or is a domains YAML path).

    `scorer` None: the job only runs the stages (no score column, no selection)."""

    inputs: dict[str, list[str]]  # or a domains YAML path (str or Path), read in __post_init__
    output: str
    scorer: ScorerConfig | None = None
    selection: Selection = field(default_factory=Selection)
    language: LanguageOptions | None = None
    filters: tuple[Any, ...] = ()
    dedup: DedupOptions | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    tokenizer: str | None = None
    with_text: bool = True
    vocab_size: int = DEFAULT_VOCAB_SIZE
    tokenizer_sample_chars: int = 2_000_000
    num_shards: int = 0  # 0: DEFAULT_NUM_SHARDS, or one per BYTES_PER_SHARD of input when that is more
    resume: bool = False  # local DirectRunner only: skip files a killed run finished (pipeline.resume)

    def __post_init__(self) -> None:
        if isinstance(self.inputs, (str, Path)):
            object.__setattr__(self, "inputs", read_domains_yaml(self.inputs))
        if self.language is not None:
            check_model(self.language.model)
        if self.selection.active and self.scorer is None:
            raise ValueError("--keep-top/--threshold select by score: give --scorer too")
        if not self.inputs:
            raise ValueError(
                "no inputs: give --input GLOB --domain NAME (repeatable) or --config domains.yaml"
            )
        if self.num_shards < 0:
            raise ValueError(f"--num-shards must be 0 (automatic) or a positive count; got {self.num_shards}")
        if self.tokenizer is None and self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"--vocab-size must be at least {MIN_VOCAB_SIZE} (the 256 bytes and {END_OF_TEXT}); "
                f"got {self.vocab_size}"
            )


# --- steps -------------------------------------------------------------------------------------


class _ReadFileFn(beam.DoFn):
    def __init__(self, opts: ReadOptions, ends: bool) -> None:
        self._opts = opts
        self._ends = ends

    def process(self, element: tuple[Any, ...]) -> Iterator[Any]:
        """(domain, file) or (domain, file, block): a file, or a block of it (`pipeline.resume`)."""
        domain, path = element[:2]
        block = element[2] if len(element) > 2 else None
        documents, dead_letters = 0, []
        batches = (
            read_file(domain, path, self._opts)
            if block is None
            else read_block(domain, path, self._opts, *block[1:])
        )
        for batch, dead in batches:
            if batch is not None:
                documents += batch.num_rows
                yield batch
            for row in dead:
                yield beam.pvalue.TaggedOutput("dead_letter", row)
            if self._ends:
                dead_letters += dead
        if self._ends:  # the unit is read whole: what it must stage (`pipeline.resume`)
            index = 0 if block is None else block[0]
            yield beam.pvalue.TaggedOutput("ends", (domain, path, index, documents, dead_letters))


def _unreadable_file(failure: tuple[tuple[Any, ...], tuple[Any, str, Any]]) -> dict[str, Any]:
    (domain, path, *_block), (_type, exc_repr, _trace) = failure
    return dead_letter_row(domain, path, None, "read", path, f"cannot read file: {exc_repr}")


class ReadDocuments(beam.PTransform):
    """(domain, file) pairs (or (domain, file, block) units) -> {"docs": record batches, "dead_letter":
    rows, "ends": (domain, file, block index, documents, read dead letters) once a unit is read whole,
    when `ends`}."""

    def __init__(self, opts: ReadOptions, ends: bool = False) -> None:
        super().__init__()
        self._opts = opts
        self._ends = ends

    def expand(self, files):
        result = (
            files
            | "Distribute" >> beam.Reshuffle()
            | "Parse"
            >> beam.ParDo(_ReadFileFn(self._opts, self._ends))
            .with_exception_handling(main_tag="docs", dead_letter_tag="failed", partial=True)
            .with_outputs("dead_letter", "ends", main="docs")
        )
        unreadable = result["failed"] | "UnreadableFiles" >> beam.Map(_unreadable_file)
        dead = (result["dead_letter"], unreadable) | "ReadDeadLetters" >> beam.Flatten()
        return {"docs": result["docs"], "dead_letter": dead, "ends": result["ends"]}


class _CountTokensFn(beam.DoFn):
    def __init__(self, tokenizer_json: str) -> None:
        self._counter = TokenCounter(tokenizer_json)

    def setup(self) -> None:
        self._counter.setup()

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        counts = self._counter.count(batch.column(S.TEXT))
        yield batch.append_column(S.N_TOKENS, pa.array(counts, pa.int64()))


class CountTokens(beam.PTransform):
    """Append `n_tokens` (batch-encoded with `tokenizers`) to every record batch."""

    def __init__(self, tokenizer_json: str) -> None:
        super().__init__()
        self._json = tokenizer_json

    def expand(self, docs):
        result = docs | "Encode" >> beam.ParDo(_CountTokensFn(self._json)).with_exception_handling(
            main_tag="docs", dead_letter_tag="failed"
        )
        dead = result["failed"] | "FailedDocs" >> beam.FlatMap(failed_batch_rows, "tokenize")
        return {"docs": result["docs"], "dead_letter": dead}


class _StageFn(beam.DoFn):
    """Scored batches -> part files, one per shard this bundle touches (emitted at the bundle's end),
    plus (domain, scores) for the cut-off combine. The text is written once here and read once by
    the shard writer instead of being encoded through the runner. `level`: the parts' zstd level."""

    def __init__(
        self,
        parts_dir: str,
        columns: list[str],
        schema: pa.Schema,
        num_shards: int,
        score_column: str | None,
        level: int = PART_LEVEL,
    ):
        self._parts_dir = parts_dir
        self._columns = columns
        self._schema = schema
        self._num_shards = num_shards
        self._score_column = score_column
        self._level = level
        self._writers: PartWriters | None = None

    def start_bundle(self) -> None:
        self._writers = PartWriters(self._parts_dir, self._num_shards, per_source=True, level=self._level)

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        batch = conform(batch, self._columns, self._schema)
        assert self._writers is not None  # opened in start_bundle
        self._writers.write(batch)
        documents_done(batch.num_rows)
        if self._score_column is not None:
            for domain, scores in domain_scores(batch, self._score_column):
                yield beam.pvalue.TaggedOutput("scores", (domain, scores))

    def finish_bundle(self) -> Iterator[Any]:
        assert self._writers is not None
        for shard, path in self._writers.close():
            yield GlobalWindows.windowed_value((shard, path))


class StageScored(beam.PTransform):
    """Scored batches -> {"parts": (shard, part file), "scores": (domain, scores array)}."""

    def __init__(
        self,
        parts_dir: str,
        columns: list[str],
        schema: pa.Schema,
        num_shards: int,
        score_column: str | None,
        level: int = PART_LEVEL,
    ):
        super().__init__()
        self._fn = _StageFn(parts_dir, columns, schema, num_shards, score_column, level)

    def expand(self, scored):
        result = scored | "WriteParts" >> beam.ParDo(self._fn).with_outputs("scores", main="parts")
        return {"parts": result["parts"], "scores": result["scores"]}


class _WriteShardFn(beam.DoFn):
    """One shard: its dead letters sorted into dead_letter-S-of-N.parquet, then its part files merged
    in order into scored-S-of-N.parquet (with `keep`); emits the shard's per-domain counts."""

    def __init__(
        self,
        out_dir: str,
        num_shards: int,
        scorer: str | None,
        selection: Selection,
        with_text: bool,
        commits: ShardCommits | None = None,
    ):
        self._out = out_dir
        self._n = num_shards
        self._commits = commits  # --resume: shards kept with the resume state, staged units too
        self._schema = S.scored_schema(_scorers(scorer), with_text=with_text)
        self._column = S.score_column(scorer) if scorer else None
        self._selection = selection

    def process(self, element, cutoffs=None) -> Iterator[tuple[int, list[tuple[str, Any]]]]:
        shard, values = element
        parts = sorted(v for kind, v in values if kind == "part")
        dead = sort_dead_letters([v for kind, v in values if kind == "dead"])
        duplicates = read_removed(v for kind, v in values if kind == "dup")
        counts: list[tuple[str, Any]] = [dead_letter_counts(row) for row in dead]
        names = [shard_name(prefix, shard, self._n) for prefix in (S.SCORED_PREFIX, S.DEAD_LETTER_PREFIX)]
        if self._commits is not None:
            key = self._commits.key(parts, dead, cutoffs)
            reused = self._commits.reuse(shard, key, self._out)
            if reused is not None:  # written and verified by a killed run: linked, not rewritten
                yield shard, reused
                return
            paths = [self._commits.path(name) for name in names]
        else:
            paths = [_join(self._out, name) for name in names]
        scored_path = paths[0]
        if not all_exist(parts):  # a retry: the first attempt wrote this shard, then removed its parts
            if not all_exist([scored_path]):
                raise RuntimeError(
                    f"shard {shard}: an earlier attempt removed part files as it merged them and did "
                    "not finish writing the shard; run the job again"
                )
            yield shard, counts + scored_counts(read_counted_columns(scored_path))
            return
        pa.default_memory_pool().release_unused()  # what scoring or the last shard freed, to the system
        write_shard(pa.Table.from_pylist(dead, schema=S.DEAD_LETTER_SCHEMA), paths[1], S.DEAD_LETTER_SCHEMA)
        # A local shard's parts go as the merge takes them, so the disk they took is free for the
        # shard itself; elsewhere they go once it is written (a retried shard finds them). With
        # --resume they stay with the resume state until the output is committed.
        early = self._commits is None and "://" not in scored_path
        by_domain: dict[str, Any] = {}

        def finish(group: pa.Table) -> pa.Table:
            group = mark_duplicates(group, duplicates)
            group = mark_keep(group, self._column, cutoffs, self._selection.threshold)
            for domain, vec in scored_counts(group):
                by_domain[domain] = by_domain[domain] + vec if domain in by_domain else vec
            return group

        groups = row_groups(merge_parts(parts, remove=early), S.TEXT in self._schema.names)
        write_row_groups(map(finish, groups), scored_path, self._schema)
        counts += list(by_domain.items())
        if self._commits is not None:
            self._commits.record(shard, key, names, counts, self._out)
        elif not early:
            remove_files(parts)  # committed: the disk they took is free for the next shards
        yield shard, counts


def _scorers(scorer: str | None) -> list[str]:
    return [scorer] if scorer else []


def _keyed_dead_letter(row: dict[str, Any], num_shards: int) -> tuple[int, tuple[str, Any]]:
    return shard_of(row[S.DOMAIN], row[S.SOURCE], row[S.RECORD], num_shards), ("dead", row)


def _removed_scores(removed: tuple[int, str]) -> list[tuple[str, tuple[str, np.ndarray]]]:
    """(domain, ("remove", scores)) for the cut-off combine: a duplicate is no candidate."""
    return [(domain, ("remove", scores)) for domain, scores in removed_scores(removed[1])]


class WriteOutputs(beam.PTransform):
    """scored-S-of-N.parquet, dead_letter-S-of-N.parquet (all N of each, even when empty) and
    domain_stats.parquet/.json into `out_dir`; takes {"parts": (shard, file), "dead_letter": rows,
    optionally "duplicates": (shard, file of removed documents)}."""

    def __init__(
        self,
        out_dir: str,
        scorer: str | None,
        domains: Sequence[str],
        selection: Selection,
        with_text: bool,
        num_shards: int = DEFAULT_NUM_SHARDS,
        cutoffs: beam.PCollection | None = None,
        commits: ShardCommits | None = None,
    ) -> None:
        super().__init__()
        self._cutoffs = cutoffs
        self._out = out_dir
        self._scorer = scorer
        self._domains = list(domains)
        self._selection = selection
        self._with_text = with_text
        self._num_shards = num_shards
        self._commits = commits

    def expand(self, outputs):
        n = self._num_shards
        side = beam.pvalue.AsDict(self._cutoffs) if self._cutoffs is not None else None
        parts = outputs["parts"] | "KeyParts" >> beam.MapTuple(lambda shard, path: (shard, ("part", path)))
        dead = outputs["dead_letter"] | "KeyDeadLetters" >> beam.Map(_keyed_dead_letter, n)
        gathered = [parts, dead]
        if "duplicates" in outputs:
            gathered.append(
                outputs["duplicates"] | "KeyDuplicates" >> beam.MapTuple(lambda s, f: (s, ("dup", f)))
            )
        written = (
            tuple(gathered)
            | "Gather" >> beam.Flatten()
            | "ByShard" >> beam.GroupByKey()
            | "WriteShards"
            >> beam.ParDo(
                _WriteShardFn(self._out, n, self._scorer, self._selection, self._with_text, self._commits),
                side,
            )
        )
        return (
            outputs["parts"].pipeline
            | "Once" >> beam.Create([None])
            | "Commit"
            >> beam.Map(
                _commit,
                beam.pvalue.AsList(written),
                side,
                self._out,
                n,
                self._domains,
                self._selection,
                self._scorer,
                self._with_text,
            )
        )


def _join(directory: str, name: str) -> str:
    """Path join for local and remote (gs://, s3://) outputs alike, without loading their filesystem."""
    return directory.rstrip("/") + "/" + name


def _commit(
    _,
    written,
    cutoffs,
    out_dir,
    num_shards,
    domains,
    selection: Selection,
    scorer: str | None,
    with_text: bool,
) -> int:
    """After every shard: empty files for shards that got no rows, domain stats, no part files left."""
    done = {shard for shard, _ in written}
    empty = {
        S.SCORED_PREFIX: S.scored_schema(_scorers(scorer), with_text=with_text),
        S.DEAD_LETTER_PREFIX: S.DEAD_LETTER_SCHEMA,
    }
    for shard in sorted(set(range(num_shards)) - done):
        for prefix, schema in empty.items():
            write_shard(schema.empty_table(), _join(out_dir, shard_name(prefix, shard, num_shards)), schema)
    if selection.threshold is not None:
        cutoffs = dict.fromkeys(domains, selection.threshold)
    counts = [c for _, shard_counts in written for c in shard_counts]
    write_stats(
        stats_table(counts, domains, cutoffs, scorer if selection.active and scorer else None), out_dir
    )
    remove_parts(_join(out_dir, PARTS_DIR))
    return len(done)


class _SplitDroppedFn(beam.DoFn):
    """Batches -> documents no stage dropped (main, to be scored) and the dropped ones ("dropped")."""

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        alive = pa.array(pending(batch))
        if batch.num_rows and pc.all(alive).as_py():
            yield batch
            return
        if pc.any(alive).as_py():
            yield batch.filter(alive)
        yield beam.pvalue.TaggedOutput("dropped", batch.filter(pc.invert(alive)))


def _stages(docs, config: ScoreJobConfig):
    """Language ID then filters (each when configured) over the read batches."""
    if config.language is not None:
        docs = docs | "Language" >> IdentifyLanguage(config.language)
    if config.filters:
        docs = docs | "Filters" >> ApplyFilters(config.filters)
    return docs


def _score(docs, config: ScoreJobConfig) -> tuple[list[Any], list[Any]]:
    """(all documents: survivors scored, and those a stage dropped, which are not scored; dead letters
    of the scorer). Two collections when stages drop documents: see `_rejoin`."""
    if config.scorer is None:
        return [docs], []
    if config.language is not None and config.language.languages or config.filters:
        split = docs | "SplitDropped" >> beam.ParDo(_SplitDroppedFn()).with_outputs("dropped", main="alive")
        scored = split["alive"] | f"Score[{config.scorer.name}]" >> scoring_transform(config.scorer)
        return [scored["scored"], split["dropped"]], [scored["dead_letter"]]
    scored = docs | f"Score[{config.scorer.name}]" >> scoring_transform(config.scorer)
    return [scored["scored"]], [scored["dead_letter"]]


def _rejoin(docs: list[Any]) -> Any:
    """One collection of all documents (a Flatten of two inputs is a stage boundary on the
    DirectRunner, so the resumable staging takes the two apart instead)."""
    return docs[0] if len(docs) == 1 else tuple(docs) | "Rejoin" >> beam.Flatten()


def job_num_shards(config: ScoreJobConfig, files: list[tuple[str, str]]) -> int:
    """`config.num_shards`, or the automatic count for the size of `files`."""
    if config.num_shards > 0:
        return config.num_shards
    return default_num_shards(sum(file_sizes([path for _, path in files]).values()))


def build_pipeline(
    pipeline: beam.Pipeline,
    config: ScoreJobConfig,
    files: Sequence[tuple[Any, ...]],
    tokenizer_json: str,
    out_dir: str,
    resume: tuple[ResumeState, list[dict[str, Any]]] | None = None,
) -> None:
    """Add the whole job to `pipeline` (nothing runs until `pipeline.run()`).

    With `resume` (the state and the markers of finished units; `config.num_shards` resolved),
    `files` are the units left to score, (domain, file, block or None), and the finished units join
    them before the cut-off."""
    sizes = file_sizes([f[1] for f in files])
    num_shards = job_num_shards(config, [f[:2] for f in files])

    # dealt round the workers in this order
    ordered = dealing_order(files, sizes, direct_worker_count(pipeline.options))
    read = (
        pipeline
        | "Files" >> beam.Create(ordered, reshuffle=False)
        | "Read" >> ReadDocuments(config.read, ends=resume is not None)
    )
    tokens = _stages(read["docs"], config) | "Tokenize" >> CountTokens(tokenizer_json)
    scored, score_dead = _score(tokens["docs"], config)
    scorer = config.scorer.name if config.scorer else None
    score_column = config.scorer.column if config.scorer else None
    schema = S.scored_schema(_scorers(scorer), with_text=config.with_text)
    columns = [c for c in [*schema.names, S.RECORD] if c not in (S.KEEP, S.DUPLICATE_OF)]
    keep_top = config.selection.keep_top is not None
    dead_letter = (read["dead_letter"], tokens["dead_letter"], *score_dead) | "DeadLetters" >> beam.Flatten()
    staging = (columns, schema.append(pa.field(S.RECORD, pa.int64())), num_shards)
    if resume is None:
        docs = _rejoin(scored)
        staged = docs | "Stage" >> StageScored(
            _join(out_dir, PARTS_DIR),
            *staging,
            score_column if keep_top else None,
            DEDUP_PART_LEVEL if config.dedup is not None else PART_LEVEL,  # beside the band rows
        )
    else:
        assert config.dedup is None, "--resume does not work with --dedup (check_resumable)"
        fresh = {"ends": read["ends"], "failed_tokenize": tokens["dead_letter"]}
        fresh.update({f"docs_{i}": docs for i, docs in enumerate(scored)})
        fresh.update({f"failed_score_{i}": dead for i, dead in enumerate(score_dead)})
        staged = fresh | "Stage" >> StageUnits(resume, *staging, score_column if keep_top else None)
        dead_letter = (dead_letter, staged["dead_letter"]) | "WithFinishedUnits" >> beam.Flatten()
    outputs: dict[str, Any] = {"parts": staged["parts"], "dead_letter": dead_letter}
    scores = staged["scores"]
    if config.dedup is not None:
        bands_dir = _join(out_dir, f"{PARTS_DIR}/{BANDS_DIR}")
        outputs["duplicates"] = docs | "Dedup" >> FindDuplicates(
            config.dedup, score_column, bands_dir, num_shards
        )
        if keep_top:
            removed = outputs["duplicates"] | "RemovedScores" >> beam.FlatMap(_removed_scores)
            scores = (scores, removed) | "CandidateScores" >> beam.Flatten()
    fraction = config.selection.keep_top
    cutoffs = (scores | "Select" >> DomainCutoffs(fraction)) if fraction is not None else None
    _ = outputs | "Write" >> WriteOutputs(
        out_dir,
        scorer,
        sorted(config.inputs),
        config.selection,
        config.with_text,
        num_shards,
        cutoffs=cutoffs,
        commits=None if resume is None else ShardCommits.of(resume[0]),
    )


# --- running -----------------------------------------------------------------------------------


def _tokenizer_options(config: ScoreJobConfig) -> dict[str, Any]:
    """What the trained BPE depends on besides the input: a saved one is reused only when these match."""
    return {
        "trained_on": "input sample",
        "vocab_size": config.vocab_size,
        "sample_chars_per_domain": config.tokenizer_sample_chars,
        "text_field": config.read.text_field,
        "max_chars": config.read.max_chars,
        "oversize": config.read.oversize,
    }


def _read_text(path: str) -> str | None:
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as fh:
        return fh.read().decode("utf-8")


def _write_text(path: str, text: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as fh:
        fh.write(text.encode("utf-8"))


def prepare_tokenizer(
    config: ScoreJobConfig,
    files: list[tuple[str, str]],
    out_dir: str,
    previous_output: str | None,
    resume_target: Path | None = None,
) -> str:
    """The tokenizer JSON for counting, also saved as `<out_dir>/tokenizer.json`.

    Order: --tokenizer; else the previous run's `<output>/tokenizer.json` when it was trained with the
    same options (TOKENIZER_OPTIONS_FILE), so counts stay comparable across re-runs; else a byte-level
    BPE trained on the valid documents of the input sample (bad records are dead-lettered by the job),
    kept in the resume directory of `resume_target` when given (`pipeline.resume.trained_bpe`)."""
    options: str | None = json.dumps(_tokenizer_options(config), indent=2, sort_keys=True) + "\n"
    previous = _read_text(_join(previous_output, TOKENIZER_OPTIONS_FILE)) if previous_output else None
    if config.tokenizer:
        text = read_tokenizer_json(config.tokenizer)
        options = None
    elif previous_output and previous == options:
        text = read_tokenizer_json(_join(previous_output, TOKENIZER_FILE))
    else:
        sample = sample_texts(files, config.read, config.tokenizer_sample_chars)
        if resume_target is not None:
            text = trained_bpe(sample, config.vocab_size, resume_target)
        else:
            text = train_byte_level_bpe(sample, vocab_size=config.vocab_size).to_str()
        if not sample:  # nothing valid to learn from: no reuse of this one
            options = None
    _write_text(_join(out_dir, TOKENIZER_FILE), text)
    if options is not None:
        _write_text(_join(out_dir, TOKENIZER_OPTIONS_FILE), options)
    return text


def _run(
    config: ScoreJobConfig,
    files: list[tuple[str, str]],
    input_bytes: int,
    options: Any,
    out_dir: str,
    previous_output: str | None,
    target: Path | None = None,
) -> tuple[pa.Table, dict[str, int]]:
    """Run the job into `out_dir`, reading `files` (`input_bytes` in all) by blocks
    (`pipeline.resume.blocks_of`): (domain stats, `pipeline.resume.unit_counts` with --resume).

    `target`, the local output, owns the resume state: kept and used with --resume, else cleared."""
    resume = None
    # The workers' zygote imports while the job cuts its files (a pass over each file that is cut)
    # and builds its graph.
    with direct_workers(options, preload=[__name__]):
        workers = direct_worker_count(options)
        blocks = blocks_of(files, block_bytes(input_bytes, workers), workers)
        units: list[tuple[Any, ...]] = units_of(files, blocks)
        resume_target = target if config.resume else None
        tokenizer_json = prepare_tokenizer(config, files, out_dir, previous_output, resume_target)
        if target is not None:
            if config.resume:  # the shard count of all files, not of those left
                config = replace(config, num_shards=job_num_shards(config, files))
            units, resume = resume_units(target, config, files, tokenizer_json, blocks)
        try:
            with beam.Pipeline(options=options) as pipeline:
                build_pipeline(pipeline, config, units, tokenizer_json, out_dir, resume)
        finally:
            if resume is not None:
                forget_run(resume[0])
    return read_stats(out_dir), {} if resume is None else unit_counts(units, resume[1])


def input_paths(inputs: dict[str, list[str]], files: list[tuple[str, str]]) -> list[str]:
    """Local paths the job reads: every matched file, and every input given without a wildcard (a
    directory named as an input counts whole)."""
    literal = [g for globs in inputs.values() for g in globs if not any(c in g for c in "*?[")]
    return [p for p in [*literal, *(path for _, path in files)] if "://" not in p]


def selection_warnings(config: ScoreJobConfig, table: pa.Table) -> list[str]:
    """Selections that keep nothing where there was something to keep, said in the user's words."""
    warnings = []
    if config.selection.keep_top == 0:
        warnings.append("--keep-top 0 keeps no document")
    for row in table.to_pylist():
        if config.selection.active and row[S.DOCS_SCORED] and not row[S.DOCS_KEPT]:
            how = (
                f"--threshold {config.selection.threshold}"
                if config.selection.threshold is not None
                else f"--keep-top {config.selection.keep_top}"
            )
            warnings.append(
                f"domain {row[S.DOMAIN]!r}: {how} kept none of its {row[S.DOCS_SCORED]} documents"
            )
    return warnings


def run_score_job(
    config: ScoreJobConfig, runner: str = "direct", beam_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the job and return the headline counts (and `warnings`, in the user's words).

    A local output directory is written beside itself and moved into place (replaced whole, only
    when datamixer wrote it; never an input; one job at a time: see `mixer.files.atomic_path`); a
    remote one (gs://, s3://) is written in place, each file committed by Beam's sink."""
    from mixer.files import OutputLocked, atomic_path, output_lock
    from pipeline.options import pipeline_options

    started = time.perf_counter()  # the job's time: finding and cutting its inputs too
    remote = "://" in config.output
    if config.resume:
        check_resumable(runner, config.output, config.dedup is not None)
    files = expand_inputs(config.inputs, exclude=None if remote else config.output)
    input_bytes = sum(file_sizes([path for _, path in files]).values())
    options = pipeline_options(runner, beam_args, input_bytes=input_bytes)
    if remote:
        table, units = _run(config, files, input_bytes, options, config.output, config.output)
    else:
        target = Path(config.output)
        with atomic_path(target, inputs=input_paths(config.inputs, files)) as tmp:
            tmp.mkdir(parents=True)
            previous = str(target) if target.is_dir() else None
            table, units = _run(config, files, input_bytes, options, str(tmp), previous, target)
        with contextlib.suppress(OutputLocked), output_lock(target):
            remove_state(target)  # committed: the staged units have served (unless a new job holds them)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = totals(table)
    result.update(
        output=config.output,
        seconds=round(seconds, 3),
        docs_per_s=round(result["in"] / seconds, 1) if seconds > 0 else None,
        domains={row[S.DOMAIN]: {k: v for k, v in row.items() if k != S.DOMAIN} for row in table.to_pylist()},
        warnings=selection_warnings(config, table),
        **units,
    )
    return result
