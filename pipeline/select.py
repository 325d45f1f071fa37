"""Selection: keep the top fraction of each domain (cut-off from a global combine) or a threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S


@dataclass(frozen=True)
class Selection:
    """`keep_top` (fraction per domain) or `threshold` (score >= t); neither keeps every document."""

    keep_top: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.keep_top is not None and self.threshold is not None:
            raise ValueError("give either --keep-top or --threshold, not both")
        if self.keep_top is not None and not 0.0 <= self.keep_top <= 1.0:
            raise ValueError(f"--keep-top must be a fraction in [0, 1]; got {self.keep_top}")

    @property
    def active(self) -> bool:
        return self.keep_top is not None or self.threshold is not None


def top_fraction_cutoff(scores: np.ndarray, fraction: float) -> float:
    """The score of the ceil(fraction * n)-th best document: `score >= cutoff` keeps that many
    (more only on ties). No documents or nothing to keep gives +inf."""
    n = len(scores)
    k = min(n, math.ceil(fraction * n - 1e-9))
    if k <= 0:
        return math.inf
    return float(np.partition(scores, n - k)[n - k])


class TopFractionCutoff(beam.CombineFn):
    """Exact per-key cut-off: accumulates the scores (float64 arrays, 8 bytes per document)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def create_accumulator(self) -> list[np.ndarray]:
        return []

    def add_input(self, acc: list[np.ndarray], scores: np.ndarray) -> list[np.ndarray]:
        acc.append(np.asarray(scores, dtype=np.float64))
        return acc

    def merge_accumulators(self, accs) -> list[np.ndarray]:
        merged = [np.concatenate([a for acc in accs for a in acc])] if any(accs) else []
        return merged

    def extract_output(self, acc: list[np.ndarray]) -> float:
        scores = np.concatenate(acc) if acc else np.zeros(0)
        return top_fraction_cutoff(scores, self.fraction)


def domain_scores(batch: pa.RecordBatch, column: str):
    """(domain, scores) per domain present in the batch."""
    domains = batch.column(S.DOMAIN)
    for domain in pc.unique(domains).to_pylist():
        mask = pc.equal(domains, domain)
        yield domain, pc.filter(batch.column(column), mask).to_numpy()


class DomainCutoffs(beam.PTransform):
    """PCollection of (domain, cut-off) for `keep_top`, computed by the job over all documents."""

    def __init__(self, column: str, fraction: float) -> None:
        super().__init__()
        self._column = column
        self._fraction = fraction

    def expand(self, batches):
        return (
            batches
            | "DomainScores" >> beam.FlatMap(domain_scores, self._column)
            | "Cutoff" >> beam.CombinePerKey(TopFractionCutoff(self._fraction))
        )


def mark_keep(
    batch: pa.RecordBatch,
    column: str,
    cutoffs: dict[str, float] | None,
    threshold: float | None,
    with_text: bool = True,
) -> pa.Table:
    """Append the `keep` column (score >= the domain's cut-off; everything when no selection)."""
    if cutoffs is None and threshold is None:
        keep = pa.array(np.ones(batch.num_rows, dtype=bool))
    else:
        if threshold is not None:
            cut = np.full(batch.num_rows, threshold, dtype=np.float64)
        else:
            domains = batch.column(S.DOMAIN).to_pylist()
            cut = np.array([cutoffs.get(d, math.inf) for d in domains], dtype=np.float64)
        keep = pa.array(batch.column(column).to_numpy() >= cut)
    out = batch.append_column(S.KEEP, keep)
    if not with_text:
        out = out.drop_columns([S.TEXT])
    return pa.Table.from_batches([out])
