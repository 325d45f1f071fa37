"""Live document counts from the score job's worker processes, the pre-count that gives the total,
and the law fit's search total."""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from datamixer.commands._common import stage_progress
from pipeline import read
from pipeline.progress import COUNTER_DIR_ENV, document_progress, documents_done, worker_documents
from pipeline.read import count_records

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """A tracker that keeps what it was told: (description, total, unit) and every advance."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int | None, str]] = []
        self.advances: list[int] = []

    @contextlib.contextmanager
    def __call__(self, description: str, total: int | None = None, unit: str = ""):
        self.opened.append((description, total, unit))
        yield self.advances.append


def _worker(n_batches: int, size: int) -> subprocess.CompletedProcess:
    """A separate process that reports batches as a Beam worker does (it inherits the environment)."""
    loop = f"for _ in range({n_batches}): documents_done({size})"
    code = f"from pipeline.progress import documents_done\n{loop}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_worker_processes_reach_the_counter_through_their_files():
    track = Recorder()
    with document_progress(track, total=70):
        directory = os.environ[COUNTER_DIR_ENV]
        _worker(3, 10)
        _worker(4, 10)
        assert worker_documents(directory) == 70
        documents_done(5)  # a batch finished in this process goes to the listener, not to a file
        assert worker_documents(directory) == 70
    assert track.opened == [("score job", 70, "documents")]
    assert sum(track.advances) == 75
    assert not Path(directory).exists() and COUNTER_DIR_ENV not in os.environ


def test_settle_adds_only_what_the_counters_missed():
    track = Recorder()
    with document_progress(track, total=50) as settle:
        _worker(2, 10)
        settle(50)  # applied after the last poll of the files
    assert sum(track.advances) == 50


def test_non_terminal_output_is_one_line_with_the_total():
    buffer = io.StringIO()
    track = functools.partial(stage_progress, console=Console(file=buffer, force_terminal=False))
    with document_progress(track, total=40) as settle:
        _worker(3, 10)
        settle(40)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("score job: 40/40 documents in ")


def test_record_count_matches_the_readers_split(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "a"}\n\n  \n{"text": "b"}\n{"text": "c"}')  # blank lines are not records
    pq.write_table(pa.table({"text": ["x", "y", "z", "w"]}), tmp_path / "b.parquet")
    inputs = {"one": [str(jsonl)], "two": [str(tmp_path / "*.parquet")]}
    assert count_records(inputs) == 7
    assert count_records(inputs, max_bytes=10) is None  # too much JSONL to count cheaply


@pytest.mark.slow
def test_multi_process_direct_runner_counts_every_document_live(tmp_path):
    from pipeline.job import ScoreJobConfig, run_score_job

    for domain in ("a", "b"):
        rows = [
            json.dumps({"id": f"{domain}{i}", "text": f"document {i} of {domain} " * 5}) for i in range(300)
        ]
        (tmp_path / f"{domain}.jsonl").write_text("\n".join(rows) + "\n")
    inputs = {d: [str(tmp_path / f"{d}.jsonl")] for d in ("a", "b")}
    job = ScoreJobConfig(inputs=inputs, output=str(tmp_path / "out"), vocab_size=300)
    track = Recorder()
    flags = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    with document_progress(track, total=count_records(inputs)):  # no settle: live counts only
        result = run_score_job(job, beam_args=flags)
    assert track.opened[0][1] == 600 == result["in"]
    assert sum(track.advances) == result["scored"] == 600


@pytest.mark.parametrize("search", ["basinhopping", "least_squares"])
def test_law_fit_runs_the_searches_it_announces(search):
    import numpy as np
    import pandas as pd

    from mixer.laws import AdditiveLaw
    from mixer.laws.fitting import counting_searches

    rng = np.random.default_rng(0)
    rows = []
    for i, h in enumerate(rng.dirichlet([1.0, 1.0, 1.0], size=8)):
        for n in (2e4, 5e4):
            for d in (4e4, 8e4, 1.6e5):
                loss = 2 + 1 / (1 + 2 * h[0] ** 0.5 + h[1]) + 30 / n**0.3 + 40 / d**0.3
                weights = {"h_a": h[0], "h_b": h[1], "h_c": h[2]}
                rows.append({"mixture": f"m{i}", "N": n, "D": d, **weights, "loss": loss})
    table = pd.DataFrame(rows)
    law = AdditiveLaw(n_starts=12, n_restarts=2, niter=1, n_bootstrap=3, search=search, seed=0)
    seen: list[int] = []
    with counting_searches(seen.append):
        law.fit(table)
    assert sum(seen) == law.n_searches(len(table))


def test_record_count_is_the_readers_over_read_blocks(tmp_path, monkeypatch):
    """Lines across many small read blocks (a line cut by every block end), blank lines of every kind of
    whitespace, lines that start with whitespace and hold a record, no newline at the end (after a record
    or a blank line), gzip: the count is the number of records the reader's line chunks hold."""
    monkeypatch.setattr(read, "_READ_BLOCK", 7)
    rng = random.Random(5)
    kinds = ['{"text": "a b"}', "", "  ", "\t\r", ' {"text": "c"}', '{"text": "' + "d" * 30 + '"}', "\x0b"]
    text = "\n".join(rng.choice(kinds) for _ in range(300))
    (tmp_path / "a.jsonl").write_text(text + '\n{"text": "last"}')
    (tmp_path / "b.jsonl").write_text(text + "\n \t")  # ends in a blank line without a newline
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    for name in ("a.jsonl", "b.jsonl", "c.jsonl.gz"):
        with read._open_jsonl(str(tmp_path / name)) as stream:
            expected = sum(len(numbers) for numbers, _ in read._line_chunks(stream, 16, read.BATCH_BYTES))
        assert count_records({"one": [str(tmp_path / name)]}) == expected > 100
