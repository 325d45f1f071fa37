"""Scorer registry: a scorer name -> a function building its scoring PTransform from options.

Contract of a scoring PTransform: it takes a PCollection of `pa.RecordBatch` documents (columns
`id`, `domain`, `source`, `record`, `n_chars`, `text`, `n_tokens`) and returns a dict with
  - "scored": the same batches with one float64 column `score_<name>` appended, and
  - "dead_letter": dead-letter row dicts (`pipeline.read.dead_letter_row`) for every document
    that could not be scored, so that documents in = scored + dead-lettered.

A scorer with a small `setup()` / `score_batch(texts) -> np.ndarray` class needs only
`ScoreBatches(factory, name)` (`texts` is a list of str, or the Arrow string column itself when the
class sets `accepts_arrow = True`); a torch scorer can instead return RunInference with a
ModelHandler whose `run_inference` takes the record batches. Adding a scorer is one entry:

    SCORERS["attention-influence"] = build_attention_influence   # (ScorerConfig) -> PTransform
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline import schema as S
from pipeline.read import dead_letter_row


class BatchScorer(Protocol):
    def setup(self) -> Any: ...

    def score_batch(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class ScorerConfig:
    """Which scorer to run and its options; `options` holds scorer-specific ones (e.g. heads)."""

    name: str
    model: str | None = None
    label: str = "__label__hq"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def column(self) -> str:
        return S.score_column(self.name)


def batch_failure_rows(batch: pa.RecordBatch, stage: str, error: str) -> list[dict[str, Any]]:
    """Dead-letter rows for every document of a batch whose step raised."""
    cols = {name: batch.column(name).to_pylist() for name in (S.ID, S.DOMAIN, S.SOURCE, S.TEXT)}
    names = batch.schema.names
    records = batch.column(S.RECORD).to_pylist() if S.RECORD in names else [None] * batch.num_rows
    return [
        dead_letter_row(
            cols[S.DOMAIN][i], cols[S.SOURCE][i], records[i], stage, cols[S.TEXT][i], error, cols[S.ID][i]
        )
        for i in range(batch.num_rows)
    ]


def failed_batch_rows(
    failure: tuple[pa.RecordBatch, tuple[Any, str, Any]], stage: str
) -> list[dict[str, Any]]:
    """Turn one `with_exception_handling` dead-letter element into per-document rows."""
    batch, (_exc_type, exc_repr, _trace) = failure
    return batch_failure_rows(batch, stage, f"{stage} failed: {exc_repr}")


class _ScoreBatchFn(beam.DoFn):
    def __init__(self, factory: Callable[[], BatchScorer], column: str) -> None:
        self._factory = factory
        self._column = column
        self._scorer: BatchScorer | None = None

    def setup(self) -> None:
        self._scorer = self._factory()
        self._scorer.setup()

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        assert self._scorer is not None  # built in setup
        texts = batch.column(S.TEXT)
        if not getattr(self._scorer, "accepts_arrow", False):
            texts = texts.to_pylist()
        scores = np.asarray(self._scorer.score_batch(texts), dtype=np.float64)
        if scores.shape != (batch.num_rows,):
            raise ValueError(f"scorer returned {scores.shape} scores for {batch.num_rows} documents")
        yield batch.append_column(self._column, pa.array(scores, pa.float64()))


class ScoreBatches(beam.PTransform):
    """Score record batches with a `setup`/`score_batch` scorer built once per worker."""

    def __init__(self, factory: Callable[[], BatchScorer], name: str) -> None:
        super().__init__()
        self._factory = factory
        self._name = name

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        stage = f"score_{self._name}"
        result = batches | "Predict" >> beam.ParDo(
            _ScoreBatchFn(self._factory, S.score_column(self._name))
        ).with_exception_handling(main_tag="scored", dead_letter_tag="failed")
        dead = result["failed"] | "FailedDocs" >> beam.FlatMap(failed_batch_rows, stage)
        return {"scored": result["scored"], "dead_letter": dead}


def build_fasttext(config: ScorerConfig) -> beam.PTransform:
    """fastText quality classifier: probability of `config.label`, clamped to [0, 1]."""
    from scorers.fasttext import FastTextScorer

    if not config.model:
        raise ValueError("the fasttext scorer needs --model PATH (a fastText .bin)")
    FastTextScorer(config.model, config.label).setup()  # fail at submission, not on every worker
    model, label = config.model, config.label
    return ScoreBatches(lambda: FastTextScorer(model, label), config.name)


def build_attention_influence(config: ScorerConfig) -> beam.PTransform:
    """AttentionInfluence through RunInference (torch is imported only when the job runs)."""
    from pipeline.attention_influence import ScoreWithAttentionInfluence

    return ScoreWithAttentionInfluence(config)


SCORERS: dict[str, Callable[[ScorerConfig], beam.PTransform]] = {
    "fasttext": build_fasttext,
    "attention-influence": build_attention_influence,
}


def scoring_transform(config: ScorerConfig) -> beam.PTransform:
    """The scoring PTransform of a registered scorer; an unknown name lists the known ones."""
    try:
        builder = SCORERS[config.name]
    except KeyError:
        raise ValueError(f"unknown scorer {config.name!r}; known scorers: {sorted(SCORERS)}") from None
    return builder(config)
