"""The scoring job: read -> validate -> tokenize -> score -> select -> write, as named PTransforms.

Elements between steps are Arrow record batches of up to a few thousand documents, not single
documents: Beam's per-element cost (tens of microseconds) would otherwise exceed fastText's.
Every record that cannot be read, tokenized or scored becomes a dead-letter row, so
`docs_in = docs_scored + docs_dead_letter` per domain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa

from pipeline import schema as S
from pipeline.read import ReadOptions, dead_letter_row, expand_inputs, read_file, sample_texts
from pipeline.registry import ScorerConfig, failed_batch_rows, scoring_transform
from pipeline.select import DomainCutoffs, Selection, mark_keep
from pipeline.stats import (
    SumArrays,
    dead_letter_counts,
    read_stats,
    scored_counts,
    stats_table,
    totals,
    write_stats,
)
from pipeline.tokenize import (
    DEFAULT_VOCAB_SIZE,
    TOKENIZER_FILE,
    TokenCounter,
    read_tokenizer_json,
    train_byte_level_bpe,
)


@dataclass(frozen=True)
class ScoreJobConfig:
    """Everything the job needs; `inputs` maps a domain to its globs."""

    inputs: dict[str, list[str]]
    output: str
    scorer: ScorerConfig
    selection: Selection = field(default_factory=Selection)
    read: ReadOptions = field(default_factory=ReadOptions)
    tokenizer: str | None = None
    with_text: bool = True
    vocab_size: int = DEFAULT_VOCAB_SIZE
    tokenizer_sample_chars: int = 2_000_000
    num_shards: int = 0

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError(
                "no inputs: give --input GLOB --domain NAME (repeatable) or --config domains.yaml"
            )


# --- steps -------------------------------------------------------------------------------------


class _ReadFileFn(beam.DoFn):
    def __init__(self, opts: ReadOptions) -> None:
        self._opts = opts

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        domain, path = element
        for batch, dead in read_file(domain, path, self._opts):
            if batch is not None:
                yield batch
            for row in dead:
                yield beam.pvalue.TaggedOutput("dead_letter", row)


def _unreadable_file(failure: tuple[tuple[str, str], tuple[Any, str, Any]]) -> dict[str, Any]:
    (domain, path), (_type, exc_repr, _trace) = failure
    return dead_letter_row(domain, path, None, "read", path, f"cannot read file: {exc_repr}")


class ReadDocuments(beam.PTransform):
    """(domain, file) pairs -> {"docs": record batches, "dead_letter": rows}."""

    def __init__(self, opts: ReadOptions) -> None:
        super().__init__()
        self._opts = opts

    def expand(self, files):
        result = (
            files
            | "Distribute" >> beam.Reshuffle()
            | "Parse"
            >> beam.ParDo(_ReadFileFn(self._opts))
            .with_exception_handling(main_tag="docs", dead_letter_tag="failed", partial=True)
            .with_outputs("dead_letter", main="docs")
        )
        unreadable = result["failed"] | "UnreadableFiles" >> beam.Map(_unreadable_file)
        dead = (result["dead_letter"], unreadable) | "ReadDeadLetters" >> beam.Flatten()
        return {"docs": result["docs"], "dead_letter": dead}


class _CountTokensFn(beam.DoFn):
    def __init__(self, tokenizer_json: str) -> None:
        self._counter = TokenCounter(tokenizer_json)

    def setup(self) -> None:
        self._counter.setup()

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        counts = self._counter.count(batch.column(S.TEXT).to_pylist())
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


class Select(beam.PTransform):
    """Append `keep`: top fraction per domain (cut-off from a combine over the job) or a threshold."""

    def __init__(self, column: str, selection: Selection, with_text: bool) -> None:
        super().__init__()
        self._column = column
        self._selection = selection
        self._with_text = with_text

    def expand(self, scored):
        cutoffs = None
        if self._selection.keep_top is not None:
            cutoffs = scored | "DomainCutoffs" >> DomainCutoffs(self._column, self._selection.keep_top)
        side = beam.pvalue.AsDict(cutoffs) if cutoffs is not None else None
        tables = scored | "MarkKeep" >> beam.Map(
            mark_keep, self._column, side, self._selection.threshold, self._with_text
        )
        return {"tables": tables, "cutoffs": cutoffs}


def _to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.select(schema.names).cast(schema)


class WriteOutputs(beam.PTransform):
    """scored-*.parquet, dead_letter-*.parquet, domain_stats.parquet/.json into `out_dir`."""

    def __init__(
        self,
        out_dir: str,
        scorer: str,
        domains: Sequence[str],
        selection: Selection,
        with_text: bool,
        num_shards: int = 0,
        cutoffs: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        self._cutoffs = cutoffs
        self._out = out_dir
        self._scorer = scorer
        self._domains = list(domains)
        self._selection = selection
        self._with_text = with_text
        self._num_shards = num_shards

    def expand(self, outputs):
        from apache_beam.io.parquetio import WriteToParquet, WriteToParquetBatched

        tables, dead, cutoffs = outputs["tables"], outputs["dead_letter"], self._cutoffs
        schema = S.scored_schema([self._scorer], with_text=self._with_text)
        _ = (
            tables
            | "ToScoredSchema" >> beam.Map(_to_schema, schema)
            | "WriteScored"
            >> WriteToParquetBatched(
                _join(self._out, S.SCORED_PREFIX),
                schema=schema,
                file_name_suffix=".parquet",
                num_shards=self._num_shards,
                codec="zstd",
            )
        )
        _ = dead | "WriteDeadLetters" >> WriteToParquet(
            _join(self._out, S.DEAD_LETTER_PREFIX),
            schema=S.DEAD_LETTER_SCHEMA,
            file_name_suffix=".parquet",
            num_shards=self._num_shards,
            codec="zstd",
        )
        counts = (
            (
                tables | "CountScored" >> beam.FlatMap(scored_counts),
                dead | "CountDeadLetters" >> beam.Map(dead_letter_counts),
            )
            | "AllCounts" >> beam.Flatten()
            | "SumPerDomain" >> beam.CombinePerKey(SumArrays())
            | "Collect" >> beam.combiners.ToList()
        )
        side = beam.pvalue.AsDict(cutoffs) if cutoffs is not None else None
        scorer = self._scorer if self._selection.active else None
        threshold = self._selection.threshold
        domains, out = self._domains, self._out
        return counts | "WriteDomainStats" >> beam.Map(
            _write_domain_stats, domains, side, threshold, scorer, out
        )


def _join(directory: str, name: str) -> str:
    """Path join for local and remote (gs://, s3://) outputs alike, without loading their filesystem."""
    return directory.rstrip("/") + "/" + name


def _write_domain_stats(counts, domains, cutoffs, threshold, scorer, out_dir) -> int:
    if threshold is not None:
        cutoffs = dict.fromkeys(domains, threshold)
    write_stats(stats_table(counts, domains, cutoffs, scorer), out_dir)
    return len(counts)


def build_pipeline(
    pipeline: beam.Pipeline,
    config: ScoreJobConfig,
    files: list[tuple[str, str]],
    tokenizer_json: str,
    out_dir: str,
) -> None:
    """Add the whole job to `pipeline` (nothing runs until `pipeline.run()`)."""
    read = pipeline | "Files" >> beam.Create(files) | "Read" >> ReadDocuments(config.read)
    tokens = read["docs"] | "Tokenize" >> CountTokens(tokenizer_json)
    scored = tokens["docs"] | f"Score[{config.scorer.name}]" >> scoring_transform(config.scorer)
    selected = scored["scored"] | "Select" >> Select(config.scorer.column, config.selection, config.with_text)
    dead = (
        read["dead_letter"],
        tokens["dead_letter"],
        scored["dead_letter"],
    ) | "DeadLetters" >> beam.Flatten()
    domains = sorted(config.inputs)
    _ = {"tables": selected["tables"], "dead_letter": dead} | "Write" >> WriteOutputs(
        out_dir,
        config.scorer.name,
        domains,
        config.selection,
        config.with_text,
        config.num_shards,
        cutoffs=selected["cutoffs"],
    )


# --- running -----------------------------------------------------------------------------------


def prepare_tokenizer(
    config: ScoreJobConfig, files: list[tuple[str, str]], out_dir: str, previous_output: str | None
) -> str:
    """The tokenizer JSON for counting, also saved as `<out_dir>/tokenizer.json`.

    Order: --tokenizer; else the previous run's `<output>/tokenizer.json` (trained once, so counts
    stay comparable across re-runs); else a byte-level BPE trained on the input sample."""
    from apache_beam.io.filesystems import FileSystems

    previous = _join(previous_output, TOKENIZER_FILE) if previous_output else None
    if config.tokenizer:
        text = read_tokenizer_json(config.tokenizer)
    elif previous is not None and FileSystems.exists(previous):
        text = read_tokenizer_json(previous)
    else:
        sample = sample_texts(files, config.read, config.tokenizer_sample_chars)
        text = train_byte_level_bpe(sample, vocab_size=config.vocab_size).to_str()
    with FileSystems.create(_join(out_dir, TOKENIZER_FILE)) as fh:
        fh.write(text.encode("utf-8"))
    return text


def _run(
    config: ScoreJobConfig,
    files: list[tuple[str, str]],
    options: Any,
    out_dir: str,
    previous_output: str | None,
) -> pa.Table:
    tokenizer_json = prepare_tokenizer(config, files, out_dir, previous_output)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, config, files, tokenizer_json, out_dir)
    return read_stats(out_dir)


def run_score_job(
    config: ScoreJobConfig, runner: str = "direct", beam_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the job and return the headline counts.

    A local output directory is written beside itself and renamed into place (replaced whole);
    a remote one (gs://, s3://) is written in place, each file committed by Beam's sink."""
    from mixer.files import atomic_path
    from pipeline.options import pipeline_options

    files = expand_inputs(config.inputs)
    options = pipeline_options(runner, beam_args)
    started = time.perf_counter()
    if "://" in config.output:
        table = _run(config, files, options, config.output, config.output)
    else:
        target = Path(config.output)
        with atomic_path(target) as tmp:
            tmp.mkdir(parents=True)
            table = _run(config, files, options, str(tmp), str(target) if target.is_dir() else None)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = totals(table)
    result.update(
        output=config.output,
        seconds=round(seconds, 3),
        docs_per_s=round(result["in"] / seconds, 1) if seconds > 0 else None,
        domains={row[S.DOMAIN]: {k: v for k, v in row.items() if k != S.DOMAIN} for row in table.to_pylist()},
    )
    return result
