"""Selection: keep the top fraction of each domain (cut-off from a global combine) or a threshold."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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


def keep_count(n: int, fraction: float) -> int:
    """How many of n documents the top `fraction` keeps: ceil(fraction * n), at most n."""
    return min(n, math.ceil(fraction * n - 1e-9))


def top_fraction_cutoff(scores: np.ndarray, fraction: float) -> float:
    """The score of the ceil(fraction * n)-th best document: `score >= cutoff` keeps that many
    (more only on ties). No documents or nothing to keep gives +inf."""
    n = len(scores)
    k = keep_count(n, fraction)
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


# --- exact cut-offs in bounded memory: a radix select over the scores' bit patterns --------------

RADIX_BITS = 16  # four passes of 2^16 bins find any float64 exactly
_LEVELS = 64 // RADIX_BITS
_BINS = 1 << RADIX_BITS
_SIGN = np.uint64(1 << 63)


def order_keys(scores: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64 scores (-0.0 counts as 0.0; NaN above +inf, as in
    `np.partition`), so that the k-th largest key is the k-th largest score."""
    x = np.asarray(scores, np.float64)
    x = np.where(np.isnan(x), np.nan, x + 0.0)
    bits = x.view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_score(key: int) -> float:
    """The score whose `order_keys` key is `key`."""
    bits = np.array([key], np.uint64)
    return float(np.where(bits & _SIGN, bits ^ _SIGN, ~bits).view(np.float64)[0])


def level_bins(
    element: tuple[str, tuple[np.ndarray, int]], level: int, states: dict | None = None
) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    """Pass `level`: the next RADIX_BITS of the keys that share the domain's prefix so far, with
    their weight (+1, or -1 for a removed document): (domain, (bins, weights))."""
    domain, (keys, weight) = element
    shift = 64 - RADIX_BITS * (level + 1)
    if level:
        state = (states or {}).get(domain)
        if state is None:  # settled: nothing to keep
            return
        keys = keys[(keys >> np.uint64(shift + RADIX_BITS)) == np.uint64(state[0])]
    if len(keys):
        bins = ((keys >> np.uint64(shift)) & np.uint64(_BINS - 1)).astype(np.int64)
        yield domain, (bins, np.full(len(bins), weight, np.int64))


class BinCounts(beam.CombineFn):
    """(bins, weights) -> weighted counts of the 2^RADIX_BITS bins (bounded, whatever the input)."""

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(_BINS, np.int64)

    def add_input(self, acc: np.ndarray, element: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        bins, weights = element
        acc += np.bincount(bins, weights, minlength=_BINS).astype(np.int64)
        return acc

    def merge_accumulators(self, accs) -> np.ndarray:
        total = self.create_accumulator()
        for acc in accs:
            total += acc
        return total

    def extract_output(self, acc: np.ndarray) -> np.ndarray:
        return acc


def narrow(prefix: int, rank: int, counts: np.ndarray) -> tuple[int, int]:
    """(prefix extended by the bin that holds the `rank`-th largest key, that key's rank in the bin)."""
    if np.any(counts < 0):
        raise ValueError("removed scores that were never added")
    above = np.cumsum(counts[::-1])  # keys in the bins from the highest down
    top = int(np.searchsorted(above, rank))
    inside = rank - (int(above[top - 1]) if top else 0)
    return (prefix << RADIX_BITS) | (_BINS - 1 - top), inside


def first_state(element: tuple[str, np.ndarray], fraction: float) -> tuple[str, tuple[int, int] | None]:
    """After the first pass: k = `keep_count` of the domain's n documents, and where the k-th
    largest key lies (None: keep nothing)."""
    domain, counts = element
    if np.any(counts < 0):
        raise ValueError("removed scores that were never added")
    k = keep_count(int(counts.sum()), fraction)
    return domain, (narrow(0, k, counts) if k > 0 else None)


def next_state(element: tuple[str, tuple[int, int] | None], counts: dict) -> tuple[str, Any]:
    """After a later pass: the prefix one bin longer (None stays None)."""
    domain, state = element
    return domain, None if state is None else narrow(state[0], state[1], counts[domain])


def _weighted_keys(element: tuple[str, Any]) -> tuple[str, tuple[np.ndarray, int]]:
    domain, scores = element
    if isinstance(scores, tuple):  # ("remove", scores): documents a later stage took out
        return domain, (order_keys(scores[1]), -1)
    return domain, (order_keys(scores), 1)


def _cutoff(domain: str, state: tuple[int, int] | None) -> tuple[str, float]:
    return domain, math.inf if state is None else key_score(state[0])


def domain_scores(batch: pa.RecordBatch | pa.Table, column: str):
    """(domain, scores) per domain present in the batch, of documents no stage dropped."""
    if S.DROP_REASON in batch.schema.names:  # the filter copies only these columns, not the text
        batch = batch.select([S.DOMAIN, S.DROP_REASON, column])
        batch = batch.filter(pc.is_null(batch.column(S.DROP_REASON)))
    domains = batch.column(S.DOMAIN)
    for domain in pc.unique(domains).to_pylist():
        mask = pc.equal(domains, domain)
        yield domain, np.asarray(pc.filter(batch.column(column), mask))


class DomainCutoffs(beam.PTransform):
    """(domain, scores array) pairs -> (domain, cut-off) for `keep_top`: exactly
    `top_fraction_cutoff` of each domain's scores, in memory bounded whatever the input size.

    An input is a scores array, or ("remove", scores) for documents a later stage (dedup) took out
    of the candidates, so the fraction is of the documents that survive every stage. Four passes
    over the scores (a radix select on their bit patterns) each sum a 2^16-bin histogram per
    domain of the keys that share the prefix the passes before chose; no step holds the scores."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self._fraction = fraction

    def expand(self, domain_scores):
        keys = domain_scores | "OrderKeys" >> beam.Map(_weighted_keys)
        states = None
        for level in range(_LEVELS):
            side = [beam.pvalue.AsDict(states)] if states is not None else []
            counts = (
                keys
                | f"Bins{level}" >> beam.FlatMap(level_bins, level, *side)
                | f"Count{level}" >> beam.CombinePerKey(BinCounts())
            )
            if states is None:
                states = counts | f"Narrow{level}" >> beam.Map(first_state, self._fraction)
            else:
                states = states | f"Narrow{level}" >> beam.Map(next_state, beam.pvalue.AsDict(counts))
        return states | "Cutoff" >> beam.MapTuple(_cutoff)


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
