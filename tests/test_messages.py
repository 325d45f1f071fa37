"""What reaches the user's terminal: progress with counts and ETA on a terminal, one line per stage
otherwise, and none of Beam's warnings that say nothing about the run."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from datamixer.commands._common import NOISE, quiet_library_warnings, stage_progress
from pipeline.corpus import CorpusOptions, build_corpus
from pipeline.progress import counting_documents, document_progress, documents_done
from scorers.fasttext import FastTextQualityClassifier

REPO = Path(__file__).resolve().parents[1]


def test_one_line_per_stage_when_stderr_is_not_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    with stage_progress("proxy sweep", total=4, unit="runs", console=console) as advance:
        for _ in range(4):
            advance(1)
    with stage_progress("law fit", unit="local searches", console=console) as advance:
        advance(7)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("proxy sweep: 4/4 runs in ") and lines[0].endswith(" s")
    assert lines[1].startswith("law fit: 7 local searches in ")


def test_a_terminal_gets_a_bar_with_counts_and_eta():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with stage_progress("target training", total=6, unit="runs", console=console) as advance:
        advance(2)
        advance(4)
    text = buffer.getvalue()
    assert "target training" in text and "6/6" in text and "ETA" in text


def test_in_process_beam_steps_reach_the_document_counter():
    seen: list[int] = []
    with counting_documents(seen.append):
        documents_done(5)
        documents_done(3)
    documents_done(100)  # nobody listening: ignored
    assert seen == [5, 3]


def test_the_noise_filter_drops_only_the_named_messages(caplog):
    quiet_library_warnings()
    quiet_library_warnings()  # idempotent
    with caplog.at_level(logging.WARNING):
        logging.warning("apitools not found, and bigquery client libraries are not available")
        logging.warning("Tags %s requested in with_outputs() but not declared in type hints.", {"x"})
        logging.warning("a warning that matters")
    assert [r.getMessage() for r in caplog.records] == ["a warning that matters"]
    assert len(NOISE) == 2


def test_score_command_prints_no_beam_noise_and_one_progress_line(tmp_path):
    corpus = tmp_path / "corpus"
    build_corpus(corpus, CorpusOptions(max_bytes_per_domain=30_000))
    prose = [json.loads(line)["text"] for line in (corpus / "prose.jsonl").read_text().splitlines()]
    code = [json.loads(line)["text"] for line in (corpus / "code.jsonl").read_text().splitlines()]
    model = FastTextQualityClassifier(dim=8, bucket=5_000, epoch=3).fit(prose, code).save(tmp_path / "q.bin")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "datamixer",
            "score",
            "--input",
            str(corpus / "*.jsonl"),
            "--domain",
            "all",
            "--model",
            str(model),
            "--output",
            str(tmp_path / "scored"),
            "--keep-top",
            "0.5",
            "--vocab-size",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "apitools" not in run.stderr
    assert "requested in with_outputs()" not in run.stderr
    assert "WARNING" not in run.stderr
    documents = json.loads(run.stdout.strip().splitlines()[-1])["in"]
    progress = [line for line in run.stderr.splitlines() if line.startswith("score job:")]
    assert len(progress) == 1 and progress[0].startswith(f"score job: {documents}/{documents} documents in ")


def test_heads_detection_reports_every_probe():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from scorers import attention_influence as ai

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    rng = np.random.default_rng(0)
    probes = [
        ai.Probe([int(t) for t in rng.integers(1, 64, size=n)], (2, 5), (n - 3, n))
        for n in (12, 16, 20, 24, 28)
    ]
    seen: list[int] = []
    scores = ai.retrieval_head_scores(model, probes, batch_tokens=40, on_batch=seen.append)
    assert sum(seen) == len(probes) and len(seen) > 1  # several batches, each counted
    assert scores.shape == (2, 4)


def test_document_progress_ends_at_the_jobs_own_count():
    buffer = io.StringIO()
    track = functools.partial(stage_progress, console=Console(file=buffer, force_terminal=False))
    with document_progress(track) as settle:
        documents_done(30)  # batches finished in this process
        settle(100)  # the job's total: the rest ran in workers out of reach
    assert buffer.getvalue().startswith("score job: 100 documents in ")
