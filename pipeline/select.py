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
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"--threshold must be a finite number; got {self.threshold}")

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


def keep_top_per_domain(scores: np.ndarray, domains: np.ndarray, fraction: float) -> np.ndarray:
    """In memory: True for the top `fraction` of each domain by score (NaN scores never kept before
    finite ones), as the job's `keep_top` selects."""
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    keep = np.zeros(len(scores), dtype=bool)
    for domain in np.unique(domains):
        rows = domains == domain
        keep[rows] = scores[rows] >= top_fraction_cutoff(scores[rows], fraction)
    return keep


def multiset_difference(values: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """`values` with one occurrence taken out per element of `removed` (each of which is in `values`)."""
    if not len(removed):
        return values
    distinct, counts = np.unique(values, return_counts=True)
    gone, gone_counts = np.unique(removed, return_counts=True)
    index = np.searchsorted(distinct, gone)
    if np.any(index >= len(distinct)) or np.any(distinct[np.minimum(index, len(distinct) - 1)] != gone):
        raise ValueError("removed scores that were never added")
    counts[index] -= gone_counts
    if np.any(counts < 0):
        raise ValueError("removed a score more often than it was added")
    return np.repeat(distinct, counts)


class TopFractionCutoff(beam.CombineFn):
    """Exact per-key cut-off: accumulates the scores (float64 arrays, 8 bytes per document).

    An input is a scores array, or ("remove", scores) for documents a later stage (dedup) took
    out of the candidates, so the fraction is of the documents that survive every stage."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def create_accumulator(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [], []

    def add_input(self, acc, scores):
        added, removed = acc
        if isinstance(scores, tuple):
            removed.append(np.asarray(scores[1], dtype=np.float64))
        else:
            added.append(np.asarray(scores, dtype=np.float64))
        return acc

    def merge_accumulators(self, accs):
        accs = list(accs)
        added = [a for acc in accs for a in acc[0]]
        removed = [a for acc in accs for a in acc[1]]
        return ([np.concatenate(added)] if added else []), ([np.concatenate(removed)] if removed else [])

    def extract_output(self, acc) -> float:
        added, removed = acc
        scores = np.concatenate(added) if added else np.zeros(0)
        gone = np.concatenate(removed) if removed else np.zeros(0)
        return top_fraction_cutoff(multiset_difference(scores, gone), self.fraction)


def domain_scores(batch: pa.RecordBatch | pa.Table, column: str):
    """(domain, scores) per domain present in the batch, of documents no stage dropped."""
    if S.DROP_REASON in batch.schema.names:
        batch = batch.filter(pc.is_null(batch.column(S.DROP_REASON)))
    domains = batch.column(S.DOMAIN)
    for domain in pc.unique(domains).to_pylist():
        mask = pc.equal(domains, domain)
        yield domain, np.asarray(pc.filter(batch.column(column), mask))


class DomainCutoffs(beam.PTransform):
    """(domain, scores array) pairs -> (domain, cut-off) for `keep_top`, computed over all documents."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self._fraction = fraction

    def expand(self, domain_scores):
        return domain_scores | "Cutoff" >> beam.CombinePerKey(TopFractionCutoff(self._fraction))


def keep_mask(
    table: pa.RecordBatch | pa.Table,
    column: str | None,
    cutoffs: dict[str, float] | None,
    threshold: float | None,
) -> np.ndarray:
    """No stage dropped it (`drop_reason` null) and score >= the domain's cut-off (or >= threshold)."""
    alive = np.ones(table.num_rows, dtype=bool)
    if S.DROP_REASON in table.schema.names:
        alive = pc.is_null(table.column(S.DROP_REASON)).to_numpy(zero_copy_only=False)
    if (cutoffs is None and threshold is None) or column is None:
        return alive
    scores = np.asarray(pc.fill_null(table.column(column), np.nan), dtype=np.float64)
    if threshold is not None:
        return alive & (scores >= threshold)
    assert cutoffs is not None  # no cut-offs and no threshold returned above
    domains = table.column(S.DOMAIN)
    if isinstance(domains, pa.ChunkedArray):
        domains = domains.combine_chunks()
    encoded = domains.dictionary_encode()
    cut = np.array([cutoffs.get(d, math.inf) for d in encoded.dictionary.to_pylist()], dtype=np.float64)
    return alive & (scores >= cut[encoded.indices.to_numpy()])


def mark_keep(
    batch: pa.RecordBatch | pa.Table,
    column: str | None,
    cutoffs: dict[str, float] | None,
    threshold: float | None,
    with_text: bool = True,
) -> pa.Table:
    """Append the `keep` column (see `keep_mask`)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    out = table.append_column(S.KEEP, pa.array(keep_mask(table, column, cutoffs, threshold)))
    if not with_text and S.TEXT in out.column_names:
        out = out.drop_columns([S.TEXT])
    return out
