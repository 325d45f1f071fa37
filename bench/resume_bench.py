"""What `datamixer score --resume` saves after a SIGKILL at half the input or half the commit, in one run.

    python bench/resume_bench.py [--docs 100000] [--files 4] [--mode in_memory] [--workers 1] [--block-mb 64]

On a generated multi-file input (paragraphs of the local corpus, `--files` JSONL files per domain,
as in `bench/score_bench.py`; a file over `--block-mb` is resumed by blocks of that size, e.g.
`--files 1 --block-mb 4` for one large file per domain) it times, through the command line on the
DirectRunner: the job without `--resume`; the same job with `--resume` run whole (the cost of
staging each unit and its marker, and each shard and its marker); a `--resume` job SIGKILLed (with
its workers) once half its units of work (files or blocks) have their marker, and the resumed job;
a `--resume` job SIGKILLed in its commit once half the shards have their marker, and the resumed
job. It prints each resumed job's time against starting again from nothing, checks that the
resumed outputs are byte-identical to the uninterrupted one, and ends with one JSON line. Each time
is given as wall seconds and as CPU seconds of the job and its workers (`getrusage` of the finished
children), which other load on a shared machine hardly changes; the machine's load average is
printed beside them. CPU seconds are complete in the default in-memory mode; in multi-processing
mode they miss worker processes that the runner does not wait for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from score_bench import documents, write_inputs  # noqa: E402

from pipeline.corpus import CorpusOptions, build_corpus  # noqa: E402
from pipeline.resume import BLOCK_BYTES, line_blocks, resume_path  # noqa: E402
from scorers.fasttext import FastTextQualityClassifier  # noqa: E402

# The command line, with the size of the blocks that large files are resumed by set first.
LAUNCH = """
import sys
import pipeline.resume
pipeline.resume.BLOCK_BYTES = int(sys.argv.pop(1))
from datamixer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def command(
    inputs: dict[str, list[str]], model: Path, out: Path, runner: list[str], *extra: str, block_bytes: int
) -> list[str]:
    launch = [sys.executable, "-c", LAUNCH, str(block_bytes)]
    args = [*launch, "score", "--model", str(model), "--output", str(out)]
    for domain, files in inputs.items():
        args += ["--input", str(Path(files[0]).parent / f"{domain}-*.jsonl"), "--domain", domain]
    return [*args, "--keep-top", "0.3", *extra, "--", *runner]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the job and its workers, result line) of one command."""
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - started, children_cpu() - cpu, json.loads(done.stdout.splitlines()[-1])


def killed_at_half(args: list[str], markers: Path, units: int) -> tuple[float, int]:
    """(seconds until the SIGKILL, markers then) of a job killed once `markers` holds half `units`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    job = subprocess.Popen(
        args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while len(list(markers.glob("*.done"))) < units // 2:
        if job.poll() is not None:
            raise SystemExit(f"the job ended before half its {markers.name} were done; give more --docs")
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    return time.perf_counter() - started, len(list(markers.glob("*.done")))


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(out.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=4, help="JSONL files per domain")
    parser.add_argument(
        "--mode", default="in_memory", help="DirectRunner mode: in_memory or multi_processing"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--block-mb", type=float, default=BLOCK_BYTES / 2**20, help="MiB per block of a large file"
    )
    args = parser.parse_args()
    block_bytes = int(args.block_mb * 2**20)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_corpus(tmp / "corpus", CorpusOptions(max_bytes_per_domain=3_000_000))
        docs = documents(tmp / "corpus", args.docs)
        inputs = write_inputs(docs, tmp / "in", args.files)
        sample = docs[:20_000]
        positive = [t for d, t in sample if d == "prose"]
        negative = [t for d, t in sample if d == "code"]
        model = FastTextQualityClassifier(preset="dclm").fit(positive, negative).save(tmp / "quality.bin")
        paths = [f for fs in inputs.values() for f in fs]
        units = sum(len(line_blocks(f, block_bytes)) for f in paths)  # blocks of all files (or the files)
        runner = [f"--direct_running_mode={args.mode}", f"--direct_num_workers={args.workers}"]
        input_mb = sum(os.path.getsize(f) for f in paths) / 1e6
        print(
            f"{len(docs):,} documents, {input_mb:.0f} MB in {len(paths)} files ({units} units of work), "
            f"DirectRunner {' '.join(runner)}"
        )
        cli = {"block_bytes": block_bytes}

        load_before = os.getloadavg()[0]
        plain, plain_cpu, _ = timed(command(inputs, model, tmp / "plain", runner, **cli))
        whole, whole_cpu, _ = timed(command(inputs, model, tmp / "whole", runner, "--resume", **cli))
        killed = command(inputs, model, tmp / "out", runner, "--resume", **cli)
        kill_s, finished = killed_at_half(killed, resume_path(tmp / "out") / "units", units)
        resumed, resumed_cpu, result = timed(killed)
        shards = len(list((tmp / "plain").glob("scored-*.parquet")))
        in_commit = command(inputs, model, tmp / "commit", runner, "--resume", **cli)
        commit_kill_s, shards_done = killed_at_half(in_commit, resume_path(tmp / "commit") / "shards", shards)
        after_commit, after_commit_cpu, _ = timed(in_commit)
        outputs = ("plain", "whole", "out", "commit")
        same = len({digest(tmp / name) for name in outputs}) == 1
        figures = {
            "documents": len(docs),
            "files": len(paths),
            "units": units,
            "block_mb": args.block_mb,
            "plain_s": round(plain, 1),
            "plain_cpu_s": round(plain_cpu, 1),
            "resume_whole_s": round(whole, 1),
            "resume_whole_cpu_s": round(whole_cpu, 1),
            "resume_overhead_cpu": round(whole_cpu / plain_cpu, 3),
            "killed_after_s": round(kill_s, 1),
            "units_finished_at_kill": finished,
            "units_resumed": result["units_resumed"],
            "resumed_s": round(resumed, 1),
            "resumed_cpu_s": round(resumed_cpu, 1),
            "resumed_over_plain_cpu": round(resumed_cpu / plain_cpu, 3),
            "resumed_over_plain_wall": round(resumed / plain, 3),
            "killed_in_commit_after_s": round(commit_kill_s, 1),
            "shards_done_at_kill": shards_done,
            "shards": shards,
            "resumed_commit_s": round(after_commit, 1),
            "resumed_commit_cpu_s": round(after_commit_cpu, 1),
            "resumed_commit_over_plain_cpu": round(after_commit_cpu / plain_cpu, 3),
            "byte_identical": same,
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        }
        print(
            f"plain {plain:.1f} s ({plain_cpu:.1f} CPU-s); with --resume {whole:.1f} s ({whole_cpu:.1f} "
            f"CPU-s, {whole_cpu / plain_cpu:.2f}x); killed after {kill_s:.1f} s with {finished}/{units} "
            f"units done; resumed in {resumed:.1f} s ({resumed_cpu:.1f} CPU-s = "
            f"{resumed_cpu / plain_cpu:.2f} of starting again); killed in the commit with "
            f"{shards_done}/{shards} shards done, resumed in {after_commit:.1f} s ({after_commit_cpu:.1f} "
            f"CPU-s = {after_commit_cpu / plain_cpu:.2f}); byte-identical: {same}; "
            f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
        )
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
