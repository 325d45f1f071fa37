"""The PreSelect labelling job: read -> each model's bits per character -> strength -> labels -> write.

Elements between steps are Arrow record batches of documents. The loss pass is one RunInference per
model, chained, each appending its `bpc_<model>` column (so there is no join by id, and duplicate
ids cannot mis-join). The label cut-offs come from one global combine over the documents' keys
(strength, loss-score correlation, id hash: a total order), so the top and bottom fractions have
exact sizes. The outputs are small (a sample, its strengths and the labelled share), so each is
gathered and written as one sorted file, byte-identical across runs and runners:

- `strengths.parquet`: id, source_file, n_chars, bpc_<model>..., strength, loss_score_r, label
- `positives.jsonl` / `negatives.jsonl`: {id, label, strength, loss_score_r, source_file, text}, the input
  of `datamixer fasttext train --positive ... --negative ...`
- `dead_letter.parquet`: every record that could not be read or scored, with the reason
- `preselect.json`: models, scores, settings and the headline counts
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import schema as S
from pipeline.job import ReadDocuments
from pipeline.read import ReadOptions, expand_inputs
from pipeline.schema import BPC_PREFIX, CORRELATION, LABEL, STRENGTH, STRENGTHS_FILE, TIEBREAK
from pipeline.scoring import batch_failure_rows, failed_batch_rows
from scorers import preselect as P

# Files of this job; its columns are named in pipeline/schema.py.
POSITIVES_FILE = "positives.jsonl"
NEGATIVES_FILE = "negatives.jsonl"
DEAD_LETTER_FILE = "dead_letter.parquet"
MANIFEST_FILE = "preselect.json"
INPUT_DOMAIN = "input"


@dataclass(frozen=True)
class PreselectConfig:
    """Inputs (globs), models with one benchmark score each (higher is better), and the output."""

    inputs: list[str]
    models: list[str]
    scores: list[float]
    output: str
    top: float = 0.1
    seed: int = 0
    read: ReadOptions = field(default_factory=lambda: ReadOptions(batch_size=1024))
    device: str | None = None
    dtype: str | None = None
    max_tokens: int | None = None
    batch_tokens: int = 16384
    max_batch_tokens: int = 131072
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("no inputs: give --input GLOB (repeatable)")
        P.check_models_and_scores(self.models, self.scores)
        P.labels_per_class(0, self.top)

    @property
    def names(self) -> list[str]:
        return P.column_names(self.models)

    @property
    def bpc_columns(self) -> list[str]:
        return [BPC_PREFIX + n for n in self.names]


def strengths_schema(bpc_columns: Sequence[str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field(S.ID, pa.string(), nullable=False),
            pa.field(S.SOURCE, pa.string()),
            pa.field(S.N_CHARS, pa.int64(), nullable=False),
        ]
        + [pa.field(c, pa.float64()) for c in bpc_columns]
        + [
            pa.field(STRENGTH, pa.float64()),
            pa.field(CORRELATION, pa.float64()),
            pa.field(LABEL, pa.string()),
        ]
    )


# --- steps ---------------------------------------------------------------------------------------


class BitsPerChar(beam.PTransform):
    """Record batches -> the same with `column` (one model's bits per character), plus dead letters."""

    def __init__(self, handler: Any, stage: str) -> None:
        super().__init__()
        self._handler = handler
        self._stage = stage

    def expand(self, batches):
        from apache_beam.ml.inference.base import RunInference

        main, other = batches | "RunInference" >> RunInference(self._handler).with_exception_handling()
        dead = other.failed_inferences | "FailedDocs" >> beam.FlatMap(failed_batch_rows, self._stage)
        return {"docs": main, "dead_letter": dead}


def add_strength(
    batch: pa.RecordBatch, bpc_columns: Sequence[str], scores: Sequence[float], seed: int
) -> Iterator[Any]:
    """Append strength, loss-score correlation and id hash; a document any model could not score
    (NaN bits per character) becomes a dead-letter row instead."""
    if batch.num_rows == 0:
        return
    bpc = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in bpc_columns])
    bad = np.isnan(bpc).any(axis=1)
    if bad.any():
        names = [c.removeprefix(BPC_PREFIX) for c in bpc_columns]
        for i in np.flatnonzero(bad):
            which = [n for n, v in zip(names, bpc[i], strict=True) if np.isnan(v)]
            row = batch_failure_rows(
                batch.slice(int(i), 1), "strength", f"model(s) {which} predicted no token of this document"
            )[0]
            yield beam.pvalue.TaggedOutput("dead_letter", row)
        keep = pa.array(~bad)
        batch, bpc = batch.filter(keep), bpc[~bad]
        if batch.num_rows == 0:
            return
    strength = P.predictive_strength(bpc, scores)
    corr = P.loss_score_correlation(bpc, scores)
    tiebreak = P.tiebreak_keys(batch.column(S.ID).to_pylist(), seed)
    yield (
        batch.append_column(STRENGTH, pa.array(strength, pa.float64()))
        .append_column(CORRELATION, pa.array(corr, pa.float64()))
        .append_column(TIEBREAK, pa.array(tiebreak, pa.int64()))
    )


def _keys(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(batch.column(c).to_numpy(zero_copy_only=False) for c in (STRENGTH, CORRELATION, TIEBREAK))


class LabelCutFn(beam.CombineFn):
    """Exact cut-offs over all documents: accumulates 24 bytes of keys per document."""

    def __init__(self, top: float) -> None:
        self.top = top

    def create_accumulator(self) -> list[tuple[np.ndarray, ...]]:
        return []

    def add_input(self, acc, keys):
        acc.append(keys)
        return acc

    def merge_accumulators(self, accs):
        return [k for acc in accs for k in acc]

    def extract_output(self, acc) -> P.LabelCut:
        if not acc:
            return P.label_cut(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), self.top)
        strength, corr, tiebreak = (np.concatenate([k[i] for k in acc]) for i in range(3))
        return P.label_cut(strength, corr, tiebreak, self.top)


def mark_labels(batch: pa.RecordBatch, cut: P.LabelCut) -> pa.RecordBatch:
    return batch.append_column(LABEL, pa.array(P.assign_labels(*_keys(batch), cut), pa.string()))


def strengths_table(batch: pa.RecordBatch, bpc_columns: Sequence[str]) -> pa.Table:
    schema = strengths_schema(bpc_columns)
    return pa.Table.from_batches([batch]).select(schema.names).cast(schema)


LABELLED_COLUMNS = (S.ID, LABEL, STRENGTH, CORRELATION, S.SOURCE, S.TEXT, TIEBREAK)


def labelled_table(batch: pa.RecordBatch) -> pa.Table:
    table = pa.Table.from_batches([batch]).select(list(LABELLED_COLUMNS))
    return table.filter(pc.is_valid(table.column(LABEL)))


# --- writing -------------------------------------------------------------------------------------


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _write_bytes(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as fh:
        fh.write(data)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()


def write_strengths(tables: list[pa.Table], bpc_columns: Sequence[str], out_dir: str) -> int:
    """One Parquet file sorted by id (then source), so re-runs give the same bytes."""
    schema = strengths_schema(bpc_columns)
    table = _concat(tables, schema).sort_by([(S.ID, "ascending"), (S.SOURCE, "ascending")])
    _write_bytes(_join(out_dir, STRENGTHS_FILE), _parquet_bytes(table))
    return table.num_rows


def _jsonl(table: pa.Table) -> bytes:
    out = io.StringIO()
    for row in table.drop_columns([TIEBREAK]).to_pylist():
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out.getvalue().encode("utf-8")


def write_labels(tables: list[pa.Table], out_dir: str) -> dict[str, int]:
    """positives.jsonl (strongest first) and negatives.jsonl (weakest first)."""
    fields = [pa.field(c, pa.string()) for c in (S.ID, LABEL)] + [
        pa.field(STRENGTH, pa.float64()),
        pa.field(CORRELATION, pa.float64()),
        pa.field(S.SOURCE, pa.string()),
        pa.field(S.TEXT, pa.string()),
        pa.field(TIEBREAK, pa.int64()),
    ]
    table = _concat(tables, pa.schema(fields))
    counts = {}
    for label, name, descending in ((P.HQ_LABEL, POSITIVES_FILE, True), (P.LQ_LABEL, NEGATIVES_FILE, False)):
        part = table.filter(pc.equal(table.column(LABEL), label))
        order = "descending" if descending else "ascending"
        part = part.sort_by([(STRENGTH, order), (CORRELATION, order), (TIEBREAK, order)])
        _write_bytes(_join(out_dir, name), _jsonl(part))
        counts[label] = part.num_rows
    return counts


def _dead_key(row: dict[str, Any]) -> tuple:
    return tuple(
        (v is None, v if v is not None else "")
        for v in (row[S.SOURCE], row[S.RECORD], row[S.ID], row[S.STAGE], row[S.ERROR])
    )


def write_dead_letters(rows: list[dict[str, Any]], out_dir: str) -> int:
    table = pa.Table.from_pylist(sorted(rows, key=_dead_key), schema=S.DEAD_LETTER_SCHEMA)
    _write_bytes(_join(out_dir, DEAD_LETTER_FILE), _parquet_bytes(table))
    return table.num_rows


# --- the job -------------------------------------------------------------------------------------


def handlers(config: PreselectConfig) -> list[Any]:
    """One RunInference model handler per model, in the order of `config.models`."""
    from scorers.preselect_handler import BitsPerCharModelHandler

    return [
        BitsPerCharModelHandler(
            model,
            column,
            device=config.device,
            dtype=config.dtype,
            max_tokens=config.max_tokens,
            batch_tokens=config.batch_tokens,
            max_batch_tokens=config.max_batch_tokens,
            threads=config.threads,
        )
        for model, column in zip(config.models, config.bpc_columns, strict=True)
    ]


def build_pipeline(
    pipeline: beam.Pipeline, config: PreselectConfig, files: list[tuple[str, str]], out_dir: str
) -> None:
    """Add the whole job to `pipeline` (nothing runs until `pipeline.run()`)."""
    read = pipeline | "Files" >> beam.Create(files) | "Read" >> ReadDocuments(config.read)
    docs, dead = read["docs"], [read["dead_letter"]]
    for name, handler in zip(config.names, handlers(config), strict=True):
        scored = docs | f"Loss[{name}]" >> BitsPerChar(handler, f"loss_{name}")
        docs = scored["docs"]
        dead.append(scored["dead_letter"])
    strengths = docs | "Strength" >> beam.FlatMap(
        add_strength, config.bpc_columns, list(config.scores), config.seed
    ).with_outputs("dead_letter", main="docs")
    dead.append(strengths["dead_letter"])
    docs = strengths["docs"]
    cut = docs | "Keys" >> beam.Map(_keys) | "LabelCut" >> beam.CombineGlobally(LabelCutFn(config.top))
    marked = docs | "MarkLabels" >> beam.Map(mark_labels, beam.pvalue.AsSingleton(cut))
    _ = (
        marked
        | "StrengthRows" >> beam.Map(strengths_table, config.bpc_columns)
        | "GatherStrengths" >> beam.combiners.ToList()
        | "WriteStrengths" >> beam.Map(write_strengths, config.bpc_columns, out_dir)
    )
    _ = (
        marked
        | "LabelledRows" >> beam.Map(labelled_table)
        | "GatherLabelled" >> beam.combiners.ToList()
        | "WriteLabels" >> beam.Map(write_labels, out_dir)
    )
    _ = (
        tuple(dead)
        | "DeadLetters" >> beam.Flatten()
        | "GatherDeadLetters" >> beam.combiners.ToList()
        | "WriteDeadLetters" >> beam.Map(write_dead_letters, out_dir)
    )


def summarise(config: PreselectConfig, out_dir: str) -> dict[str, Any]:
    """Headline figures, read back from the written files."""
    from apache_beam.io.filesystems import FileSystems

    def table(name: str) -> pa.Table:
        with FileSystems.open(_join(out_dir, name)) as fh:
            return pq.read_table(pa.BufferReader(fh.read()))  # no Python file: see read_stats

    strengths = table(STRENGTHS_FILE)
    dead = table(DEAD_LETTER_FILE)
    labels = strengths.column(LABEL).to_pylist()
    values = strengths.column(STRENGTH).to_numpy(zero_copy_only=False)
    models = []
    for name, path, score, column in zip(
        config.names, config.models, config.scores, config.bpc_columns, strict=True
    ):
        bpc = strengths.column(column).to_numpy(zero_copy_only=False)
        models.append(
            {
                "name": name,
                "model": path,
                "score": float(score),
                "mean_bpc": float(bpc.mean()) if bpc.size else None,
            }
        )
    return {
        "documents": strengths.num_rows,
        "positives": labels.count(P.HQ_LABEL),
        "negatives": labels.count(P.LQ_LABEL),
        "dead_letter": dead.num_rows,
        "top": config.top,
        "seed": config.seed,
        "models": models,
        "strength_mean": float(values.mean()) if values.size else None,
        "strength_perfect": float((values == 1.0).mean()) if values.size else None,
        "positive_min_strength": float(values[np.array([x == P.HQ_LABEL for x in labels], bool)].min())
        if P.HQ_LABEL in labels
        else None,
        "negative_max_strength": float(values[np.array([x == P.LQ_LABEL for x in labels], bool)].max())
        if P.LQ_LABEL in labels
        else None,
    }


def _run(config: PreselectConfig, files: list[tuple[str, str]], options: Any, out_dir: str) -> dict[str, Any]:
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, config, files, out_dir)
    result = summarise(config, out_dir)
    manifest = {**result, "inputs": list(config.inputs), "files": len(files)}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _write_bytes(_join(out_dir, MANIFEST_FILE), text.encode("utf-8"))
    return result


def check_models(models: Sequence[str]) -> None:
    """Fail at submission, not on every worker: each local model must be a Hugging Face directory."""
    for model in models:
        if "://" in model:
            raise ValueError(f"{model}: models are loaded from local (or mounted) directories only")
        if not (Path(model) / "config.json").is_file():
            raise FileNotFoundError(f"{model}: not a Hugging Face model directory (no config.json)")


def run_preselect_job(
    config: PreselectConfig, runner: str = "direct", beam_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the job and return its headline counts (also written to `preselect.json`).

    A local output directory is written beside itself and renamed into place (replaced whole);
    a remote one (gs://, s3://) is written in place."""
    from mixer.files import atomic_path
    from pipeline.job import input_paths
    from pipeline.options import bind_direct_workers_to_job, pipeline_options

    remote = "://" in config.output
    inputs = {INPUT_DOMAIN: list(config.inputs)}
    files = expand_inputs(inputs, exclude=None if remote else config.output)
    check_models(config.models)
    options = pipeline_options(runner, beam_args)
    bind_direct_workers_to_job()
    started = time.perf_counter()
    if remote:
        result = _run(config, files, options, config.output)
    else:
        with atomic_path(Path(config.output), inputs=input_paths(inputs, files)) as tmp:
            tmp.mkdir(parents=True)
            result = _run(config, files, options, str(tmp))
    seconds = time.perf_counter() - started
    result.update(
        output=config.output,
        seconds=round(seconds, 3),
        docs_per_s=round(result["documents"] / seconds, 2) if seconds > 0 else None,
    )
    return result
