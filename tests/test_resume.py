"""`datamixer score --resume`: a job killed with SIGKILL part-way and run again with `--resume` scores
only the files (or blocks of a large file) it had not finished, does not write again the shards it
had committed, and writes the uninterrupted run's bytes; other options, another model file or a
changed input file are never served from stale units."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixer.files import MARKER
from pipeline import job as score_job
from pipeline import resume as resume_module
from pipeline import schema as S
from pipeline.job import ScoreJobConfig, run_score_job
from pipeline.progress import document_progress
from pipeline.read import ReadOptions, read_block, read_file
from pipeline.registry import ScorerConfig
from pipeline.resume import STATE_FILE, ResumeRefused, line_blocks, open_state, resume_path
from pipeline.select import Selection

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
FILES = 8

# Runs the CLI, SIGKILLing its own process when the job starts reading its KILL_AT-th unit (a file or
# a block of one; the DirectRunner's in-memory mode reads and stages units one after the other in
# this process), once it has written KILL_AT=shard:N shards, or when it starts the last step of the
# commit (KILL_AT=commit: after every shard is written). BLOCK_BYTES sets the size of blocks.
KILLING_CLI = """
import os, signal, sys
import pipeline.job as job, pipeline.resume as resume
resume.BLOCK_BYTES = int(os.environ["BLOCK_BYTES"])
started, shards, kill_at = [], [], os.environ["KILL_AT"]
def starting(read):
    def reading(domain, path, opts, *block):
        started.append(path)
        if str(len(started)) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        yield from read(domain, path, opts, *block)
    return reading
def recording(record):
    def shard_written(self, *args):
        record(self, *args)
        shards.append(args[0])
        if f"shard:{len(shards)}" == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return shard_written
def committing(*args):
    os.kill(os.getpid(), signal.SIGKILL)
job.read_file, job.read_block = starting(job.read_file), starting(job.read_block)
resume.ShardCommits.record = recording(resume.ShardCommits.record)
if kill_at == "commit":
    job._commit = committing
from datamixer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _lines(prefix: str, n: int, bad: bool) -> bytes:
    words = "the quick brown fox jumps over a lazy dog while seven wizards box jolly quiz".split()
    texts = [" ".join(words[(i * k) % len(words)] for k in range(1, 30)) for i in range(n)]
    rows = [json.dumps({"id": f"{prefix}-{i}", "text": text}) for i, text in enumerate(texts)]
    if bad:  # a dead letter that the staged unit must carry to the resumed run
        rows.insert(n // 2, '{"text": ')
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return _train(tmp_path_factory.mktemp("model") / "q.bin", seed_text="history")


def _train(path: Path, seed_text: str) -> str:
    from scorers.fasttext import FastTextQualityClassifier

    prose = [f"a fine sentence about {seed_text} number {i} and its people" for i in range(60)]
    code = [f"def f{i}(x): return x + {i}  # code" for i in range(60)]
    return str(FastTextQualityClassifier(dim=8, bucket=5_000, epoch=5).fit(prose, code).save(path))


def _inputs(root: Path, scale: int = 1) -> dict[str, list[str]]:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(FILES):
        domain = "web" if i % 2 else "books"
        docs = (40 + 10 * i) * scale
        (root / f"{domain}-{i}.jsonl").write_bytes(_lines(f"{domain}{i}", docs, bad=i % 3 == 0))
    return {d: [str(root / f"{d}-*.jsonl")] for d in ("books", "web")}


def _config(inputs: dict[str, list[str]], out: Path, model: str, **kw) -> ScoreJobConfig:
    kw.setdefault("selection", Selection(keep_top=0.5))
    scorer = ScorerConfig("fasttext", model)
    return ScoreJobConfig(inputs=inputs, output=str(out), scorer=scorer, vocab_size=300, **kw)


def _cli_args(inputs: dict[str, list[str]], out: Path, model: str, *extra: str) -> list[str]:
    args = ["score", "--model", model, "--output", str(out), "--keep-top", "0.5", "--vocab-size", "300"]
    for domain, globs in inputs.items():
        args += ["--input", globs[0], "--domain", domain]
    return [*args, "--resume", *extra]


def _kill_part_way(
    inputs: dict[str, list[str]],
    out: Path,
    model: str,
    kill_at: int | str,
    *extra: str,
    block_bytes: int = resume_module.BLOCK_BYTES,
) -> int:
    """Run `score --resume` until it starts its `kill_at`-th unit, SIGKILLed there; the finished units."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KILL_AT": str(kill_at), "BLOCK_BYTES": str(block_bytes)}
    command = [sys.executable, "-c", KILLING_CLI, *_cli_args(inputs, out, model, *extra), "--", *IN_MEMORY]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return len(list((resume_path(out) / "units").glob("*.done")))


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def _owned(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


class Reads(list):
    """Paths of the units the in-process job starts reading (in-memory runner), one per unit, and the
    records (documents and read dead letters) it reads."""

    records = 0


@pytest.fixture
def files_read(monkeypatch) -> Reads:
    read = Reads()

    def starting(original):
        def reading(domain, path, opts, *block):
            read.append(path)
            for batch, dead in original(domain, path, opts, *block):
                read.records += len(dead) + (0 if batch is None else batch.num_rows)
                yield batch, dead

        return reading

    monkeypatch.setattr(score_job, "read_file", starting(score_job.read_file))
    monkeypatch.setattr(score_job, "read_block", starting(score_job.read_block))
    return read


@pytest.fixture
def bpe_trained(monkeypatch) -> list[int]:
    """Vocabulary sizes of the BPE tokenizers the in-process job trains."""
    from pipeline import tokenize

    trained: list[int] = []
    original = tokenize.train_byte_level_bpe

    def training(texts, vocab_size, **kw):
        trained.append(vocab_size)
        return original(texts, vocab_size, **kw)

    monkeypatch.setattr(tokenize, "train_byte_level_bpe", training)
    monkeypatch.setattr(score_job, "train_byte_level_bpe", training)
    return trained


@pytest.fixture(scope="module")
def eight_files(tmp_path_factory, model) -> tuple[dict[str, list[str]], dict[str, str], dict]:
    """The eight input files (not to be changed), and the hashes and result of a run without --resume."""
    root = tmp_path_factory.mktemp("eight")
    inputs = _inputs(root / "data")
    result = run_score_job(_config(inputs, root / "clean", model), beam_args=IN_MEMORY)
    return inputs, _hashes(root / "clean"), result


def test_a_job_killed_part_way_resumes_its_unfinished_files_to_the_same_bytes(
    tmp_path, model, eight_files, files_read, bpe_trained
):
    inputs, clean_hashes, clean = eight_files
    out = tmp_path / "out"
    finished = _kill_part_way(inputs, out, model, kill_at=5)
    assert finished == 4  # the four files read before the kill, each with its marker
    left = _owned(tmp_path, "out")  # the killed run's lock and temporary, and its resume state
    assert {".out.lock", ".out.resume"} <= set(left) and any(n.startswith(".out.tmp-") for n in left)

    advances: list[int] = []

    @contextlib.contextmanager
    def track(description: str, total: int | None = None, unit: str = ""):
        yield advances.append

    with document_progress(track):
        resumed = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert (resumed["files_resumed"], resumed["files_scored"]) == (4, FILES - 4)
    assert sum(advances) == resumed["scored"]  # the progress bar counts the finished units' documents
    assert len(files_read) == FILES - 4  # the finished files were not read again
    assert bpe_trained == []  # the killed run's tokenizer, kept in the resume state
    assert _hashes(out) == clean_hashes  # every output file, byte for byte
    assert MARKER in _hashes(out) and resumed["dead_letter"] == clean["dead_letter"] == 3
    assert {k: v for k, v in resumed.items() if k not in ("seconds", "docs_per_s", "output")} == {
        **{k: v for k, v in clean.items() if k not in ("seconds", "docs_per_s", "output")},
        **{"files_resumed": 4, "files_scored": FILES - 4, "units_resumed": 4, "units_scored": FILES - 4},
    }
    assert _owned(tmp_path, "out") == []  # state, temporaries and lock all gone after the commit


@pytest.mark.slow
def test_other_options_a_new_model_or_a_changed_file_never_reuse_stale_units(tmp_path, model, files_read):
    inputs = _inputs(tmp_path / "data")
    out = tmp_path / "out"
    assert _kill_part_way(inputs, out, model, 4) == 3
    other = _config(inputs, out, model, resume=True, read=ReadOptions(max_chars=500, oversize="truncate"))
    result = run_score_job(other, beam_args=IN_MEMORY)
    assert (result["files_resumed"], len(files_read)) == (0, FILES)
    clean = tmp_path / "clean"
    truncated = _config(inputs, clean, model, read=ReadOptions(max_chars=500, oversize="truncate"))
    run_score_job(truncated, beam_args=IN_MEMORY)
    assert _hashes(out) == _hashes(clean)

    retrained = tmp_path / "model" / "q.bin"
    retrained.parent.mkdir()
    retrained.write_bytes(Path(model).read_bytes())
    assert _kill_part_way(inputs, out, str(retrained), 4) == 3
    _train(retrained, seed_text="science")  # the same path and options, another model
    files_read.clear()
    result = run_score_job(_config(inputs, out, str(retrained), resume=True), beam_args=IN_MEMORY)
    assert (result["files_resumed"], len(files_read)) == (0, FILES)

    assert _kill_part_way(inputs, out, model, 4) == 3
    markers = [json.loads(p.read_text()) for p in (resume_path(out) / "units").glob("*.done")]
    changed = Path(markers[0]["source"])
    changed.write_bytes(changed.read_bytes() + _lines("extra", 3, bad=False))
    files_read.clear()
    result = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert result["files_resumed"] == 2 and sorted(files_read) == sorted(
        {str(p) for p in (tmp_path / "data").iterdir()} - {m["source"] for m in markers[1:]}
    )
    run_score_job(_config(inputs, clean, model), beam_args=IN_MEMORY)
    assert _hashes(out) == _hashes(clean)


def _shard_files(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of each shard file that the killed run committed (with its marker)."""
    shards = resume_path(out) / "shards"
    done = [json.loads(p.read_text()) for p in shards.glob("*.done")]
    return {
        name: (os.stat(shards / name).st_ino, os.stat(shards / name).st_mtime_ns)
        for d in done
        for name, *_ in d["files"]
    }


@pytest.fixture
def shards_written(monkeypatch) -> list[str]:
    """Names of the shard files the in-process job writes."""
    written: list[str] = []

    def noting(write):
        def writing(rows, path, schema):
            written.append(os.path.basename(path))
            write(rows, path, schema)

        return writing

    monkeypatch.setattr(score_job, "write_shard", noting(score_job.write_shard))  # dead letters
    monkeypatch.setattr(score_job, "write_row_groups", noting(score_job.write_row_groups))  # documents
    return written


def test_a_job_killed_in_its_commit_does_not_write_its_committed_shards_again(
    tmp_path, model, eight_files, files_read, shards_written
):
    inputs, clean_hashes, _ = eight_files
    out = tmp_path / "out"
    assert _kill_part_way(inputs, out, model, "shard:2") == FILES  # every unit staged, 2 of 4 shards
    committed = _shard_files(out)
    assert len(committed) == 4  # the scored and dead-letter files of two shards

    resumed = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert (resumed["files_resumed"], resumed["files_scored"], files_read) == (FILES, 0, [])
    assert len(shards_written) == 4 and not set(shards_written) & set(committed)  # two shards written
    after = {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in committed}
    assert after == committed  # the very files the killed run wrote, linked into the output
    assert _hashes(out) == clean_hashes


@pytest.mark.slow
def test_a_committed_shard_holding_a_changed_file_is_written_again(tmp_path, model, shards_written):
    import pyarrow.parquet as pq

    inputs = _inputs(tmp_path / "data")
    out = tmp_path / "out"
    assert _kill_part_way(inputs, out, model, "shard:2") == FILES
    committed = _shard_files(out)
    scored = sorted(name for name in committed if name.startswith("scored-"))
    changed = Path(pq.read_table(resume_path(out) / "shards" / scored[0]).column(S.SOURCE)[0].as_py())
    changed.write_bytes(changed.read_bytes() + _lines("extra", 3, bad=False))

    resumed = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert resumed["files_resumed"] == FILES - 1 and scored[0] in shards_written
    clean = run_score_job(_config(inputs, tmp_path / "clean", model), beam_args=IN_MEMORY)
    assert _hashes(out) == _hashes(tmp_path / "clean") and resumed["in"] == clean["in"]


@pytest.mark.slow
def test_a_job_killed_after_its_shards_resumes_with_nothing_to_score_or_write(
    tmp_path, model, eight_files, files_read, shards_written
):
    inputs, clean_hashes, _ = eight_files
    out = tmp_path / "out"
    assert _kill_part_way(inputs, out, model, "commit") == FILES
    assert len(_shard_files(out)) == 8
    resumed = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert (resumed["files_resumed"], resumed["files_scored"], files_read, shards_written) == (
        FILES,
        0,
        [],
        [],
    )
    assert _hashes(out) == clean_hashes


# --- one large file, resumed by blocks ---------------------------------------------------------


def _big_file(path: Path, lines: int) -> int:
    """A JSONL file with bad records and blank lines spread over it, and no newline at its end."""
    body = _lines("big", lines, bad=True).replace(b"\n", b"\n\n", 3)  # blank lines 2, 4, 6
    body += b'{"id": "big-last", "text": ' + b"[1, 2]}\n" + _lines("tail", 40, bad=True).rstrip(b"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return body.count(b"\n") + 1


def test_line_blocks_cut_at_line_ends_and_number_lines_from_the_file_start(tmp_path):
    path = tmp_path / "big.jsonl"
    lines = _big_file(path, 400)
    data = path.read_bytes()
    blocks = line_blocks(str(path), 10_000)
    assert [b[0] for b in blocks] == list(range(len(blocks))) and len(blocks) > 3
    assert blocks[0][1] == 0 and blocks[-1][2] == len(data)
    for (_, start, end, first), following in zip(blocks, blocks[1:], strict=False):
        assert end - start >= 10_000 and data[end - 1 : end] == b"\n" and following[1] == end
        assert following[3] == first + data[start:end].count(b"\n")  # line numbers from the file start
    assert blocks[-1][3] + data[blocks[-1][1] :].count(b"\n") == lines
    assert line_blocks(str(path), len(data)) == [(0, 0, len(data), 1)]


def test_line_blocks_of_a_file_that_shrinks_while_it_is_read_raise(tmp_path, monkeypatch):
    """A file shorter than its size when it was looked at: a clear error, not a read that never ends."""
    path = tmp_path / "big.jsonl"
    _big_file(path, 400)
    real = os.fstat

    def larger(fd: int) -> os.stat_result:
        stat = list(real(fd))
        stat[6] += 10_000  # st_size
        return os.stat_result(stat)

    monkeypatch.setattr(resume_module.os, "fstat", larger)
    with pytest.raises(OSError, match="ended at byte"):
        line_blocks(str(path), 4_000)


def _big_input(directory: Path, fmt: str) -> tuple[Path, int, dict[tuple, int]]:
    """(a large JSONL or Parquet file with bad records, block size, records of each of its blocks)."""
    directory.mkdir(parents=True)
    if fmt == "jsonl":
        path = directory / "big.jsonl"
        _big_file(path, 3_000)
        text = path.read_bytes()
        blocks = resume_module.file_blocks(str(path), 64_000) or []
        counts = [
            sum(1 for line in text[start:end].split(b"\n") if line.strip()) for _, start, end, _ in blocks
        ]
        return path, 64_000, dict(zip(blocks, counts, strict=True))
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [json.loads(line)["text"] for line in _lines("big", 3_000, bad=False).splitlines()]
    texts = [None if i % 500 == 7 else " " if i == 1234 else t for i, t in enumerate(texts)]
    path = directory / "big.parquet"
    table = pa.table({"id": [f"big-{i}" for i in range(len(texts))], "text": texts})
    pq.write_table(table, path, row_group_size=250)
    blocks = resume_module.row_group_blocks(str(path), 1)  # a block per row group
    return path, 1, {block: 250 for block in blocks}


def test_large_plain_jsonl_and_parquet_files_are_cut_into_blocks_compressed_ones_stay_whole(
    tmp_path, monkeypatch
):
    import gzip

    jsonl, _, _ = _big_input(tmp_path / "jsonl", "jsonl")
    parquet, _, _ = _big_input(tmp_path / "parquet", "parquet")
    compressed = tmp_path / "big.jsonl.gz"
    compressed.write_bytes(gzip.compress(jsonl.read_bytes()))
    monkeypatch.setattr(resume_module, "BLOCK_BYTES", 64_000)
    size = jsonl.stat().st_size
    blocks = resume_module.file_blocks(str(jsonl)) or []
    assert len(blocks) == round(size / 64_000) > 3  # equal blocks of about BLOCK_BYTES
    target = -(-size // len(blocks))
    assert blocks == line_blocks(str(jsonl), target)
    longest = max(map(len, jsonl.read_bytes().split(b"\n"))) + 1
    sizes = [end - start for _, start, end, _ in blocks]
    assert all(target <= n <= target + longest for n in sizes[:-1])
    assert sizes[-1] >= target - len(blocks) * longest
    assert resume_module.file_blocks(str(compressed)) is None  # a compressed stream has no offsets
    monkeypatch.setattr(resume_module, "BLOCK_BYTES", 1)
    assert resume_module.file_blocks(str(parquet)) == resume_module.row_group_blocks(str(parquet), 1)
    assert len(resume_module.file_blocks(str(parquet)) or []) == 12  # a block per row group
    monkeypatch.setattr(resume_module, "BLOCK_BYTES", jsonl.stat().st_size)
    assert resume_module.file_blocks(str(jsonl)) is None  # not over BLOCK_BYTES: one unit
    monkeypatch.setattr(resume_module, "BLOCK_BYTES", parquet.stat().st_size)
    assert resume_module.file_blocks(str(parquet)) is None  # one run of row groups: one unit


def _note_worker(unit: tuple, directory: str) -> None:
    """Leave the unit's position and this worker's pid in `directory` (a test's Beam step)."""
    Path(directory, str(unit[0])).write_text(str(os.getpid()))


def test_every_worker_of_a_direct_runner_reads_an_equal_share_of_every_file(tmp_path, monkeypatch):
    """Files cut into a multiple of the workers' blocks and dealt in turn: a multi_processing
    DirectRunner, reading them as the job does (Create, then Reshuffle), gives each worker the same
    bytes of every file up to a line; a file too small to cut goes after the cut ones, whole."""
    import apache_beam as beam
    from apache_beam.internal.cloudpickle import cloudpickle
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.direct_workers import direct_workers

    monkeypatch.setattr(resume_module, "MIN_BLOCK_BYTES", 10_000)
    files = []
    for name, lines in [("a", 3_000), ("b", 1_100), ("c", 60)]:  # about 290, 106 and 6 kB
        _big_file(tmp_path / f"{name}.jsonl", lines)
        files.append((name, str(tmp_path / f"{name}.jsonl")))
    sizes = {path: os.path.getsize(path) for _, path in files}
    longest = max(len(line) + 1 for path in sizes for line in Path(path).read_bytes().split(b"\n"))
    size = resume_module.block_bytes(sum(sizes.values()), 2)
    units = resume_module.units_of(files, resume_module.blocks_of(files, size, 2))
    order = resume_module.dealing_order(units, sizes, 2)
    assert [u[0] for u in order if u[2] is None] == ["c"] == [order[-1][0]]  # whole, and last
    counts = {name: sum(1 for u in units if u[0] == name) for name, _ in files}
    assert counts["a"] > counts["b"] > 2 and counts["a"] % 2 == counts["b"] % 2 == 0
    seen = tmp_path / "seen"
    seen.mkdir()
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests
    try:
        with direct_workers(options), beam.Pipeline(options=options) as pipeline:
            _ = (
                pipeline
                | beam.Create(list(enumerate(order)), reshuffle=False)
                | beam.Reshuffle()
                | beam.Map(_note_worker, str(seen))
            )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    pids = [(seen / str(i)).read_text() for i in range(len(order))]
    assert len(set(pids)) == 2 and all(pids[i] == pids[i % 2] for i in range(len(pids)))  # dealt in turn
    for name in ("a", "b"):
        shares = {pid: 0 for pid in set(pids)}
        for pid, (domain, _, block) in zip(pids, order, strict=True):
            if domain == name:
                shares[pid] += block[2] - block[1]
        # blocks of at least the target, cut after a line: the first worker's k/2 exceed the rest by
        # under a line each (a block's worth with an odd count)
        assert max(shares.values()) - min(shares.values()) <= counts[name] * longest, (name, shares)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_file_read_block_by_block_gives_the_records_of_the_whole_file(tmp_path, fmt):
    data, _, records = _big_input(tmp_path / "data", fmt)

    def rows(batches) -> tuple[list, list]:
        docs: list = []
        dead: list = []
        for batch, bad in batches:
            docs += [] if batch is None else batch.to_pylist()
            dead += bad
        return docs, dead

    whole = rows(read_file("web", str(data), ReadOptions(batch_size=100)))
    blocks = [rows(read_block("web", str(data), ReadOptions(), *block[1:])) for block in sorted(records)]
    assert [len(d) + len(b) for d, b in blocks] == [records[block] for block in sorted(records)]
    assert ([d for docs, _ in blocks for d in docs], [b for _, bad in blocks for b in bad]) == whole
    assert whole[1]  # the bad records are dead letters with their record numbers in the file


@pytest.mark.slow  # ~8 s each; a file read by blocks is also checked in test_pipeline_job
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_one_large_file_killed_part_way_resumes_only_its_unfinished_blocks(
    tmp_path, model, files_read, monkeypatch, fmt
):
    data, block_bytes, records = _big_input(tmp_path / "data", fmt)
    blocks = sorted(records)
    inputs = {"web": [str(data)]}
    out = tmp_path / "out"
    assert len(blocks) >= 6
    assert _kill_part_way(inputs, out, model, 4, block_bytes=block_bytes) == 3  # three blocks staged
    markers = [json.loads(p.read_text()) for p in (resume_path(out) / "units").glob("*.done")]
    staged = {tuple(m["block"]) for m in markers}
    assert staged < set(blocks)

    monkeypatch.setattr(resume_module, "BLOCK_BYTES", block_bytes)
    resumed = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert (resumed["units_resumed"], resumed["units_scored"]) == (3, len(blocks) - 3)
    assert (resumed["files_resumed"], resumed["files_scored"]) == (0, 1)
    assert len(files_read) == len(blocks) - 3
    left = sum(records[block] for block in set(blocks) - staged)
    assert files_read.records == left < sum(records.values())  # each record left read once, no other

    files_read.clear()
    clean = run_score_job(_config(inputs, tmp_path / "clean", model), beam_args=IN_MEMORY)
    assert files_read == [str(data)] * len(blocks)  # without --resume too, by the same blocks
    assert _hashes(out) == _hashes(tmp_path / "clean")
    assert resumed["dead_letter"] == clean["dead_letter"] > 0 and resumed["in"] == clean["in"]


def test_resume_is_refused_where_it_cannot_work_and_never_touches_what_it_did_not_write(tmp_path, model):
    inputs = _inputs(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(ResumeRefused, match="direct runner; on the dataflow runner Beam retries"):
        run_score_job(_config(inputs, out, model, resume=True), runner="dataflow")
    from pipeline.dedup import DedupOptions

    with pytest.raises(ResumeRefused, match="--dedup"):
        run_score_job(_config(inputs, out, model, resume=True, dedup=DedupOptions(method="exact")))
    foreign = resume_path(out)
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ResumeRefused, match="not written by datamixer"):
        run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    run_score_job(_config(inputs, out, model), beam_args=IN_MEMORY)  # without --resume: left alone
    assert (foreign / "notes.txt").read_text() == "mine"
    (foreign / "notes.txt").unlink()
    foreign.rmdir()


def test_a_run_without_resume_clears_its_own_stale_state(tmp_path, model):
    inputs = _inputs(tmp_path / "data")
    out = tmp_path / "out"
    state = open_state(out, "the digest of a killed --resume run", resume=True)
    (state.units_dir / "staged.arrow").write_bytes(b"parts of a unit")
    assert (resume_path(out) / STATE_FILE).is_file()
    result = run_score_job(_config(inputs, out, model), beam_args=IN_MEMORY)
    assert "files_resumed" not in result
    assert _owned(tmp_path, "out") == []


# --- the command line, two worker processes -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals the process group")
def test_cli_sigkill_with_two_workers_then_resume_gives_the_clean_bytes(tmp_path, model):
    inputs = _inputs(tmp_path / "data", scale=20)  # files that take a while: the kill lands part-way
    total = sum(
        len(resume_module.file_blocks(str(p), 100_000, 2) or [p]) for p in (tmp_path / "data").iterdir()
    )
    assert total > FILES  # most files are read by blocks, by both workers
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KILL_AT": "never", "BLOCK_BYTES": "100000"}
    workers = ["--", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    base = [sys.executable, "-c", KILLING_CLI]
    out, units = tmp_path / "out", resume_path(tmp_path / "out") / "units"
    job = subprocess.Popen(
        [*base, *_cli_args(inputs, out, model, *workers)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list(units.glob("*.done"))) < total // 2 and time.monotonic() < deadline:
        assert job.poll() is None, "the job ended before it could be killed"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the job and its two workers
    job.wait()
    finished = len(list(units.glob("*.done")))
    assert total // 2 <= finished < total

    done = subprocess.run([*base, *_cli_args(inputs, out, model, *workers)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert (result["units_resumed"], result["units_scored"]) == (finished, total - finished)
    clean = tmp_path / "clean"
    run_score_job(_config(inputs, clean, model), beam_args=IN_MEMORY)
    assert _hashes(out) == _hashes(clean)
    assert _owned(tmp_path, "out") == []


def test_a_recursive_glob_never_reads_the_resume_state(tmp_path, model):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.jsonl").write_bytes(_lines("a", 30, bad=False))
    out = tree / "scored"
    state = open_state(out, "the digest of a killed --resume run", resume=True)
    (state.units_dir / "staged.jsonl").write_bytes(_lines("staged", 5, bad=False))
    result = run_score_job(_config({"web": [str(tree / "**")]}, out, model), beam_args=IN_MEMORY)
    assert result["in"] == 30 and result["dead_letter"] == 0


def test_block_size_gives_each_direct_worker_several_blocks_between_the_bounds():
    mib = 1 << 20
    assert resume_module.block_bytes(1024 * mib, 2) == 1024 * mib // (2 * resume_module.BLOCKS_PER_WORKER)
    assert resume_module.block_bytes(4096 * mib, 2) == resume_module.BLOCK_BYTES  # large input: the cap
    assert resume_module.block_bytes(8 * mib, 2) == resume_module.MIN_BLOCK_BYTES  # small: no tiny blocks
    for workers in (0, 1):  # one worker, or a runner that splits work itself: the largest blocks
        assert resume_module.block_bytes(200 * mib, workers) == resume_module.BLOCK_BYTES


def test_units_dealt_round_two_workers_give_even_shares_and_files_in_a_row():
    """The order a DirectRunner deals the units in (unit i to worker i mod n): shares within about a
    block, every other block of a file to each worker, and a worker's blocks of a file one after the
    other; whole files of unequal sizes still go largest first."""
    mib = 1 << 20
    blocks = {"/in/a.jsonl": (5, 13 * mib), "/in/b.jsonl": (3, 12 * mib), "/in/c.jsonl": (4, 13 * mib)}
    sizes = {path: count * size for path, (count, size) in blocks.items()}
    sizes.update({"/in/d.jsonl": 9 * mib, "/in/e.jsonl": 2 * mib, "/in/f.jsonl": 7 * mib})
    units = [("web", "/in/d.jsonl", None), ("code", "/in/e.jsonl", None), ("code", "/in/f.jsonl", None)]
    for path, (count, size) in blocks.items():
        domain = "code" if path.endswith("b.jsonl") else "web"
        jitter = [(7 * i + len(path)) % 5 for i in range(count)]  # blocks end at line ends: unequal bytes
        ends = [(i + 1) * size + jitter[i] for i in range(count)]
        units += [(domain, path, (i, i * size, ends[i], 1 + 100 * i)) for i in range(count)]
    ordered = resume_module.dealing_order(units[::-1], sizes)
    assert sorted(ordered) == sorted(units)

    def unit_bytes(unit):
        return sizes[unit[1]] if unit[2] is None else unit[2][2] - unit[2][1]

    shares = [ordered[worker::2] for worker in range(2)]
    totals = [sum(map(unit_bytes, share)) for share in shares]
    assert abs(totals[0] - totals[1]) <= 13 * mib  # a block at most
    for share in shares:
        paths = [unit[1] for unit in share]
        runs = [path for i, path in enumerate(paths) if i == 0 or paths[i - 1] != path]
        assert len(runs) == len(set(runs))  # each file's blocks in a row
        for path in blocks:
            indices = [unit[2][0] for unit in share if unit[1] == path]
            assert indices == list(range(indices[0], indices[0] + 2 * len(indices), 2))
    whole = [unit[1] for unit in ordered if unit[2] is None]
    assert whole == ["/in/d.jsonl", "/in/f.jsonl", "/in/e.jsonl"]  # largest first
