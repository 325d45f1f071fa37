"""The scorer contract: what a scoring PTransform takes and returns, and the helpers every scorer uses.

A scoring PTransform takes a PCollection of `pa.RecordBatch` documents (columns `id`, `domain`,
`source`, `record`, `n_chars`, `text`, `n_tokens`) and returns a dict with
  - "scored": the same batches with one float64 column `score_<name>` appended, and
  - "dead_letter": dead-letter row dicts (`pipeline.read.dead_letter_row`) for every document
    that could not be scored, so that documents in = scored + dead-lettered.

A scorer with a small `setup()` / `score_batch(texts) -> np.ndarray` class needs only
`ScoreBatches(factory, name)` (`texts` is a list of str, or the Arrow string column itself when the
class sets `accepts_arrow = True`); a torch scorer instead runs RunInference with a
`scorers.handler.TextColumnModelHandler`. Either way, Beam's failed elements become dead-letter rows
through `failed_batch_rows`. The catalog of scorers by name is `pipeline.registry`.
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


def failed_batch_rows(failure: tuple[Any, tuple[Any, str, Any]], stage: str) -> list[dict[str, Any]]:
    """Dead-letter rows for one failed element of Beam's `with_exception_handling`.

    The failure is `(element, (exception type, exception repr, traceback))`; the element is a record
    batch (ParDo) or a list of record batches (RunInference's batch). The error text is
    `"<stage> failed: <repr>"`: the repr, never the traceback.
    """
    element, (_exc_type, exc_repr, _trace) = failure
    batches = element if isinstance(element, (list, tuple)) else [element]
    error = f"{stage} failed: {exc_repr}"
    return [row for batch in batches for row in batch_failure_rows(batch, stage, error)]


class _ScoreBatchFn(beam.DoFn):
    def __init__(self, factory: Callable[[], BatchScorer], column: str) -> None:
        self._factory = factory
        self._column = column
        self._scorer: BatchScorer | None = None

    def setup(self) -> None:
        self._scorer = self._factory()
        self._scorer.setup()

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        if self._scorer is None:
            raise RuntimeError("the scorer was not set up (DoFn.setup did not run)")
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
