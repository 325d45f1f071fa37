"""`datamixer score --resume`: a job killed with SIGKILL part-way and run again with `--resume` scores
only the files it had not finished and writes the uninterrupted run's bytes; other options, another
model file or a changed input file are never served from stale units."""

from __future__ import annotations

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
from pipeline.job import ScoreJobConfig, run_score_job
from pipeline.read import ReadOptions
from pipeline.registry import ScorerConfig
from pipeline.resume import STATE_FILE, ResumeRefused, open_state, resume_path
from pipeline.select import Selection

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
FILES = 8

# Runs the CLI, SIGKILLing its own process when the job starts reading its KILL_AT-th file (the
# DirectRunner's in-memory mode reads and stages files one after the other in this process), or
# when it starts the commit (KILL_AT=commit: after every file is staged).
KILLING_CLI = """
import os, signal, sys
import pipeline.job as job
read_file, started = job.read_file, []
def reading(domain, path, opts):
    started.append(path)
    if str(len(started)) == os.environ["KILL_AT"]:
        os.kill(os.getpid(), signal.SIGKILL)
    yield from read_file(domain, path, opts)
def committing(*args):
    os.kill(os.getpid(), signal.SIGKILL)
job.read_file = reading
if os.environ["KILL_AT"] == "commit":
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
    inputs: dict[str, list[str]], out: Path, model: str, kill_at: int | str, *extra: str
) -> int:
    """Run `score --resume` until it starts its `kill_at`-th file, SIGKILLed there; the finished units."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KILL_AT": str(kill_at)}
    command = [sys.executable, "-c", KILLING_CLI, *_cli_args(inputs, out, model, *extra), "--", *IN_MEMORY]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return len(list((resume_path(out) / "units").glob("*.done")))


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def _owned(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture
def files_read(monkeypatch) -> list[str]:
    """Paths the in-process job starts reading (in-memory runner)."""
    read: list[str] = []
    original = score_job.read_file

    def reading(domain, path, opts):
        read.append(path)
        yield from original(domain, path, opts)

    monkeypatch.setattr(score_job, "read_file", reading)
    return read


def test_a_job_killed_part_way_resumes_its_unfinished_files_to_the_same_bytes(tmp_path, model, files_read):
    inputs = _inputs(tmp_path / "data")
    out = tmp_path / "out"
    finished = _kill_part_way(inputs, out, model, kill_at=5)
    assert finished == 4  # the four files read before the kill, each with its marker
    left = _owned(tmp_path, "out")  # the killed run's lock and temporary, and its resume state
    assert {".out.lock", ".out.resume"} <= set(left) and any(n.startswith(".out.tmp-") for n in left)

    resumed = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert (resumed["files_resumed"], resumed["files_scored"]) == (4, FILES - 4)
    assert len(files_read) == FILES - 4  # the finished files were not read again
    files_read.clear()
    clean = run_score_job(_config(inputs, tmp_path / "clean", model), beam_args=IN_MEMORY)
    assert len(files_read) == FILES
    assert _hashes(out) == _hashes(tmp_path / "clean")  # every output file, byte for byte
    assert MARKER in _hashes(out) and resumed["dead_letter"] == clean["dead_letter"] == 3
    assert {k: v for k, v in resumed.items() if k not in ("seconds", "docs_per_s", "output")} == {
        **{k: v for k, v in clean.items() if k not in ("seconds", "docs_per_s", "output")},
        "files_resumed": 4,
        "files_scored": FILES - 4,
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


@pytest.mark.slow
def test_a_job_killed_in_its_commit_resumes_with_nothing_left_to_score(tmp_path, model, files_read):
    inputs = _inputs(tmp_path / "data")
    out = tmp_path / "out"
    assert _kill_part_way(inputs, out, model, "commit") == FILES
    resumed = run_score_job(_config(inputs, out, model, resume=True), beam_args=IN_MEMORY)
    assert (resumed["files_resumed"], resumed["files_scored"], files_read) == (FILES, 0, [])
    run_score_job(_config(inputs, tmp_path / "clean", model), beam_args=IN_MEMORY)
    assert _hashes(out) == _hashes(tmp_path / "clean")


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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = ["--", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    base = [sys.executable, "-m", "datamixer"]
    out, units = tmp_path / "out", resume_path(tmp_path / "out") / "units"
    job = subprocess.Popen(
        [*base, *_cli_args(inputs, out, model, *workers)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list(units.glob("*.done"))) < FILES // 2 and time.monotonic() < deadline:
        assert job.poll() is None, "the job ended before it could be killed"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the job and its two workers
    job.wait()
    finished = len(list(units.glob("*.done")))
    assert FILES // 2 <= finished < FILES

    done = subprocess.run([*base, *_cli_args(inputs, out, model, *workers)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert (result["files_resumed"], result["files_scored"]) == (finished, FILES - finished)
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
