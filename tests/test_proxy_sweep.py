"""Proxy sweeps: every proposal at every size, in parallel, resumable without duplicate rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mixer.mixture import write_mixture
from mixer.runs import load_runs
from pipeline.proxy.data import load_proxy_data
from pipeline.proxy.fixtures import write_stdlib_score_dir
from pipeline.proxy.sweep import read_proposals, run_sweep
from pipeline.proxy.train import TrainConfig

CONFIG = TrainConfig(context=64, batch_size=8, eval_points=2, warmup_steps=2)
PROPOSALS = pd.DataFrame(
    {
        "mixture": ["p0", "p1", "p2"],
        "h_code": [0.6, 0.1, 0.3],
        "h_docstrings": [0.2, 0.1, 0.4],
        "h_reference": [0.2, 0.8, 0.3],
    }
)


@pytest.fixture(scope="module")
def score_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_stdlib_score_dir(tmp_path_factory.mktemp("score"), max_docs=30)
    data = load_proxy_data(root)
    (root / "tokenizer.json").write_text(data.tokenizer_json)  # as `datamixer score` leaves it
    return root


@pytest.fixture(scope="module")
def data(score_dir: Path):
    return load_proxy_data(score_dir, val_tokens=1024)


def test_sweep_resumes_training_only_the_new_runs(data, tmp_path: Path) -> None:
    """The quick variant of the two slow tests below: one size, one process."""
    runs = tmp_path / "runs.parquet"

    def sweep(proposals: pd.DataFrame, **options):
        return run_sweep(data, proposals, ["20k"], 4096, runs, workers=1, threads=1, config=CONFIG, **options)

    first = sweep(PROPOSALS.iloc[:1])
    trained: list[str] = []
    table = sweep(PROPOSALS.iloc[:2], on_done=lambda task, rows: trained.append(task.mixture))
    assert trained == ["p1"] and len(first) == 2 and len(table) == 4  # 2 evaluations per run
    assert table["run"].is_unique and set(table["mixture"]) == {"p0", "p1"}


@pytest.mark.slow  # ~80 s on 2 busy cores: three sweeps, two of them with worker processes
def test_parallel_sweep_writes_every_run_once_and_resumes(data, tmp_path: Path) -> None:
    PROPOSALS.to_parquet(tmp_path / "proposals.parquet")
    runs = tmp_path / "runs.parquet"
    first = run_sweep(data, PROPOSALS.iloc[:2], ["20k", "50k"], 4_096, runs, workers=2, config=CONFIG)
    assert len(first) == 2 * 2 * 2  # mixtures x sizes x evaluations
    trained: list[str] = []
    table = run_sweep(
        data,
        tmp_path / "proposals.parquet",
        ["20k", "50k"],
        4_096,
        runs,
        workers=1,
        threads=1,
        config=CONFIG,
        on_done=lambda task, rows: trained.append(task.mixture),
    )
    assert trained == ["p2", "p2"]  # only the new proposal, at both sizes
    checked = load_runs(runs, targets=["loss", "loss_code", "loss_docstrings", "loss_reference"])
    assert checked["run"].is_unique and len(checked) == 12
    assert set(checked["N"]) == {20_640, 50_928}
    assert checked.loc[checked["mixture"] == "p1", "h_reference"].eq(0.8).all()
    # Parallel workers and a serial run give the same rows.
    serial = run_sweep(
        data,
        PROPOSALS,
        ["20k", "50k"],
        4_096,
        tmp_path / "serial.parquet",
        workers=1,
        threads=1,
        config=CONFIG,
    )
    pd.testing.assert_frame_equal(table, serial)


def test_score_job_tokenizer_is_the_default(data, score_dir: Path) -> None:
    assert data.tokenizer_source == str(score_dir / "tokenizer.json")
    assert data.vocab_size == 1024 and data.eos_token == "<|endoftext|>"
    assert load_proxy_data(score_dir, vocab_size=300).vocab_size == 300  # --vocab-size retrains


def test_proposals_from_a_directory_of_mixture_files(tmp_path: Path) -> None:
    write_mixture(tmp_path / "a.yaml", {"code": 1.0})
    write_mixture(tmp_path / "b.json", {"code": 0.5, "reference": 0.5})
    assert read_proposals(tmp_path) == {"a": {"code": 1.0}, "b": {"code": 0.5, "reference": 0.5}}
    bad = PROPOSALS.assign(h_code=[0.6, 0.1, 0.9])
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="'p2'"):
        read_proposals(tmp_path / "bad.parquet")


@pytest.mark.slow  # ~45 s: a `datamixer proxy sweep` subprocess killed mid-run, then resumed
def test_killed_sweep_restarts_where_it_stopped(score_dir: Path, tmp_path: Path, cli) -> None:
    proposals = tmp_path / "mixtures"
    for i in range(4):
        write_mixture(proposals / f"m{i}.yaml", {"code": (i + 1) / 5, "reference": 1 - (i + 1) / 5})
    runs = tmp_path / "runs.parquet"
    args = [
        "proxy",
        "sweep",
        "--data",
        str(score_dir),
        "--proposals",
        str(proposals),
        "--sizes",
        "20k",
        "--tokens",
        "24k",
        "--runs",
        str(runs),
        "--workers",
        "1",
        "--threads",
        "1",
        "--context",
        "64",
        "--val-tokens",
        "1024",
        "--eval-points",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "datamixer", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not runs.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = pd.read_parquet(runs)
    assert 0 < partial["mixture"].nunique() < 4  # killed mid-sweep
    result = cli(args)
    assert result["skipped"] == partial["mixture"].nunique()
    assert result["trained"] == 4 - result["skipped"]
    table = load_runs(runs)
    assert table["run"].is_unique and len(table) == 4 * 2
    pd.testing.assert_frame_equal(table.iloc[: len(partial)].reset_index(drop=True), partial)


@pytest.mark.slow  # ~10 s
def test_one_pool_serves_sweeps_with_their_own_settings(data, tmp_path: Path) -> None:
    from pipeline.proxy.sweep import TrainingPool, plan_todo

    once = TrainConfig(context=64, batch_size=8, eval_points=1, warmup_steps=2)
    with TrainingPool(data, workers=2) as pool:
        queued = pool.submit(
            plan_todo(data, PROPOSALS.iloc[:1], ["50k"], 4_096, tmp_path / "t.parquet", 0, once), once
        )
        shared = run_sweep(
            data, PROPOSALS.iloc[1:], ["20k"], 4_096, tmp_path / "a.parquet", config=CONFIG, pool=pool
        )
        rows: list[dict] = []
        queued.wait(lambda task, found: rows.extend(found))
    alone = run_sweep(
        data, PROPOSALS.iloc[1:], ["20k"], 4_096, tmp_path / "b.parquet", workers=1, config=CONFIG
    )
    pd.testing.assert_frame_equal(shared, alone)  # the queued runs did not disturb the sweep
    assert [r["D"] for r in rows] == [4_096]  # their own settings: evaluated once, at the end
