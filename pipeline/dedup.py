"""Deduplication as Beam transforms: exact (normalised-text hash) and MinHash LSH (word 5-gram
shingles), clustered by connected components, one representative kept per cluster.

The distributed design: no index on one machine, and nothing per document through the runner until
the removed documents themselves. Every step reads its inputs from Arrow part files (zstd, as the
scored batches, see `pipeline.shards`) named by a `GroupByKey` of file names, deletes them once read,
and writes its output to part files by partition:
1. `Signatures`: per document (in a DoFn over record batches) its node id (`node_ids`: 64 bits from
   its domain, file and record, in random order) and its band keys: for MinHash, a 64-bit hash of
   the scope, the band number and the band's `rows` minhash values (rensa's RMinHash, seeded, the
   same on every worker); for exact, of the normalised text. Band rows (key, gap), 12 bytes each
   (about 8.7 in zstd), go to a file per key partition (`partitions`): the gap leads to the document's
   ordinal in the bundle's node-id file (one per bundle, 8 bytes a document), so a band does not
   repeat its 64-bit node; node rows (node, rank, id, domain, source_file, record), one per
   document, go to a file per node partition (`edge_partitions`).
2. `CandidateEdges`: one key partition at a time, the documents that share a key are linked, and a
   union-find over the partition (`local_components`) leaves one edge per linked document, to its
   component's smallest node, however many bands it shares (one partition's rows in memory).
3. `ConnectedComponents`: alternating large-star / small-star rounds (Kiveris et al. 2014, "Connected
   Components in MapReduce and Beyond") over the edge files, one node partition at a time, label
   every component by its smallest node id. 8 rounds settle a 300-document chain in the tests; if
   they were too few, a component keeps several labels and only a duplicate is missed.
4. `Join` and `Removed`: the labels meet the node rows of their partition, and per label the smallest
   node (rank, id, domain, source_file, record) is kept and the others point at it; the removed
   documents go to a part file per output shard, for the shard writers (`read_removed`).
A node's order is (rank, id, domain, source_file, record) with rank = -score when a scorer runs,
else 0: the representative is the highest-scoring document, ties (and runs without a scorer) going
to the smallest id; the file and record make it unique.

MinHash with b bands of r rows flags a pair of Jaccard similarity s with probability
1 - (1 - s^r)^b; the default 14 x 8 (datatrove's) has its threshold (1/b)^(1/r) ~= 0.72, and
flags s = 0.8 with p = 0.92, s = 0.9 with p = 0.9998, s = 0.5 with p = 0.05.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline import schema as S
from pipeline.shards import PartWriters, all_exist, read_parts, remove_files
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
    partitions: int = 64  # of the band keys
    edge_partitions: int = 8  # of the duplicate edges and nodes (about 1/10 of the band rows)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--dedup must be one of {METHODS}; got {self.method!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"--dedup-scope must be one of {SCOPES}; got {self.scope!r}")
        if min(self.bands, self.rows, self.ngram, self.rounds, self.partitions, self.edge_partitions) < 1:
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


def _minhash_bands(texts: list[str], opts: DedupOptions) -> tuple[list[int], np.ndarray]:
    """The texts with words, and their minhash values as (text, band, row) uint32."""
    from rensa import RMinHash

    words = [normalized_words(t) for t in texts]
    present = [i for i, w in enumerate(words) if w]
    if not present:
        return present, np.zeros((0, opts.bands, opts.rows), np.uint32)
    sets = [shingles(words[i], opts.ngram) for i in present]
    digests = np.asarray(
        RMinHash.digests_from_token_sets(sets, num_perm=opts.bands * opts.rows, seed=opts.seed), np.uint32
    )
    return present, digests.reshape(len(present), opts.bands, opts.rows)


def band_keys(texts: list[str], opts: DedupOptions) -> list[list[bytes] | None]:
    """Per text its band keys (one for exact, `bands` for minhash); None for a text without words."""
    if opts.method == "exact":
        return [
            [hashlib.blake2b(" ".join(w).encode("utf-8", "surrogatepass"), digest_size=16).digest()]
            if w
            else None
            for w in (normalized_words(t) for t in texts)
        ]
    present, bands = _minhash_bands(texts, opts)
    out: list[list[bytes] | None] = [None] * len(texts)
    for row, i in enumerate(present):
        out[i] = [bands[row, b].tobytes() for b in range(opts.bands)]
    return out


BANDS_DIR = "bands"  # dedup's work files (band keys, nodes, edges, labels), under the part files directory
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NODE_COLUMNS = ["rank", S.ID, S.DOMAIN, S.SOURCE, S.RECORD]  # a node's order: the representative is the min


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit over the output."""
    x = np.asarray(x, np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _hash64(values: list[str]) -> np.ndarray:
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(v.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
            )
            for v in values
        ],
        np.uint64,
    )


def _dictionary_hash(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`_hash64` of every row of a string column, hashing each distinct value once."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.fill_null(column, "").dictionary_encode()
    return _hash64(encoded.dictionary.to_pylist())[encoded.indices.to_numpy()]


def node_ids(batch: pa.RecordBatch | pa.Table, seed: int = 1) -> np.ndarray:
    """A 64-bit id per document from (domain, source_file, record): distinct within a file (a bijection
    of the record), random across files (and seeds) and in order (the star rounds assume a random order)."""
    pairs = pc.binary_join_element_wise(
        pc.fill_null(batch.column(S.DOMAIN), ""), pc.fill_null(batch.column(S.SOURCE), ""), "\x00"
    )
    records = np.asarray(batch.column(S.RECORD), np.int64).astype(np.uint64)
    return mix64((_dictionary_hash(pairs) ^ (records * _GOLDEN)) + mix64(np.array([seed], np.uint64)))


def band_hashes(texts: list[str], scopes: list[str], opts: DedupOptions) -> tuple[np.ndarray, np.ndarray]:
    """(text index, 64-bit key) for every band key of every text with words: a key hashes the scope,
    the band number and the band's minhash values (for exact, the normalised text's blake2b)."""
    if opts.method == "exact":
        keys = band_keys(texts, opts)
        doc = np.array([i for i, ks in enumerate(keys) if ks], np.int64)
        key = np.array([int.from_bytes(ks[0][:8], "little") for ks in keys if ks], np.uint64)
    else:
        present, bands = _minhash_bands(texts, opts)
        doc = np.repeat(np.array(present, np.int64), opts.bands)
        hashes = np.broadcast_to(mix64(np.arange(opts.bands, dtype=np.uint64) + _GOLDEN), bands.shape[:2])
        for row in range(opts.rows):
            hashes = mix64(hashes ^ bands[:, :, row].astype(np.uint64))
        key = hashes.reshape(-1)
    scope = _hash64(scopes)[doc] if len(doc) else np.zeros(0, np.uint64)
    return doc, mix64(key ^ scope)


def band_rows(
    batch: pa.RecordBatch, opts: DedupOptions, score_column: str | None
) -> tuple[np.ndarray, np.ndarray, pa.RecordBatch]:
    """A batch's documents -> (per band key: its document's row in the node rows, the 64-bit key; node
    rows: one (node, rank, id, domain, source_file, record) per document with words, in batch order)."""
    domains = batch.column(S.DOMAIN).to_pylist()
    scopes = domains if opts.scope == "domain" else [""] * batch.num_rows
    doc, keys = band_hashes(batch.column(S.TEXT).to_pylist(), scopes, opts)
    nodes = node_ids(batch, opts.seed)
    ranks = (
        -np.nan_to_num(np.asarray(batch.column(score_column), np.float64), nan=-np.inf)
        if score_column is not None and score_column in batch.schema.names
        else np.zeros(batch.num_rows)
    )
    present = np.unique(doc)
    rows = batch.select([S.ID, S.DOMAIN, S.SOURCE, S.RECORD]).take(pa.array(present))
    node_rows = pa.RecordBatch.from_arrays(
        [
            pa.array(nodes[present]),
            pa.array(ranks[present], pa.float64()),
            rows.column(S.ID),
            rows.column(S.DOMAIN),
            pc.fill_null(rows.column(S.SOURCE), ""),
            rows.column(S.RECORD),
        ],
        names=["node", *_NODE_COLUMNS],
    )
    return np.searchsorted(present, doc), keys, node_rows


def _gaps(ordinals: np.ndarray, partition: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Per row, its non-decreasing `ordinals` less the previous one of its partition (`last[p]` before
    this batch, updated): the band rows' document column, delta-coded per partition file."""
    order = np.argsort(partition, kind="stable")
    ordered, parts = ordinals[order], partition[order]
    first = np.concatenate([[True], parts[1:] != parts[:-1]])[: len(parts)]
    previous = np.concatenate([np.zeros(1, ordered.dtype), ordered[:-1]])[: len(parts)]
    previous[first] = last[parts[first]]
    final = np.concatenate([parts[1:] != parts[:-1], [True]])[: len(parts)]
    last[parts[final]] = ordered[final]
    gaps = np.empty_like(ordinals)
    gaps[order] = ordered - previous
    return gaps


_BAND_SCHEMA = pa.schema([("key", pa.uint64()), ("gap", pa.uint32())])


def read_bands(files: Iterable[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(key, node) of every band row of the given (band file, its bundle's node-id file) pairs: a band
    file holds (64-bit key, gap to the previous row's document ordinal), the node-id file the node of
    each ordinal (`_SignaturesFn`)."""
    keys, nodes = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
    for path, ids_path in files:
        table = read_parts([path])
        ids = read_parts([ids_path])
        if table is None or ids is None:
            continue
        keys.append(np.asarray(table.column("key"), np.uint64))
        ordinals = np.cumsum(np.asarray(table.column("gap"), np.uint64))
        nodes.append(np.asarray(ids.column("node"), np.uint64)[ordinals])
    return np.concatenate(keys), np.concatenate(nodes)


def _windowed(tag: str, value: Any) -> Any:
    return beam.pvalue.TaggedOutput(tag, GlobalWindows.windowed_value(value))


class _SignaturesFn(beam.DoFn):
    """Surviving documents -> their band rows in one part file per key partition, their node rows in
    one part file per node partition, and their node ids in one file, that this bundle touches; emitted
    at the bundle's end on the outputs "bands" (partition, (file, node-id file)), "nodes" (partition,
    file) and "ids" (file): nothing per document goes through the runner.

    A band row is (64-bit key, 32-bit gap): its document is the `ordinal`-th (from 0) of the bundle's
    node-id file, the gaps of a partition's file summing to it. About 8.7 bytes a band in zstd, where
    a (key, node) pair takes 16: the bands are dedup's largest work files, and exist with every staged
    part file (the band grouping waits for all documents)."""

    def __init__(self, opts: DedupOptions, score_column: str | None, work_dir: str) -> None:
        self._opts = opts
        self._score_column = score_column
        self._dir = work_dir
        self._writers: tuple[PartWriters, PartWriters, PartWriters] | None = None
        self._documents = 0
        self._last = np.zeros(0, np.uint64)

    def start_bundle(self) -> None:
        self._writers = (
            PartWriters(self._dir, self._opts.partitions),
            PartWriters(self._dir, self._opts.edge_partitions),
            PartWriters(self._dir, 1),
        )
        self._documents = 0
        self._last = np.zeros(self._opts.partitions, np.uint64)

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        todo = np.flatnonzero(pending(batch))
        if len(todo):
            doc, keys, nodes = band_rows(batch.take(pa.array(todo)), self._opts, self._score_column)
            if self._documents + nodes.num_rows > np.iinfo(np.uint32).max:
                raise RuntimeError("a dedup bundle of more than 2^32 documents: run with more workers")
            assert self._writers is not None  # opened in start_bundle
            partition = _partition(keys, self._opts.partitions)
            gaps = _gaps(doc.astype(np.uint64) + np.uint64(self._documents), partition, self._last)
            bands = pa.RecordBatch.from_arrays(
                [pa.array(keys), pa.array(gaps, pa.uint32())], schema=_BAND_SCHEMA
            )
            self._writers[0].write(bands, partition)
            self._writers[1].write(nodes, _partition(nodes.column(0), self._opts.edge_partitions))
            self._writers[2].write(nodes.select(["node"]), np.zeros(nodes.num_rows, np.int64))
            self._documents += nodes.num_rows
        return iter(())

    def finish_bundle(self) -> Iterator[Any]:
        assert self._writers is not None
        bands, nodes, ids = (writers.close() for writers in self._writers)
        for _, path in ids:
            yield _windowed("ids", path)
            for partition, band_path in bands:
                yield _windowed("bands", (partition, (band_path, path)))
        for partition, path in nodes:
            yield _windowed("nodes", (partition, path))


def _partition(values: pa.Array | np.ndarray, partitions: int) -> np.ndarray:
    return (np.asarray(values, np.uint64) % np.uint64(partitions)).astype(np.int64)


def _once(step: str, partition: int, inputs: list[str], work_dir: str, run: Any) -> list[tuple[int, str]]:
    """`run()`, which reads `inputs` and returns the (partition, file)s it wrote, once per step and
    partition: the files are listed in a marker before the inputs are deleted, so a retried bundle
    (Beam retries failed ones) whose inputs are already gone returns the same files."""
    marker = f"{work_dir.rstrip('/')}/{step}-{partition:05d}.done"
    if not all_exist(inputs):
        if not all_exist([marker]):
            raise RuntimeError(
                f"dedup step {step} lost input files of partition {partition}; run the job again"
            )
        return _read_marker(marker)
    outputs = run()
    _write_marker(marker, json.dumps(outputs))
    remove_files(inputs)  # each work file is read by one step: the disk it took is free now
    return outputs


def _write_marker(path: str, text: str) -> None:
    """A small file written whole or not at all (renamed into place; an object store's write is)."""
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as sink:
            sink.write(text.encode())
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _read_marker(path: str) -> list[tuple[int, str]]:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as source:
            text = source.read().decode()
    else:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    return [(int(p), str(f)) for p, f in json.loads(text)]


def _pairs(table: pa.Table | None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (first column, second column) pairs of a work file's rows."""
    if table is None or table.num_rows == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return _distinct(np.asarray(table.column(0)), np.asarray(table.column(1)))


def _distinct(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs, sorted."""
    if len(a) == 0:
        return a.astype(np.uint64), b.astype(np.uint64)
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


def _write_edges(
    a: np.ndarray, b: np.ndarray, work_dir: str, partitions: int, both_ways: bool
) -> list[tuple[int, str]]:
    """Edges (a, b) to part files by a's partition (and (b, a) by b's, `both_ways`) -> (partition, file)."""
    if both_ways:
        a, b = np.concatenate([a, b]), np.concatenate([b, a])
    writers = PartWriters(work_dir, partitions)
    batch = pa.RecordBatch.from_arrays([pa.array(a, pa.uint64()), pa.array(b, pa.uint64())], names=["a", "b"])
    writers.write(batch, _partition(a, partitions))
    return writers.close()


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted `keys`: the start of each run of equal keys, and each row's run number."""
    new_run = np.concatenate([[True], keys[1:] != keys[:-1]])[: len(keys)]
    return np.flatnonzero(new_run), np.cumsum(new_run) - 1


def local_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges -> (node, its component's smallest node) for every other node: a star per component,
    the same connectivity in the fewest edges (union-find in one partition)."""
    if len(a) == 0:
        return a, b
    nodes, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    graph = coo_matrix((np.ones(len(a)), (index[: len(a)], index[len(a) :])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # nodes are sorted: a label's first node is its min
    low = nodes[first][labels]
    keep = nodes != low
    return nodes[keep], low[keep]


def bucket_edges(keys: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Band rows (key, node) -> the documents that share a key, as a star per component of the graph
    they make in these rows (`local_components`): one edge per duplicate document and partition,
    however many bands it shares."""
    order = np.lexsort((nodes, keys))
    keys, nodes = keys[order], nodes[order]
    starts, group = _groups(keys)
    low = nodes[starts][group]
    linked = nodes != low
    return local_components(nodes[linked], low[linked])


def large_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (u, v) of u's neighbourhood (both ways) -> every larger neighbour v of u linked to the
    smallest node of u's neighbourhood and u (Kiveris et al. 2014), as (high, low)."""
    if len(u) == 0:
        return u, v
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    starts, group = _groups(u)
    low = np.minimum(u[starts], v[starts])[group]  # v is sorted within u's run: its first is its min
    larger = v > u
    return v[larger], low[larger]


def small_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (u, v) both ways -> for each u, u and its smaller neighbours linked to the smallest of them."""
    smaller = v < u
    u, v = u[smaller], v[smaller]
    if len(u) == 0:
        return u, v
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    starts, group = _groups(u)
    low = v[starts][group]
    others = v != low
    return np.concatenate([u[starts], v[others]]), np.concatenate([low[starts], low[others]])


def labels(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (u, v) both ways -> (node, label) for each node with a smaller neighbour, the smallest one,
    and (label, label) for each label: a component's label is its smallest node once the rounds settle."""
    high, low = small_star(u, v)
    order = np.lexsort((low, high))
    high, low = high[order], low[order]
    starts, _ = _groups(high)
    node, label = high[starts], low[starts]
    return np.concatenate([node, label]), np.concatenate([label, label])


def _edge_step(kernel: Any, both_ways: bool, step: str, work_dir: str, partitions: int) -> Any:
    """A step of the rounds: one partition's edge files -> `kernel` -> edge files by partition."""

    def run_step(element: tuple[int, Iterable[str]]) -> list[tuple[int, str]]:
        partition, paths = element[0], sorted(element[1])

        def run() -> list[tuple[int, str]]:
            a, b = kernel(*_pairs(read_parts(paths)))
            return _write_edges(a, b, work_dir, partitions, both_ways)

        return _once(step, partition, paths, work_dir, run)

    return run_step


def _bands_step(work_dir: str, partitions: int) -> Any:
    """Candidate edges: one key partition's band files (with their node-id files, which stay for the
    other partitions) -> `bucket_edges` -> edge files by node partition, both ways."""

    def run_step(element: tuple[int, Iterable[tuple[str, str]]]) -> list[tuple[int, str]]:
        partition, files = element[0], sorted(element[1])

        def run() -> list[tuple[int, str]]:
            a, b = bucket_edges(*_distinct(*read_bands(files)))
            return _write_edges(a, b, work_dir, partitions, both_ways=True)

        return _once("bands", partition, [path for path, _ in files], work_dir, run)

    return run_step


class ConnectedComponents(beam.PTransform):
    """(partition, file) of edges (a, b), stored both ways by `a`'s partition -> (partition, file) of
    (node, label) rows by node partition, label being the component's smallest node.

    Alternating large-star / small-star rounds (Kiveris et al. 2014) on nodes in random order, each a
    `GroupByKey` of file names: a step reads one partition's edges, which are then deleted, and writes
    its output edges by partition. Before convergence a component can carry several labels; each
    label's group keeps its own smallest node, so nothing is lost, only a duplicate missed."""

    def __init__(self, work_dir: str, partitions: int, rounds: int = 8) -> None:
        super().__init__()
        self._dir = work_dir
        self._partitions = partitions
        self._rounds = rounds

    def expand(self, edges):
        args = (self._dir, self._partitions)
        for i in range(self._rounds):
            edges = (
                edges
                | f"Neighbours{i}" >> beam.GroupByKey()
                | f"LargeStar{i}" >> beam.FlatMap(_edge_step(large_star, False, f"large{i}", *args))
                | f"Smaller{i}" >> beam.GroupByKey()
                | f"SmallStar{i}" >> beam.FlatMap(_edge_step(small_star, True, f"small{i}", *args))
            )
        return (
            edges
            | "ByNode" >> beam.GroupByKey()
            | "Label" >> beam.FlatMap(_edge_step(labels, False, "labels", *args))
        )


def _join_step(element: tuple[int, Iterable[tuple[str, str]]], work_dir: str, partitions: int) -> Any:
    """One node partition's label and node files -> (node's fields, label) rows by label partition.
    The node-id files of the band rows, which every key partition read, go with partition 0's."""
    partition, files = element[0], sorted(element[1])
    labelled = [p for kind, p in files if kind == "label"]
    node_files = [p for kind, p in files if kind == "node"]
    ids = [p for kind, p in files if kind == "ids"]
    return _once(
        "join",
        partition,
        labelled + node_files + ids,
        work_dir,
        lambda: _join(labelled, node_files, work_dir, partitions),
    )


def _join(
    labelled: list[str], node_files: list[str], work_dir: str, partitions: int
) -> list[tuple[int, str]]:
    node, label = _pairs(read_parts(labelled))
    first, _ = _groups(node)  # one label per node, its smallest: before the rounds settle a node can
    node, label = node[first], label[first]  # have two, and each removed node must point at a kept one
    nodes = read_parts(node_files)
    if len(node) == 0 or nodes is None:
        return []
    ids = np.asarray(nodes.column("node"))
    order = np.argsort(ids)
    if np.any(ids[order][1:] == ids[order][:-1]):
        raise RuntimeError("two documents have the same 64-bit dedup node id; run with another --dedup seed")
    at = order[np.minimum(np.searchsorted(ids[order], node), len(ids) - 1)]
    if not np.array_equal(ids[at], node):
        raise RuntimeError("a document in a duplicate cluster has no node row (a dedup work file is missing)")
    rows = nodes.take(pa.array(at)).select(_NODE_COLUMNS)
    columns = [rows.column(c).combine_chunks() for c in _NODE_COLUMNS]
    batch = pa.RecordBatch.from_arrays(
        [*columns, pa.array(label, pa.uint64())], names=[*_NODE_COLUMNS, "label"]
    )
    writers = PartWriters(work_dir, partitions)
    writers.write(batch, _partition(label, partitions))
    return writers.close()


def _representatives(element: tuple[int, Iterable[str]]) -> Iterator[tuple[Node, Node]]:
    """One label partition's rows -> (node, representative) for every node but its label's smallest."""
    table = read_parts(sorted(element[1]))
    if table is None or table.num_rows == 0:
        return
    table = table.take(pc.sort_indices(table, [(c, "ascending") for c in ["label", *_NODE_COLUMNS]]))
    starts, group = _groups(np.asarray(table.column("label")))
    nodes = list(zip(*(table.column(c).to_pylist() for c in _NODE_COLUMNS), strict=True))
    for i, g in enumerate(group.tolist()):
        if i != starts[g]:
            yield nodes[i], nodes[starts[g]]


_REMOVED = pa.schema(
    [(S.DOMAIN, pa.string()), (S.SOURCE, pa.string()), (S.RECORD, pa.int64()), (S.DUPLICATE_OF, pa.string())]
    + [("score", pa.float64())]
)


def _removed_step(
    element: tuple[int, Iterable[str]], work_dir: str, num_shards: int
) -> list[tuple[int, str]]:
    """One label partition's rows -> the removed documents (domain, source_file, record, duplicate_of,
    score) in a part file per output shard: the shard writers read them, not the runner."""
    partition, paths = element[0], sorted(element[1])

    def run() -> list[tuple[int, str]]:
        removed = [(n[2], n[3], n[4], rep[1], -n[0]) for n, rep in _representatives((partition, paths))]
        writers = PartWriters(work_dir, num_shards)
        writers.write(
            pa.RecordBatch.from_pylist([dict(zip(_REMOVED.names, r, strict=True)) for r in removed], _REMOVED)
        )
        return writers.close()

    return _once("removed", partition, paths, work_dir, run)


def read_removed(paths: Iterable[str]) -> list[tuple[str, str, int, str]]:
    """(domain, source_file, record, kept id) of the documents removed as duplicates, from
    `FindDuplicates`' files of one output shard."""
    table = read_parts(sorted(paths))
    if table is None:
        return []
    columns = [table.column(c).to_pylist() for c in _REMOVED.names[:4]]
    return list(zip(*columns, strict=True))


def removed_scores(path: str) -> list[tuple[str, np.ndarray]]:
    """(domain, scores) of the documents removed as duplicates in one of `FindDuplicates`' files: they
    are no candidates of the top-k cut-off."""
    table = read_parts([path])
    if table is None:
        return []
    domains = np.asarray(table.column(S.DOMAIN).to_pylist(), dtype=object)
    scores = np.asarray(table.column("score"), np.float64)
    return [(d, scores[domains == d]) for d in sorted(set(domains.tolist()))]


class FindDuplicates(beam.PTransform):
    """Record batches (documents with `drop_reason` null are candidates) -> (shard, file) of the
    documents removed as duplicates (`read_removed`) per output shard of `num_shards`. Only file names
    go through the runner."""

    def __init__(self, opts: DedupOptions, score_column: str | None, work_dir: str, num_shards: int) -> None:
        super().__init__()
        self._opts = opts
        self._score_column = score_column
        self._dir = work_dir
        self._num_shards = num_shards

    def expand(self, batches):
        args = (self._dir, self._opts.edge_partitions)
        signatures = batches | "Signatures" >> beam.ParDo(
            _SignaturesFn(self._opts, self._score_column, self._dir)
        ).with_outputs("bands", "nodes", "ids")
        labelled = (
            signatures.bands
            | "Buckets" >> beam.GroupByKey()
            | "CandidateEdges" >> beam.FlatMap(_bands_step(*args))
            | "Components" >> ConnectedComponents(*args, self._opts.rounds)
        )
        return (
            (
                labelled | "TagLabels" >> beam.MapTuple(lambda p, f: (p, ("label", f))),
                signatures.nodes | "TagNodes" >> beam.MapTuple(lambda p, f: (p, ("node", f))),
                signatures.ids | "TagIds" >> beam.Map(lambda f: (0, ("ids", f))),
            )
            | "Gather" >> beam.Flatten()
            | "ByNodePartition" >> beam.GroupByKey()
            | "Join" >> beam.FlatMap(_join_step, *args)
            | "ByLabel" >> beam.GroupByKey()
            | "Removed" >> beam.FlatMap(_removed_step, self._dir, self._num_shards)
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
