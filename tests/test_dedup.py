"""Deduplication: connected components in Beam against scipy, and planted exact / near copies of real
paragraphs (Python's reference documentation) found by the whole job."""

from __future__ import annotations

import json
import os
import random
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline import schema as S
from pipeline.dedup import (
    ConnectedComponents,
    DedupOptions,
    _bands_step,
    _edge_step,
    _join_step,
    _pairs,
    _removed_step,
    _representatives,
    _SignaturesFn,
    _write_edges,
    band_hashes,
    bucket_edges,
    large_star,
    mix64,
    node_ids,
    normalized_words,
    read_bands,
    read_removed,
    removed_scores,
    shingles,
)
from pipeline.job import ScoreJobConfig, run_score_job
from pipeline.read import ReadOptions, docs_batch
from pipeline.shards import PartWriters, read_parts, shard_of

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _component_minimum(edges: list[tuple[int, int]]) -> dict[int, int]:
    """Every node of `edges` -> its component's smallest node, by scipy (the reference)."""
    nodes = sorted({x for e in edges for x in e})
    index = {v: i for i, v in enumerate(nodes)}
    rows, cols = zip(*[(index[a], index[b]) for a, b in edges], strict=True)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    minimum: dict[int, int] = {}
    for v in nodes:
        minimum[labels[index[v]]] = min(minimum.get(labels[index[v]], v), v)
    return {v: minimum[labels[index[v]]] for v in nodes}


def _run_components(edges: list[tuple[int, int]], tmp_path, partitions: int = 4) -> None:
    work = str(tmp_path / "work")
    a, b = (np.array(x, np.uint64) for x in zip(*edges, strict=True))
    files = _write_edges(a, b, work, partitions, both_ways=True)
    with beam.Pipeline(argv=IN_MEMORY) as p:
        out = p | beam.Create(files) | ConnectedComponents(work, partitions, rounds=8)
        labelled = out | beam.Map(lambda f: read_parts([f[1]]).to_pylist())
        got = labelled | beam.FlatMap(lambda rows: [(r["a"], r["b"]) for r in rows])
        # every node (and label) appears with the minimum of its component, once the rounds settle
        assert_that(got | beam.Distinct(), equal_to(sorted(_component_minimum(edges).items())))


def test_components_match_scipy_on_random_graph_and_chain(tmp_path):
    rng = random.Random(3)
    ids = mix64(np.arange(2000, dtype=np.uint64)).tolist()  # nodes in random order, as node_ids gives
    edges = [(ids[rng.randrange(400)], ids[rng.randrange(400)]) for _ in range(260)]
    edges = [(a, b) for a, b in edges if a != b]
    path = [(ids[i], ids[i + 1]) for i in range(1000, 1300)]  # a long chain: needs the rounds to settle
    edges += path[::2] + path[1::2]
    assert sum(1 for v, m in _component_minimum(edges).items() if v != m) > 500
    _run_components(edges, tmp_path)


@pytest.mark.parametrize("rounds", [1, 8])
def test_representatives_are_kept_even_before_the_rounds_settle(tmp_path, rounds):
    """A 400-document chain over 4 partitions: with 8 rounds every document but the smallest id points
    at it; with 1 round some duplicates are missed, but no document is removed twice and every
    representative is kept."""
    n, work = 400, str(tmp_path / "work")
    ids = mix64(np.arange(n, dtype=np.uint64))  # node order is random; the representative is by id
    files = _write_edges(ids[:-1], ids[1:], work, 4, both_ways=True)
    nodes = pa.RecordBatch.from_pydict(
        {"node": ids, "rank": [0.0] * n, "id": [f"d{i:04d}" for i in range(n)], "domain": ["web"] * n}
        | {"source_file": ["a.jsonl"] * n, "record": list(range(1, n + 1))}
    )
    writers = PartWriters(work, 4)
    writers.write(nodes, (ids % np.uint64(4)).astype(np.int64))
    node_files = writers.close()

    def check(label_files):
        by_partition: dict[int, list] = {}
        for part, path in label_files:
            by_partition.setdefault(part, []).append(("label", path))
        for part, path in node_files:
            by_partition.setdefault(part, []).append(("node", path))
        joined = [f for item in by_partition.items() for f in _join_step(item, work, 4)]
        grouped: dict[int, list] = {}
        for part, path in joined:
            grouped.setdefault(part, []).append(path)
        pairs = [pair for item in grouped.items() for pair in _representatives(item)]
        removed = [(a[1], b[1]) for a, b in pairs]
        files = [f for item in grouped.items() for f in _removed_step(item, work, 3)]  # 3 output shards
        assert all(shard_of("web", "a.jsonl", r[2], 3) == s for s, f in files for r in read_removed([f]))
        assert sorted(read_removed(f for _, f in files)) == sorted((a[2], a[3], a[4], b[1]) for a, b in pairs)
        scores = [s for _, f in files for d, s in removed_scores(f) if d == "web"]
        assert sum(map(len, scores)) == len(pairs) and all((s == 0).all() for s in scores)
        gone = [a for a, _ in removed]
        assert len(gone) == len(set(gone)) and not {b for _, b in removed} & set(gone)
        assert "d0000" not in gone
        if rounds == 8:
            assert sorted(removed) == [(f"d{i:04d}", "d0000") for i in range(1, n)]
        else:
            assert len(removed) < n - 1  # one round does not settle a chain: duplicates are missed

    with beam.Pipeline(argv=IN_MEMORY) as p:
        labels = p | beam.Create(files) | ConnectedComponents(work, 4, rounds=rounds)
        assert_that(labels, check)


def test_a_step_deletes_its_inputs_and_a_retry_returns_the_same_files(tmp_path):
    work = str(tmp_path / "work")
    files = _write_edges(np.array([5, 9], np.uint64), np.array([3, 5], np.uint64), work, 1, both_ways=True)
    step = _edge_step(large_star, False, "large0", work, 2)
    element = (0, [path for _, path in files])
    first = step(element)
    assert not any(os.path.exists(path) for _, path in files)  # read once, then deleted
    assert step(element) == first  # a retried bundle whose inputs are gone: the same output files
    assert sorted(zip(*_pairs(read_parts([p for _, p in first])), strict=True)) == [(5, 3), (9, 3)]
    with pytest.raises(RuntimeError, match="lost input files"):
        _edge_step(large_star, False, "large1", work, 2)(element)


def test_bucket_edges_keep_connectivity_of_all_pairs():
    """Random buckets (several bands per document, keys shared at random): the star forest links the
    same documents as every pair that shares a key does, with one edge per linked document."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        nodes = mix64(rng.integers(0, 300, 2000).astype(np.uint64))
        keys = rng.integers(0, 600 + 100 * trial, 2000).astype(np.uint64)
        a, b = bucket_edges(keys, nodes)
        pairs = [
            (int(x), int(y))
            for k in np.unique(keys)
            for x in np.unique(nodes[keys == k])
            for y in np.unique(nodes[keys == k])
            if x < y
        ]
        expected = {v: m for v, m in _component_minimum(pairs).items() if v != m} if pairs else {}
        assert dict(zip(a.tolist(), b.tolist(), strict=True)) == expected
        assert len(a) == len(expected)


def _paragraphs(min_words: int = 200, n: int = 300) -> list[str]:
    """Real English prose: Python's reference documentation, cut into windows of `min_words` words,
    keeping windows that share few 5-grams with the ones already kept (an unrelated base set)."""
    topics = pytest.importorskip("pydoc_data.topics").topics
    seen: set[str] = set()
    out = []
    for key in sorted(topics):
        words = topics[key].split()
        for start in range(0, len(words) - min_words + 1, min_words):
            text = " ".join(words[start : start + min_words])
            grams = shingles(normalized_words(text), 5)
            if len(grams & seen) > 0.1 * len(grams) or not re.search(r"\bthe\b", text):
                continue
            seen |= grams
            out.append(text)
            if len(out) == n:
                return out
    return out


def _near_copy(text: str, rng: random.Random, changes: int = 3) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), changes):
        words[i] = rng.choice(["banana", "quietly", "seventeen", "orbit", "velvet"])
    return "Reposted from the archive:\n" + " ".join(words)


def _jaccard(a: str, b: str) -> float:
    x, y = shingles(normalized_words(a), 5), shingles(normalized_words(b), 5)
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    paragraphs = _paragraphs()
    if len(paragraphs) < 200:
        pytest.skip(f"only {len(paragraphs)} reference paragraphs in this Python's pydoc_data")
    rng = random.Random(0)
    originals = paragraphs[:100]
    records = [{"id": f"a-{i:04d}", "text": t} for i, t in enumerate(paragraphs)]
    records += [{"id": f"b-exact-{i:04d}", "text": t.upper() + "  "} for i, t in enumerate(originals[:50])]
    near = [_near_copy(t, rng) for t in originals[50:]]
    records += [{"id": f"b-near-{i:04d}", "text": t} for i, t in enumerate(near)]
    rng.shuffle(records)
    root = tmp_path_factory.mktemp("dedup")
    half = len(records) // 2
    for name, part in (("one", records[:half]), ("two", records[half:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    similarity = [_jaccard(a, b) for a, b in zip(originals[50:], near, strict=True)]
    return {"root": root, "n_unrelated": len(paragraphs) - 100, "similarity": similarity}


def _run(planted, method: str, name: str) -> pa.Table:
    out = planted["root"] / name
    config = ScoreJobConfig(
        inputs={"prose": [str(planted["root"] / "*.jsonl")]},
        output=str(out),
        dedup=DedupOptions(method),
        read=ReadOptions(batch_size=64),
    )
    result = run_score_job(config, beam_args=["--direct_running_mode=in_memory"])
    assert result["dropped_duplicate"] == result["in"] - result["kept"]
    return pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("scored-*.parquet"))])


def _check_clusters(table: pa.Table) -> dict[str, str]:
    rows = table.to_pylist()
    kept = {r[S.ID] for r in rows if r[S.KEEP]}
    removed = {r[S.ID]: r[S.DUPLICATE_OF] for r in rows if r[S.DROP_REASON] == "duplicate"}
    assert all(rep in kept for rep in removed.values())  # a cluster never loses all its members
    assert all((r[S.DUPLICATE_OF] is None) == (r[S.DROP_REASON] is None) for r in rows)
    return removed


def test_minhash_finds_planted_copies_and_spares_unrelated(planted):
    print(f"near copies: Jaccard {min(planted['similarity']):.3f}..{max(planted['similarity']):.3f}")
    removed = _check_clusters(_run(planted, "minhash", "minhash"))
    found = [
        f"a-{i:04d}" in (removed.get(f"b-exact-{i:04d}"), removed.get(f"b-near-{i - 50:04d}"))
        for i in range(100)
    ]
    for i in range(50):  # the representative is the smallest id: the original
        assert removed.get(f"b-exact-{i:04d}") in (f"a-{i:04d}", None)
    recall = np.mean(found)
    false_positives = sum(1 for i in range(100, 100 + planted["n_unrelated"]) if f"a-{i:04d}" in removed)
    print(f"recall {recall:.3f}, false positives {false_positives}/{planted['n_unrelated']}")
    assert recall >= 0.95, recall
    assert false_positives / planted["n_unrelated"] <= 0.01
    assert not any(k.startswith("a-") for k in removed)


def test_exact_finds_exact_copies_only(planted):
    removed = _check_clusters(_run(planted, "exact", "exact"))
    assert removed == {f"b-exact-{i:04d}": f"a-{i:04d}" for i in range(50)}


def test_threshold_and_options():
    assert DedupOptions().threshold == pytest.approx((1 / 14) ** (1 / 8))
    assert 0.71 < DedupOptions().threshold < 0.73
    with pytest.raises(ValueError, match="--dedup"):
        DedupOptions("fuzzy")
    with pytest.raises(ValueError, match="--dedup-scope"):
        DedupOptions(scope="shard")


def test_band_rows_go_through_files_and_group_exactly_by_key(tmp_path):
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(vocab) for _ in range(80)) for _ in range(60)]
    near = [t.replace(t.split()[40], "changed", 1) for t in base[:20]]
    texts = base + near + base[:5]  # near copies and exact copies
    batch = docs_batch("web", "a.jsonl", [f"d{i}" for i in range(len(texts))], texts, list(range(1, 86)))
    opts = DedupOptions(partitions=4, edge_partitions=2)
    fn = _SignaturesFn(opts, None, str(tmp_path / "bands"))
    fn.start_bundle()
    assert list(fn.process(batch)) == []  # nothing per document goes through the runner
    assert list(fn.process(batch.slice(40))) == []  # a second batch: document ordinals go on
    emitted = [(w.tag, w.value.value) for w in fn.finish_bundle()]
    bands = [v for tag, v in emitted if tag == "bands"]
    (ids_file,) = [v for tag, v in emitted if tag == "ids"]
    nodes = read_parts([v[1] for tag, v in emitted if tag == "nodes"])
    assert sorted(p for p, _ in bands) == [0, 1, 2, 3] and all(f[1] == ids_file for _, f in bands)
    rows = read_parts([path for _, (path, _) in bands])
    assert rows.num_rows == 14 * (85 + 45) and rows.schema.names == ["key", "gap"]  # 12 bytes a band
    assert read_parts([ids_file]).num_rows == 85 + 45  # a node id per document, in order
    assert sorted(nodes.column("record").to_pylist()) == sorted([*range(1, 86), *range(41, 86)])
    ids = node_ids(batch)
    assert len(set(ids.tolist())) == 85
    doc, keys = band_hashes(texts, ["web"] * len(texts), opts)
    stored = zip(*(x.tolist() for x in read_bands([f for _, f in bands])), strict=True)
    expected = list(zip(keys.tolist(), ids[doc].tolist(), strict=True))
    again = [row for row, d in zip(expected, doc.tolist(), strict=True) if d >= 40]  # the second batch's
    assert sorted(stored) == sorted(expected + again)
    a, b = bucket_edges(keys, ids[doc])
    component = dict(zip(a.tolist(), b.tolist(), strict=True))  # a star per component

    def same(i: int, j: int) -> bool:
        return component.get(int(ids[i]), int(ids[i])) == component.get(int(ids[j]), int(ids[j]))

    assert all(same(i, 80 + i) for i in range(5))  # exact copies share every band
    assert all(same(i, 60 + i) for i in range(20))  # one word in 80 changed: Jaccard about 0.88
    assert len({component.get(int(ids[i]), int(ids[i])) for i in range(60)}) == 60  # unrelated stay apart
    _, other = band_hashes(texts, ["code"] * len(texts), opts)
    assert not set(other.tolist()) & set(keys.tolist())  # a key is per scope (domain)


def test_band_files_go_once_read_and_node_id_files_with_the_join(tmp_path):
    """The candidate-edges step deletes its partition's band files but leaves the node-id files, which
    the other key partitions read; the join deletes them, after every key partition is done."""
    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa"] * 3 + ["one two three four five six"]
    batch = docs_batch("web", "a.jsonl", ["d0", "d1", "d2", "d3"], texts, [1, 2, 3, 4])
    work = str(tmp_path / "bands")
    fn = _SignaturesFn(DedupOptions(partitions=2, edge_partitions=1), None, work)
    fn.start_bundle()
    list(fn.process(batch))
    emitted = [(w.tag, w.value.value) for w in fn.finish_bundle()]
    (ids_file,) = [v for tag, v in emitted if tag == "ids"]
    by_partition: dict[int, list] = {}
    for tag, value in emitted:
        if tag == "bands":
            by_partition.setdefault(value[0], []).append(value[1])
    edges = [f for item in by_partition.items() for f in _bands_step(work, 1)(item)]
    assert not any(os.path.exists(band) for files in by_partition.values() for band, _ in files)
    assert os.path.exists(ids_file)
    a, b = _pairs(read_parts([path for _, path in edges]))
    ids = node_ids(batch).tolist()
    low = min(ids[:3])
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == sorted(
        [(n, low) for n in ids[:3] if n != low] + [(low, n) for n in ids[:3] if n != low]
    )  # the three copies, as a star both ways; d3 alone
    _join_step((0, [("ids", ids_file)]), work, 1)
    assert not os.path.exists(ids_file)
