"""Re-runs, concurrent runs and killed runs of the score job: the previous output survives, nothing of
ours is left behind, a rerun gives the clean run's bytes, and the job exits 0 every time it works."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixer.files import MARKER, OutputLocked
from pipeline.job import ScoreJobConfig, run_score_job
from pipeline.registry import ScorerConfig
from pipeline.select import Selection
from pipeline.tokenize import TOKENIZER_FILE

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _lines(prefix: str, n: int) -> bytes:
    words = "the quick brown fox jumps over a lazy dog while seven wizards box jolly quiz".split()
    rows = [
        {"id": f"{prefix}-{i}", "text": " ".join(words[(i * k) % len(words)] for k in range(1, 40))}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from scorers.fasttext import FastTextQualityClassifier

    prose = [f"a fine sentence about history number {i} and its people" for i in range(60)]
    code = [f"def f{i}(x): return x + {i}  # code" for i in range(60)]
    clf = FastTextQualityClassifier(dim=8, bucket=5_000, epoch=5).fit(prose, code)
    return str(clf.save(tmp_path_factory.mktemp("model") / "q.bin"))


def _config(inputs: dict[str, list[str]], out: Path, model: str, **kw) -> ScoreJobConfig:
    return ScoreJobConfig(inputs=inputs, output=str(out), scorer=ScorerConfig("fasttext", model), **kw)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_a_recursive_glob_never_reads_the_jobs_own_output(tmp_path, model):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.jsonl").write_bytes(_lines("a", 30))
    out = tree / "scored"
    config = _config({"web": [str(tree / "**")]}, out, model)
    first = run_score_job(config, beam_args=IN_MEMORY)
    second = run_score_job(config, beam_args=IN_MEMORY)  # scored-*.parquet now sit under tree/**
    assert first["in"] == second["in"] == 30 and second["dead_letter"] == 0
    assert (out / MARKER).is_file()


def test_a_second_job_on_the_same_output_fails_clearly(tmp_path, model):
    data = tmp_path / "a.jsonl"
    data.write_bytes(_lines("a", 5))
    out = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(OutputLocked, match=f"another datamixer job \\(pid {os.getpid()}"):
        run_score_job(_config({"web": [str(data)]}, out, model), beam_args=IN_MEMORY)
    assert not out.exists()


@pytest.mark.slow
def test_tokenizer_json_is_reused_only_when_its_options_match(tmp_path, model):
    data = tmp_path / "a.jsonl"
    data.write_bytes(_lines("a", 40))
    out = tmp_path / "out"
    run_score_job(_config({"web": [str(data)]}, out, model, vocab_size=300), beam_args=IN_MEMORY)
    trained = (out / TOKENIZER_FILE).read_bytes()
    data.write_bytes(_lines("b", 40) + b'{"text": "zebra zygote zymurgy xylophone quartz"}\n' * 20)
    run_score_job(_config({"web": [str(data)]}, out, model, vocab_size=300), beam_args=IN_MEMORY)
    assert (out / TOKENIZER_FILE).read_bytes() == trained  # same options: counts stay comparable
    run_score_job(_config({"web": [str(data)]}, out, model, vocab_size=320), beam_args=IN_MEMORY)
    clean = tmp_path / "clean"
    run_score_job(_config({"web": [str(data)]}, clean, model, vocab_size=320), beam_args=IN_MEMORY)
    assert (out / TOKENIZER_FILE).read_bytes() == (clean / TOKENIZER_FILE).read_bytes() != trained


def test_a_selection_that_keeps_nothing_warns(tmp_path, model):
    data = tmp_path / "a.jsonl"
    data.write_bytes(_lines("a", 10))
    config = _config({"web": [str(data)]}, tmp_path / "out", model, selection=Selection(threshold=2.0))
    result = run_score_job(config, beam_args=IN_MEMORY)
    assert result["kept"] == 0
    assert result["warnings"] == ["domain 'web': --threshold 2.0 kept none of its 10 documents"]
    stats = json.loads((tmp_path / "out" / "domain_stats.json").read_text())  # valid JSON
    assert stats[0]["docs_kept"] == 0


# --- the job's exit code, run after run ----------------------------------------------------------


def _score_command(inputs: list[Path], out: Path, model: str, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "datamixer", "score", "--model", model, "--output", str(out)]
    for path in inputs:
        args += ["--input", str(path), "--domain", path.stem.split(".")[0]]
    return args + list(extra)


def _inputs(root: Path) -> list[Path]:
    """A JSONL file, a gzipped one and a Parquet file (Arrow's Parquet reader was behind exit 134)."""
    import gzip

    root.mkdir(parents=True, exist_ok=True)
    (root / "web.jsonl").write_bytes(_lines("web", 60))
    (root / "books.jsonl.gz").write_bytes(gzip.compress(_lines("books", 60)))
    rows = [json.loads(line) for line in _lines("code", 60).splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), root / "code.parquet", row_group_size=10)
    return sorted(root.iterdir())


@pytest.mark.slow
def test_twenty_runs_all_exit_0(tmp_path, model):
    inputs = _inputs(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    codes = []
    for i in range(20):
        done = subprocess.run(
            _score_command(inputs, tmp_path / "out", model, "--keep-top", "0.5"),
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        codes.append(done.returncode)
        assert done.returncode == 0, (i, done.returncode, done.stderr[-2000:])
        assert json.loads(done.stdout.strip().splitlines()[-1])["in"] == 180
    assert codes == [0] * 20


# --- SIGKILL at several points -------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread (or its process) ended since the listing
            continue
        out.update(int(c) for c in children)
    return out


def _descendants(pid: int) -> set[int]:
    """Children, grandchildren, ...: the workers are forked by a process the job starts."""
    out = _children(pid)
    for child in list(out):
        out |= _descendants(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(check, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _temps(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _kill_when(command: list[str], env: dict, reached) -> tuple[bool, set[int]]:
    """Start the job, SIGKILL it once `reached(job)` holds; (killed there, its worker pids)."""
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hit = _wait_for(lambda: reached(job) or job.poll() is not None)
    workers = _descendants(job.pid)
    job.send_signal(signal.SIGKILL)
    return hit and job.wait() == -signal.SIGKILL, workers  # killed at that point, not finished


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the worker processes")
def test_sigkill_at_several_points_leaves_the_previous_output_and_nothing_else(tmp_path, model):
    inputs = _inputs(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tokenizer = tmp_path / "tokenizer.json"
    workers = ["--", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]

    def command(out: Path) -> list[str]:
        return _score_command(
            inputs, out, model, "--tokenizer", str(tokenizer), "--keep-top", "0.5", *workers
        )

    first = subprocess.run(_score_command(inputs, tmp_path / "seed", model), env=env, capture_output=True)
    assert first.returncode == 0, first.stderr[-2000:]
    tokenizer.write_bytes((tmp_path / "seed" / TOKENIZER_FILE).read_bytes())
    clean, out = tmp_path / "clean", tmp_path / "out"
    for target in (clean, out):
        done = subprocess.run(command(target), env=env, capture_output=True)
        assert done.returncode == 0, done.stderr[-2000:]
    previous = _files(out)
    assert previous == _files(clean)

    def temp_has(name: str):
        return lambda job: any((t / "out" / name).exists() for t in _temps(tmp_path, "out") if t.is_dir())

    points = {
        "lock taken": lambda job: (tmp_path / ".out.lock").exists(),
        "tokenizer written": temp_has(TOKENIZER_FILE),
        "workers started": lambda job: len(_descendants(job.pid)) >= 3,  # the zygote and 2 workers
        "shards written": temp_has("_parts"),
    }
    for point, reached in points.items():
        hit, workers_seen = _kill_when(command(out), env, reached)
        assert hit, point
        assert _wait_for(lambda seen=workers_seen: not any(map(_alive, seen)), timeout=10), point
        assert _files(out) == previous, point  # the previous output is whole and unchanged

    done = subprocess.run(command(out), env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _temps(tmp_path, "out") == []  # the killed runs' temporaries and lock are gone
    assert _files(out) == _files(clean)  # byte-identical to a clean run
