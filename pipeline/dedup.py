"""Deduplication as Beam transforms: exact (normalised-text hash) and MinHash LSH (word 5-gram
shingles), clustered by connected components, one representative kept per cluster.

The distributed design, with no index on one machine:
1. `Signatures`: per document (in a DoFn over record batches) the band keys: for MinHash,
   `bands` slices of `rows` minhash values each (rensa's RMinHash, seeded, the same on every
   worker); for exact, one key, the hash of the normalised text. One row per (document, band)
   goes to an Arrow part file per key partition (as the scored batches do, see `pipeline.shards`):
   only file names go through the runner, so no step, and no runner's in-memory GroupByKey,
   holds the keys of the whole corpus.
2. `CandidateEdges`: GroupByKey of the file names on the partition; each partition's rows are
   read back and sorted by (scope, band, key), and documents sharing a key are linked to the
   smallest of them (a star per key). Memory: one partition, 1/`partitions` of the keys.
3. `ConnectedComponents`: alternating large-star / small-star rounds (Kiveris et al. 2014,
   "Connected Components in MapReduce and Beyond") over hash-ordered nodes, each a GroupByKey over
   edges only, label every component; a last GroupByKey per label (one component, never the
   corpus) keeps its smallest node and points the others at it. Each group keeps a member, so a
   cluster never loses all its members, even if `rounds` were too few to converge (then only a
   duplicate is missed). 8 rounds settled a 300-document chain in the tests.
A node is (rank, id, domain, source_file, record) with rank = -score when a scorer runs, else 0:
the minimum, i.e. the representative, is the highest-scoring document, ties (and runs without a
scorer) going to the smallest id; the file and record make it unique.

MinHash with b bands of r rows flags a pair of Jaccard similarity s with probability
1 - (1 - s^r)^b; the default 14 x 8 (datatrove's) has its threshold (1/b)^(1/r) ~= 0.72, and
flags s = 0.8 with p = 0.92, s = 0.9 with p = 0.9998, s = 0.5 with p = 0.05.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows

from pipeline import schema as S
from pipeline.shards import PartWriters, read_parts
from pipeline.stages import pending

METHODS = ("exact", "minhash")
SCOPES = ("domain", "global")
_WORD = re.compile(r"\w+")

Node = tuple[float, str, str, str, int]  # (rank, id, domain, source_file, record)


@dataclass(frozen=True)
class DedupOptions:
    """`method` exact or minhash; `scope` domain (duplicates within a domain) or global."""

    method: str = "minhash"
    scope: str = "domain"
    bands: int = 14
    rows: int = 8
    ngram: int = 5
    seed: int = 1
    rounds: int = 8
    partitions: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--dedup must be one of {METHODS}; got {self.method!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"--dedup-scope must be one of {SCOPES}; got {self.scope!r}")
        if min(self.bands, self.rows, self.ngram, self.rounds, self.partitions) < 1:
            raise ValueError("dedup bands, rows, ngram, rounds and partitions must be positive")

    @property
    def threshold(self) -> float:
        """Jaccard similarity flagged with probability about 1/2: (1/bands)^(1/rows)."""
        return (1.0 / self.bands) ** (1.0 / self.rows) if self.method == "minhash" else 1.0


def normalized_words(text: str) -> list[str]:
    """Lower-cased word characters runs: punctuation, case and spacing do not make a document new."""
    return _WORD.findall(text.lower())


def shingles(words: list[str], n: int) -> set[str]:
    """Word n-grams (the whole text when it has fewer than n words)."""
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def band_keys(texts: list[str], opts: DedupOptions) -> list[list[bytes] | None]:
    """Per text its band keys (one for exact, `bands` for minhash); None for a text without words."""
    words = [normalized_words(t) for t in texts]
    if opts.method == "exact":
        return [
            [hashlib.blake2b(" ".join(w).encode("utf-8", "surrogatepass"), digest_size=16).digest()]
            if w
            else None
            for w in words
        ]
    from rensa import RMinHash

    present = [i for i, w in enumerate(words) if w]
    out: list[list[bytes] | None] = [None] * len(texts)
    if not present:
        return out
    sets = [shingles(words[i], opts.ngram) for i in present]
    digests = np.asarray(
        RMinHash.digests_from_token_sets(sets, num_perm=opts.bands * opts.rows, seed=opts.seed), np.uint32
    )
    bands = digests.reshape(len(present), opts.bands, opts.rows)
    for row, i in enumerate(present):
        out[i] = [bands[row, b].tobytes() for b in range(opts.bands)]
    return out


BANDS_DIR = "bands"  # band rows, under the job's part files directory
_BAND_COLUMNS = ["scope", "band", "key"]


def band_rows(
    batch: pa.RecordBatch, opts: DedupOptions, score_column: str | None
) -> tuple[pa.RecordBatch, np.ndarray]:
    """One row per (document, band key) of a batch's documents: scope, band, key and the node's
    fields (rank, id, domain, source_file, record); and the key partition of each row."""
    keys = band_keys(batch.column(S.TEXT).to_pylist(), opts)
    doc = np.array([i for i, ks in enumerate(keys) for _ in ks or ()], np.int64)
    flat = [k for ks in keys for k in ks or ()]
    bands = [b for ks in keys for b in range(len(ks or ()))]
    n = batch.num_rows
    ranks = (
        -np.nan_to_num(np.asarray(batch.column(score_column), np.float64), nan=-np.inf)
        if score_column is not None and score_column in batch.schema.names
        else np.zeros(n)
    )
    rows = batch.select([S.ID, S.DOMAIN, S.SOURCE, S.RECORD]).take(pa.array(doc))
    domains = rows.column(S.DOMAIN)
    scope = domains if opts.scope == "domain" else pa.array([""] * len(doc), pa.string())
    out = pa.RecordBatch.from_arrays(
        [
            scope,
            pa.array(bands, pa.int32()),
            pa.array(flat, pa.binary()),
            pa.array(ranks[doc], pa.float64()),
            rows.column(S.ID),
            domains,
            pc.fill_null(rows.column(S.SOURCE), ""),
            rows.column(S.RECORD),
        ],
        names=[*_BAND_COLUMNS, "rank", S.ID, S.DOMAIN, S.SOURCE, S.RECORD],
    )
    partitions = np.array([int.from_bytes(k[:4], "little") for k in flat], np.int64) % opts.partitions
    return out, partitions


class _SignaturesFn(beam.DoFn):
    """Surviving documents -> their band rows in one part file per key partition that this bundle
    touches, emitted at the bundle's end as (partition, file): the band keys go to disk, not
    through the runner, and the grouping reads one partition at a time."""

    def __init__(self, opts: DedupOptions, score_column: str | None, bands_dir: str) -> None:
        self._opts = opts
        self._score_column = score_column
        self._dir = bands_dir
        self._writers: PartWriters | None = None

    def start_bundle(self) -> None:
        self._writers = PartWriters(self._dir, self._opts.partitions)

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        todo = np.flatnonzero(pending(batch))
        if len(todo):
            rows, partitions = band_rows(batch.take(pa.array(todo)), self._opts, self._score_column)
            assert self._writers is not None  # opened in start_bundle
            self._writers.write(rows, partitions)
        return iter(())

    def finish_bundle(self) -> Iterator[Any]:
        assert self._writers is not None
        for partition, path in self._writers.close():
            yield GlobalWindows.windowed_value((partition, path))


def partition_edges(element: tuple[int, Iterable[str]]) -> Iterator[tuple[Node, Node]]:
    """One key partition's band rows -> for each (scope, band, key) that several documents share,
    an edge from each of them to the smallest (a star per key)."""
    _, paths = element
    table = read_parts(sorted(paths))
    if table is None or table.num_rows < 2:
        return
    table = table.take(pc.sort_indices(table, sort_keys=[(c, "ascending") for c in _BAND_COLUMNS]))
    same = np.ones(table.num_rows - 1, bool)
    for name in _BAND_COLUMNS:
        column = table.column(name)
        same &= pc.equal(column.slice(1), column.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    sizes = np.diff(np.append(starts, table.num_rows))
    shared = np.repeat(sizes > 1, sizes)
    rows = table.filter(pa.array(shared)).select(["rank", S.ID, S.DOMAIN, S.SOURCE, S.RECORD])
    nodes = list(zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True))
    offset = 0
    for size in sizes[sizes > 1].tolist():
        members = set(nodes[offset : offset + size])
        offset += size
        low = min(members)
        for node in members:
            if node != low:
                yield node, low


def _hashed(node: Any) -> tuple[bytes, Any]:
    """The node behind a seeded-hash prefix: the star rounds order nodes at random (their analysis
    assumes it; a chain of documents with increasing ids would otherwise take one round per link)."""
    return hashlib.blake2b(repr(node).encode("utf-8", "surrogatepass"), digest_size=8).digest(), node


def _hash_edge(edge: tuple[Any, Any]) -> tuple[tuple[bytes, Any], tuple[bytes, Any]]:
    return _hashed(edge[0]), _hashed(edge[1])


def _both_ways(edge: tuple[Any, Any]) -> list[tuple[Any, Any]]:
    return [(edge[0], edge[1]), (edge[1], edge[0])]


def _large_star(element: tuple[Any, Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
    """Link every larger neighbour of u to the smallest node of u's neighbourhood."""
    u, neighbours = element
    nbrs = set(neighbours)
    low = min(min(nbrs), u)
    for v in nbrs:
        if v > u:
            yield v, low


def _small_star(element: tuple[Any, Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
    """Link u and its smaller neighbours to the smallest of them."""
    u, smaller = element
    nbrs = set(smaller)
    low = min(nbrs)
    yield u, low
    for v in nbrs:
        if v != low:
            yield v, low


def _high_low(edge: tuple[Any, Any]) -> tuple[Any, Any]:
    return (edge[0], edge[1]) if edge[0] > edge[1] else (edge[1], edge[0])


def _label(element: tuple[Any, Iterable[Any]]) -> list[tuple[Any, Any]]:
    """(component label, node) for a node and for the label itself (its smallest neighbour)."""
    node, smaller = element
    label = min(smaller)
    return [(label, node[1]), (label, label[1])]


def _representative(element: tuple[Any, Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
    """One component's nodes -> (node, smallest node) for all but the smallest."""
    _, members = element
    members = set(members)
    best = min(members)
    for node in sorted(members):
        if node != best:
            yield node, best


class ConnectedComponents(beam.PTransform):
    """Edges (a, b) -> (node, representative) for every node but its component's minimum.

    Large-star / small-star rounds on hash-ordered nodes label each component by its hash-minimum
    node; then the nodes are grouped by label (one component per group, never the corpus) and the
    smallest node of the group is the representative. Before convergence a component can carry
    several labels: each of its groups keeps its own smallest node, so nothing is lost, only a
    duplicate missed."""

    def __init__(self, rounds: int = 8) -> None:
        super().__init__()
        self._rounds = rounds

    def expand(self, edges):
        edges = edges | "Hash" >> beam.Map(_hash_edge)
        for i in range(self._rounds):
            edges = (
                edges
                | f"BothWays{i}" >> beam.FlatMap(_both_ways)
                | f"Neighbours{i}" >> beam.GroupByKey()
                | f"LargeStar{i}" >> beam.FlatMap(_large_star)
                | f"Orient{i}" >> beam.Map(_high_low)
                | f"Smaller{i}" >> beam.GroupByKey()
                | f"SmallStar{i}" >> beam.FlatMap(_small_star)
            )
        return (
            edges
            | "OrientLast" >> beam.Map(_high_low)
            | "ByNode" >> beam.GroupByKey()
            | "Label" >> beam.FlatMap(_label)
            | "ByComponent" >> beam.GroupByKey()
            | "Representative" >> beam.FlatMap(_representative)
        )


class FindDuplicates(beam.PTransform):
    """Record batches (documents with `drop_reason` null are candidates) -> (node, representative)
    for every document removed as a duplicate."""

    def __init__(self, opts: DedupOptions, score_column: str | None, bands_dir: str) -> None:
        super().__init__()
        self._opts = opts
        self._score_column = score_column
        self._dir = bands_dir

    def expand(self, batches):
        return (
            batches
            | "Signatures" >> beam.ParDo(_SignaturesFn(self._opts, self._score_column, self._dir))
            | "Buckets" >> beam.GroupByKey()
            | "CandidateEdges" >> beam.FlatMap(partition_edges)
            | "Components" >> ConnectedComponents(self._opts.rounds)
        )


def mark_duplicates(table: pa.Table, removed: list[tuple[str, str, int, str]]) -> pa.Table:
    """Set `drop_reason = "duplicate"` and `duplicate_of` for the (domain, source_file, record, kept id)
    rows of `table` (a shard's documents)."""
    if S.DUPLICATE_OF not in table.column_names:
        table = table.append_column(S.DUPLICATE_OF, pa.nulls(table.num_rows, pa.string()))
    if not removed:
        return table
    rep = {(d, s, r): kept for d, s, r, kept in removed}
    keys = zip(
        table.column(S.DOMAIN).to_pylist(),
        (s or "" for s in table.column(S.SOURCE).to_pylist()),
        table.column(S.RECORD).to_pylist(),
        strict=True,
    )
    duplicate_of = [rep.get(k) for k in keys]
    reasons = [
        "duplicate" if d is not None else r
        for d, r in zip(duplicate_of, table.column(S.DROP_REASON).to_pylist(), strict=True)
    ]
    table = table.set_column(
        table.column_names.index(S.DUPLICATE_OF), S.DUPLICATE_OF, pa.array(duplicate_of, pa.string())
    )
    return table.set_column(
        table.column_names.index(S.DROP_REASON), S.DROP_REASON, pa.array(reasons, pa.string())
    )
