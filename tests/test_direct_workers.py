"""DirectRunner workers forked by the job's zygote (pipeline.direct_workers)."""

from __future__ import annotations

import os
import signal
import sys

import apache_beam as beam
import pytest

from pipeline.direct_workers import _ZYGOTES, _Zygote, direct_workers
from pipeline.options import pipeline_options

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote is Linux only")
ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _collect(options, tmp_path) -> set[tuple[int, int]]:
    """(pid, parent pid) of every process that ran an element of a 200-element pipeline."""
    out = tmp_path / "pids"
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | beam.Create(range(200), reshuffle=True)
            | beam.Map(lambda x: f"{x} {os.getpid()} {os.getppid()}")
            | beam.io.WriteToText(str(out))
        )
    rows = [line.split() for f in tmp_path.glob("pids*") for line in f.read_text().splitlines()]
    assert sorted(int(x) for x, _, _ in rows) == list(range(200))  # every element once
    return {(int(pid), int(ppid)) for _, pid, ppid in rows}


def test_workers_are_forked_by_the_zygote(tmp_path):
    options = pipeline_options("direct", ARGS)
    with direct_workers(options):
        zygote = _ZYGOTES[-1]._process.pid
        pids = _collect(options, tmp_path)
    assert pids and {ppid for _, ppid in pids} == {zygote}
    assert zygote not in {pid for pid, _ in pids} and os.getpid() not in {pid for pid, _ in pids}
    assert not _ZYGOTES
    assert not os.path.exists(f"/proc/{zygote}")  # stopped and reaped with the job


@pytest.mark.slow
def test_without_the_zygote_beam_starts_its_workers_itself(tmp_path):
    options = pipeline_options("direct", ARGS)
    with direct_workers(options):
        zygote = _ZYGOTES[-1]
        zygote._process.send_signal(signal.SIGKILL)
        zygote._process.wait()
        pids = _collect(options, tmp_path)
    assert pids and {ppid for _, ppid in pids} == {os.getpid()}


def test_no_zygote_in_process():
    with direct_workers(pipeline_options("direct", ["--direct_running_mode=in_memory"])):
        assert not _ZYGOTES


def test_a_worker_that_fails_exits_with_1_and_its_traceback(capfd):
    """Beam's worker main fails (no pipeline options to read): the forked worker says why on stderr and
    exits with 1, without running on as a second zygote."""
    zygote = _Zygote([])
    try:
        worker = zygote.spawn({"PATH": os.environ.get("PATH", ""), "PIPELINE_OPTIONS": "not json"})
        assert worker is not None and worker.wait(60) == 1
    finally:
        zygote.close()
    assert "Traceback" in capfd.readouterr().err


@pytest.mark.parametrize("user", [None, "2"])
def test_the_zygote_loads_blas_single_threaded_unless_the_user_says(monkeypatch, user):
    """Its OpenBLAS threads would spin beside the workers (one per core already); a user's setting wins."""
    if user is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", user)
    zygote = _Zygote([])
    try:
        environ = open(f"/proc/{zygote._process.pid}/environ", "rb").read().split(b"\0")
    finally:
        zygote.close()
    assert f"OPENBLAS_NUM_THREADS={user or 1}".encode() in environ
