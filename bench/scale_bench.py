"""Memory and disk of the score job against input size: is its cost a flat curve?

    python bench/scale_bench.py [--sizes 0.2,1,4] [--root /tmp/datamixer-scale] [--workers 2] [--dedup]
                                [--against COMMIT] [--rounds N] [--doc-kb KB] [--format FORMAT]
                                [--file-mb MB]

Generates (once, cached under --root; never in the repository) JSONL inputs of about the given sizes
in GB from the bundled corpus (`pipeline.corpus`): documents cycled per domain, each copy with a
unique id and a light variation (every 4th word of copy c gets the suffix c), so copies are neither
exact nor near duplicates (with --doc-kb, long documents of consecutive copies; with --format,
gzip'd JSONL or Parquet files, with --file-mb of another size: a worker's memory should not grow
with any of them). Then it runs `datamixer score` (fastText, --keep-top 0.3, a fixed tokenizer; with
--dedup also `--dedup minhash`) on each with a DirectRunner of --workers processes and samples,
every 0.2 s, the RSS of every process of the job's tree and, every second, the bytes under the job's
output directory. It prints per size: docs/s, peak RSS summed over the tree and the largest single
process's peak, peak temporary disk (`_parts`, and everything the job held beside its output),
output size, and their ratios between the two largest sizes, with the load average. Beside docs/s it
prints docs/s without the start-up: the job's seconds less those of the same job on 200 documents
(Beam, worker processes, graph; run STARTUP_RUNS times before and as many after the sizes in the
same bench, the median of them: one run's start-up moved by up to 1 s), and documents per CPU-second
of the job's processes without the start-up's (what the job costs, whatever share of the cores the
machine's other load leaves it).
Every job starts with the earlier jobs' writes on disk (`os.sync()` before it, outside its time) and
its input read once (in the page cache: the job's time is its own work, not the disk's).
Per size also: the job's phases (seconds until the first part file, until the parts peak, i.e. all
staged, and the shard writing after it), when the largest process peaked, and the CPU seconds of
each worker (their spread: how evenly the input files were dealt), the share of the run's time in
which some process waited for a core (Linux's CPU pressure: the job's own processes, and any other
load) and the share of all cores' time the hypervisor gave to other machines (steal), and each size's
three docs/s figures against the largest size's (the goal: within 10%). And what needs no start-up
estimate: the docs/s of the documents each size adds over the size before (the job's seconds and
documents, differenced), with the first step's against the last step's, and the workers' CPU per
document spent in the kernel (first touches of memory: page faults and the zeroing of fresh pages).

With --rounds N the whole sweep (its start-up runs too) runs N times and the headline ratios are the
medians of the rounds' (each round's listed beside): the same job's docs/s moved by up to 25% between
runs minutes apart on the shared 2-core machine, so one sweep's ratio is one sample of that noise.

With --against COMMIT the same jobs also run with that commit's code (extracted by `git archive` to a
temporary folder, run from there: its `datamixer`, `pipeline`, `scorers`), the two codes in turn at each
size (this tree first at the first size, then alternately, and the other way round in the next round),
each with its own start-up: on a shared machine both see about the same load, and their rows, worker
CPU and outputs (sha256 of every output file: the same bytes, or the bench says so) compare directly.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob as expand
from itertools import islice
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.corpus import DOMAINS, CorpusOptions, build_corpus  # noqa: E402

FILE_BYTES = 64 << 20  # inputs are cut into JSONL files of about this size
GB = 1e9
CORES = os.cpu_count() or 1
STARTUP_RUNS = 3  # runs of the 200-document job before the sizes, and as many after


def prepare(root: Path) -> tuple[Path, Path, Path]:
    """(corpus dir, fastText model, tokenizer.json), built once under `root`."""
    from pipeline.tokenize import train_byte_level_bpe
    from scorers.fasttext import FastTextQualityClassifier

    corpus, model, tokenizer = root / "corpus", root / "quality.bin", root / "tokenizer.json"
    if not (corpus / "legal.jsonl").exists():
        build_corpus(corpus, CorpusOptions())
    texts = corpus_texts(corpus)
    if not model.exists():
        FastTextQualityClassifier(preset="dclm").fit(texts["prose"], texts["code"]).save(model)
    if not tokenizer.exists():
        train_byte_level_bpe([t for d in DOMAINS for t in texts[d]]).save(str(tokenizer))
    return corpus, model, tokenizer


def vary(text: str, copy: int) -> str:
    """Copy 0 unchanged; copy c > 0 with suffix c on every 4th word (from word c % 4)."""
    if copy == 0:
        return text
    words = text.split(" ")
    start, tag = copy % 4, str(copy)
    words[start::4] = [w + tag for w in words[start::4]]
    return " ".join(words)


def generate(
    corpus: Path,
    out: Path,
    size_bytes: int,
    doc_kb: int = 0,
    fmt: str = "jsonl",
    file_bytes: int = FILE_BYTES,
) -> dict[str, str]:
    """Inputs of about `size_bytes` of JSONL under `out` (cached); domain -> glob. Each domain gets its
    share of the corpus's bytes, cycled with `vary`. With `doc_kb` a document joins consecutive copies (a
    blank line between) up to about that many KB; `fmt` writes the files as JSONL, gzip'd JSONL (level 1)
    or Parquet (the same documents; sizes count their JSONL bytes), of about `file_bytes` each (Parquet
    in one row group)."""
    done = out / "DONE"
    docs = corpus_texts(corpus)
    globs = {d: str(out / f"{d}-*.{fmt}") for d in DOMAINS}
    if done.exists() and done.read_text() == str(size_bytes):
        return globs
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"*.{fmt}"):
        old.unlink()
    corpus_bytes = {d: sum(len(t.encode()) for t in docs[d]) for d in DOMAINS}
    total = sum(corpus_bytes.values())
    for domain in DOMAINS:
        budget, written, part = size_bytes * corpus_bytes[domain] / total, 0, 0
        stream = documents(domain, docs[domain], doc_kb)
        while written < budget:
            records, in_file = [], 0
            while in_file < file_bytes and written + in_file < budget:
                records.append(next(stream))
                in_file += len(json.dumps(records[-1])) + 1
            write_records(out / f"{domain}-{part:04d}.{fmt}", records, fmt)
            written += in_file
            part += 1
    done.write_text(str(size_bytes))
    return globs


def corpus_texts(corpus: Path) -> dict[str, list[str]]:
    """The bundled corpus's texts per domain."""
    return {d: [json.loads(x)["text"] for x in (corpus / f"{d}.jsonl").open()] for d in DOMAINS}


def documents(domain: str, texts: list[str], doc_kb: int = 0) -> Iterator[dict[str, str]]:
    """A domain's records, endlessly: its texts cycled with `vary`, each a document (with `doc_kb`,
    consecutive copies joined by a blank line up to about that many KB), named by its first copy."""
    i = 0
    while True:
        doc_id, parts = f"{domain}-{i // len(texts)}-{i % len(texts)}", []
        while not parts or sum(map(len, parts)) < doc_kb * 1000:
            parts.append(vary(texts[i % len(texts)], i // len(texts)))
            i += 1
        yield {"id": doc_id, "text": "\n\n".join(parts)}


def write_records(path: Path, records: list[dict[str, str]], fmt: str) -> None:
    """Records as a JSONL, gzip'd JSONL or Parquet file."""
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=len(records))
        return
    lines = "".join(json.dumps(record) + "\n" for record in records)
    with gzip.open(path, "wt", compresslevel=1) if fmt == "jsonl.gz" else path.open("w") as fh:
        fh.write(lines)


@dataclass
class Peaks:
    """What the sampler saw: per-process peak RSS, peak of their sum, peak bytes on disk."""

    rss: dict[int, int] = field(default_factory=dict)
    role: dict[int, str] = field(default_factory=dict)
    rss_sum: int = 0
    processes: int = 0
    disk: int = 0
    parts: int = 0
    cpu: dict[int, float] = field(default_factory=dict)
    kernel: dict[int, float] = field(default_factory=dict)  # of `cpu`: in the kernel (page faults, I/O)
    rss_at_s: dict[int, float] = field(default_factory=dict)  # when each process peaked, since the start
    first_part_s: float | None = None  # since the job started
    parts_peak_s: float = 0.0


def _tree_size(root: Path) -> tuple[int, int]:
    """(bytes under root, bytes under any `_parts` directory below it)."""
    total = parts = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                size = os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                continue  # deleted while we walked
            total += size
            parts += size if "_parts" in dirpath else 0
    return total, parts


def _role(p: psutil.Process, root: psutil.Process) -> str:
    """ "job" (the datamixer process, which runs Beam's runner), "zygote" (the process the workers are
    forked from, `pipeline.direct_workers`; they keep its command line), "worker" (an SDK worker) or its
    name."""
    if p.pid == root.pid:
        return "job"
    try:
        command = " ".join(p.cmdline())
        if "sdk_worker" not in command:
            return p.name()
        return "zygote" if "zygote" in command and p.ppid() == root.pid else "worker"
    except psutil.Error:
        return "?"


def sample(proc: subprocess.Popen, out_parent: Path, peaks: Peaks, stop: threading.Event) -> None:
    """Sample the RSS of `proc`'s process tree (0.2 s) and the bytes under `out_parent` (1 s)."""
    root = psutil.Process(proc.pid)
    last_disk = 0.0
    started = time.monotonic()
    while not stop.is_set():
        total = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                rss = p.memory_info().rss
                cpu = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            peaks.cpu[p.pid], peaks.kernel[p.pid] = cpu.user + cpu.system, cpu.system
            total += rss
            if rss > peaks.rss.get(p.pid, 0):
                peaks.rss[p.pid], peaks.rss_at_s[p.pid] = rss, time.monotonic() - started
            if p.pid not in peaks.role:
                peaks.role[p.pid] = _role(p, root)
        peaks.rss_sum = max(peaks.rss_sum, total)
        peaks.processes = max(peaks.processes, len(tree))
        if time.monotonic() - last_disk >= 1.0:
            disk, parts = _tree_size(out_parent)
            now = time.monotonic() - started
            if parts and peaks.first_part_s is None:
                peaks.first_part_s = now
            if parts > peaks.parts:
                peaks.parts_peak_s = now
            peaks.disk, peaks.parts = max(peaks.disk, disk), max(peaks.parts, parts)
            last_disk = time.monotonic()
        stop.wait(0.2)


def cpu_wait_us() -> int | None:
    """Microseconds in which some runnable process waited for a core (Linux PSI), None elsewhere."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return int(line.rsplit("total=", 1)[1])


def steal_ticks() -> int | None:
    """Clock ticks the hypervisor gave this machine's cores to others (Linux /proc/stat), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    return int(fields[8]) if len(fields) > 8 else None


def run_job(
    globs: dict[str, str],
    model: Path,
    tokenizer: Path,
    out_parent: Path,
    args: argparse.Namespace,
    src: Path = ROOT,
) -> dict:
    """One `datamixer score` run of the code under `src`, sampled; its JSON line plus the peaks and sizes."""
    output = out_parent / "scored"
    shutil.rmtree(out_parent, ignore_errors=True)  # this bench's own earlier output: disk starts at 0
    cmd = [sys.executable, "-m", "datamixer", "score", "--output", str(output)]
    for domain, glob in globs.items():
        cmd += ["--input", glob, "--domain", domain]
    cmd += ["--model", str(model), "--label", "__label__hq", "--keep-top", "0.3"]
    cmd += ["--tokenizer", str(tokenizer)]
    if args.dedup:
        cmd += ["--dedup", "minhash"]
    cmd += ["--", "--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    # The earlier jobs' writes go to disk now, not while this job runs: the 4 GB job leaves about 1 GB
    # of output to write back, which took about 0.5 s from the 0.2 GB job run after it.
    os.sync()
    # And the job's input is read once before it (page cache), so that every job reads it from memory:
    # the machine kept only part of an input cached from one job to the next, and one 1 GB job that
    # read its input from the disk waited 35 s before its first part file (4 s otherwise).
    for pattern in globs.values():
        for path in expand(pattern):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    peaks, stop = Peaks(), threading.Event()
    load_before = os.getloadavg()[0]
    wait_before, steal_before = cpu_wait_us(), steal_ticks()
    started = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, PYTHONPATH=str(src))  # `python -m` also puts its folder first
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=src, env=env)
    sampler = threading.Thread(target=sample, args=(proc, out_parent, peaks, stop))
    sampler.start()
    stdout, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"score job failed ({proc.returncode}): {' '.join(cmd)}")
    result = json.loads(stdout.strip().splitlines()[-1])
    seconds = time.perf_counter() - started
    wait_after, steal_after = cpu_wait_us(), steal_ticks()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the job and every process it waited for
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    workers = [pid for pid, role in peaks.role.items() if role == "worker"]
    largest = max(peaks.rss, key=lambda pid: peaks.rss[pid])
    return {
        "docs": result["in"],
        "kept": result["kept"],
        "seconds": round(seconds, 1),
        "job_seconds": result["seconds"],
        "docs_per_s": result["docs_per_s"],
        "first_part_s": round(peaks.first_part_s or 0.0, 1),
        "staged_s": round(peaks.parts_peak_s, 1),
        "write_s": round(seconds - peaks.parts_peak_s, 1),
        "worker_cpu_s": sorted((round(peaks.cpu[pid], 1) for pid in workers), reverse=True),
        "worker_kernel_cpu_s": round(sum(peaks.kernel[pid] for pid in workers), 2),
        "cpu_s": round(cpu, 1),
        "rss_max_at_s": round(peaks.rss_at_s[largest], 1),
        "rss_sum_mb": round(peaks.rss_sum / 1e6),
        "rss_max_mb": round(max(peaks.rss.values()) / 1e6),
        "processes": peaks.processes,
        "job_rss_mb": round(
            max((r for p, r in peaks.rss.items() if peaks.role.get(p) == "job"), default=0) / 1e6
        ),
        "worker_rss_mb": round(
            max((r for p, r in peaks.rss.items() if peaks.role.get(p) == "worker"), default=0) / 1e6
        ),
        "rss_by_process_mb": sorted(
            ((peaks.role.get(pid, "?"), round(rss / 1e6)) for pid, rss in peaks.rss.items()),
            key=lambda r: -r[1],
        )[:4],
        "parts_mb": round(peaks.parts / 1e6),
        "disk_peak_mb": round(peaks.disk / 1e6),
        "output_mb": round(_tree_size(output)[0] / 1e6),
        "output_sha256": _output_digest(output),
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "cpu_wait_share": None
        if wait_before is None or wait_after is None
        else round((wait_after - wait_before) / 1e6 / seconds, 2),
        "cpu_steal_share": None  # of all cores' time: taken by the hypervisor for other machines
        if steal_before is None or steal_after is None
        else round((steal_after - steal_before) / os.sysconf("SC_CLK_TCK") / seconds / CORES, 3),
    }


def _output_digest(output: Path) -> str:
    """sha256 over every output file's path and sha256, in path order (the same bytes: the same digest)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        file_digest = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(1 << 24):
                file_digest.update(block)
        digest.update(f"{path.relative_to(output)} {file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def extract_commit(commit: str, parent: Path) -> Path:
    """The tracked files of `commit` (`git archive`) in a folder under `parent`, to run its code."""
    folder = parent / f"code-{commit.replace('/', '_')}"
    folder.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def tiny_inputs(corpus: Path, out: Path, lines: int) -> dict[str, str]:
    """The first `lines` documents of each domain as the default inputs begin (plain JSONL, the
    corpus's own documents), under `out`; domain -> file."""
    out.mkdir(parents=True, exist_ok=True)
    texts = corpus_texts(corpus)
    for domain in DOMAINS:
        write_records(out / f"{domain}.jsonl", list(islice(documents(domain, texts[domain]), lines)), "jsonl")
    return {domain: str(out / f"{domain}.jsonl") for domain in DOMAINS}


def run_sizes(
    sizes: list[float],
    codes: dict[str, Path],
    prepared: tuple[Path, Path, Path],
    args: argparse.Namespace,
    number: int = 1,
) -> tuple[list[dict], dict[str, list[tuple[float, float]]]]:
    """Every size's job with each code (in turn, alternating which goes first, from size to size and from
    round `number` to the next: the first job after the start-up runs was slower), and each code's start-up
    (the job on 200 documents, STARTUP_RUNS times) before and after the sizes: (rows, code -> [(seconds,
    CPU-s)] * 2 * STARTUP_RUNS)."""
    corpus, model, tokenizer = prepared
    rows: list[dict] = []
    startups: dict[str, list[tuple[float, float]]] = {code: [] for code in codes}
    tiny: dict[str, str] = {}
    for i, size in enumerate(sizes):
        shape = f"-{args.doc_kb}kb" if args.doc_kb else ""
        shape += f"-{args.format}" if args.format != "jsonl" else ""
        shape += f"-{args.file_mb}mb" if args.file_mb != FILE_BYTES >> 20 else ""
        inputs = args.root / f"in-{size:g}gb{shape}"
        t0 = time.perf_counter()
        globs = generate(corpus, inputs, int(size * GB), args.doc_kb, args.format, args.file_mb << 20)
        input_mb = _tree_size(inputs)[0] / 1e6
        print(
            f"{size:g} GB: {input_mb:,.0f} MB of {args.format} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
        out_parent = args.root / f"out-{size:g}gb{shape}{'-dedup' if args.dedup else ''}"
        if not tiny:  # the same job on 200 documents (plain JSONL): its start-up, in this run
            tiny = tiny_inputs(corpus, args.root / "in-tiny", 200 // len(globs))
            for code, src in codes.items():
                startups[code] += startup_runs(tiny, model, tokenizer, args, src)
                print(f"{code}: start-up (the job on 200 documents): {startups[code]}", file=sys.stderr)
        for code in list(codes)[:: 1 if (i + number) % 2 == 1 else -1]:
            row: dict[str, Any] = {"size_gb": size, "input_mb": round(input_mb), "code": code}
            row.update(run_job(globs, model, tokenizer, out_parent, args, codes[code]))
            row["disk_over_output"] = round(row["disk_peak_mb"] / max(row["output_mb"], 1), 2)
            row["parts_over_output"] = round(row["parts_mb"] / max(row["output_mb"], 1), 2)
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    for code, src in codes.items():
        after = startup_runs(tiny, model, tokenizer, args, src)
        startups[code] += after
        print(f"{code}: start-up again, after the sizes: {after}", file=sys.stderr)
    return rows, startups


def startup_runs(
    tiny: dict[str, str], model: Path, tokenizer: Path, args: argparse.Namespace, src: Path
) -> list[tuple[float, float]]:
    """(seconds, CPU-s) of STARTUP_RUNS runs of the job on 200 documents."""
    runs = [run_job(tiny, model, tokenizer, args.root / "out-tiny", args, src) for _ in range(STARTUP_RUNS)]
    return [(run["job_seconds"], run["cpu_s"]) for run in runs]


def code_ratios(rows: list[dict], startups: list[tuple[float, float]]) -> dict:
    """One code's rows (in size order) completed with the figures without the start-up (the median of
    its start-up runs) and against its largest size; the headline ratios."""
    wall, cpu = (statistics.median(run[i] for run in startups) for i in (0, 1))
    for r in rows:
        r["docs_per_s_without_startup"] = round(r["docs"] / (r["job_seconds"] - wall), 1)
        r["docs_per_cpu_s_without_startup"] = round(r["docs"] / (r["cpu_s"] - cpu), 1)
        r["worker_cpu_ms_per_doc"] = round(1e3 * sum(r["worker_cpu_s"]) / r["docs"], 3)
        r["worker_kernel_ms_per_doc"] = round(1e3 * r["worker_kernel_cpu_s"] / r["docs"], 4)
    for before, r in zip(rows, rows[1:], strict=False):  # the documents one size adds over the one before
        r["marginal_docs_per_s"] = round(
            (r["docs"] - before["docs"]) / (r["job_seconds"] - before["job_seconds"]), 1
        )
    largest = rows[-1]
    for r in rows:  # each size against the largest: the goal is within 10%
        r["vs_largest"] = {
            key: round(r[key] / largest[key], 2)
            for key in ("docs_per_s", "docs_per_s_without_startup", "docs_per_cpu_s_without_startup")
        }
    first, last = rows[-2] if len(rows) > 1 else rows[0], rows[-1]  # the two largest sizes
    steady = [r["docs_per_s_without_startup"] for r in rows]
    per_cpu = [r["docs_per_cpu_s_without_startup"] for r in rows]
    return {
        "rss_sum_ratio": round(last["rss_sum_mb"] / first["rss_sum_mb"], 2),
        "rss_max_ratio": round(last["rss_max_mb"] / first["rss_max_mb"], 2),
        "docs_per_s_ratio": round(last["docs_per_s"] / first["docs_per_s"], 2),
        "docs_per_s_without_startup_min_over_max": round(min(steady) / max(steady), 2),
        "docs_per_cpu_s_without_startup_min_over_max": round(min(per_cpu) / max(per_cpu), 2),
        "without_startup_vs_largest": {
            f"{r['size_gb']:g}": r["vs_largest"]["docs_per_s_without_startup"] for r in rows
        },
        "per_cpu_s_vs_largest": {
            f"{r['size_gb']:g}": r["vs_largest"]["docs_per_cpu_s_without_startup"] for r in rows
        },
        "max_disk_over_output": max(r["disk_over_output"] for r in rows),
        # docs/s of the documents each size adds over the one before, the first step against the last:
        # whether a document costs the same at every size, with no start-up to estimate
        "marginal_first_over_last": round(rows[1]["marginal_docs_per_s"] / last["marginal_docs_per_s"], 2)
        if len(rows) > 2
        else None,
        "startup_s": startups,
    }


def print_table(rows: list[dict], several: bool) -> None:
    """The rows as a Markdown table on stderr (with a code column when several codes ran)."""
    code = "| code " if several else ""
    print(
        f"| input {code}| docs | docs/s | without start-up | docs per CPU-s | vs largest (docs/s, without "
        "start-up, per CPU-s) | docs/s added over the size before | worker CPU-s "
        "| worker ms per doc (in the kernel) | RSS sum | RSS max (process) "
        "| peak `_parts` | peak disk | output | disk / output | load | CPU wait / steal |",
        file=sys.stderr,
    )
    print("|---" * (17 + several) + "|", file=sys.stderr)
    for r in rows:
        vs = r["vs_largest"]
        code_cell = f"| {r['code']} " if several else ""
        print(
            f"| {r['input_mb'] / 1e3:.2f} GB {code_cell}"
            f"| {r['docs']:,} | {r['docs_per_s']:,.0f} "
            f"| {r['docs_per_s_without_startup']:,.0f} | {r['docs_per_cpu_s_without_startup']:,.0f} "
            f"| {vs['docs_per_s']:.2f} / {vs['docs_per_s_without_startup']:.2f} "
            f"/ {vs['docs_per_cpu_s_without_startup']:.2f} | {r.get('marginal_docs_per_s', '-')} "
            f"| {' / '.join(f'{c:.1f}' for c in r['worker_cpu_s'])} | {r['worker_cpu_ms_per_doc']:.3f} "
            f"({r['worker_kernel_ms_per_doc']:.4f}) "
            f"| {r['rss_sum_mb']:,} MB | {r['rss_max_mb']:,} MB | {r['parts_mb']:,} MB "
            f"| {r['disk_peak_mb']:,} MB "
            f"| {r['output_mb']:,} MB | {r['disk_over_output']:.2f} | {r['load'][0]}-{r['load'][1]} "
            f"| {r['cpu_wait_share']} / {r['cpu_steal_share']} |",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.2,1,4", help="input sizes in GB, comma-separated")
    parser.add_argument("--root", type=Path, default=Path("/tmp/datamixer-scale"))
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes")
    parser.add_argument("--dedup", action="store_true", help="also run MinHash dedup in the job")
    parser.add_argument("--against", help="also run the jobs with this commit's code, in turn")
    parser.add_argument("--doc-kb", type=int, default=0, help="join documents up to about this many KB")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "jsonl.gz", "parquet"])
    parser.add_argument(
        "--file-mb", type=int, default=FILE_BYTES >> 20, help="input files of about this many MB"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="sweeps of all sizes, each with its own start-up: the ratios' medians",
    )
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    args.root.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args.root)
    print(f"cores: {CORES}, load average: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        codes = {"this tree": ROOT}
        if args.against:
            codes[f"at {args.against}"] = extract_commit(args.against, Path(tmp))
        rounds = []
        for number in range(1, args.rounds + 1):
            rows, startups = run_sizes(sizes, codes, prepared, args, number)
            ratios = {
                code: code_ratios([r for r in rows if r["code"] == code], startups[code]) for code in codes
            }
            for r in rows:
                r["round"] = number
            if args.rounds > 1:
                print(f"round {number} of {args.rounds}:", file=sys.stderr)
            print_table(rows, len(codes) > 1)
            rounds.append((rows, ratios))
    rows = [r for round_rows, _ in rounds for r in round_rows]
    ratios = (
        rounds[-1][1] if args.rounds == 1 else {code: medians([r[code] for _, r in rounds]) for code in codes}
    )
    headline = {"rows": rows, **ratios["this tree"], "load_average": round(os.getloadavg()[0], 1)}
    if args.against:
        against = f"at {args.against}"
        headline["against"] = {"commit": args.against, **ratios[against]}
        digests = {size: {r["output_sha256"] for r in rows if r["size_gb"] == size} for size in sizes}
        headline["same_output"] = all(len(d) == 1 for d in digests.values())
        print(f"the two codes' outputs are the same bytes: {headline['same_output']}", file=sys.stderr)
    for code in codes:
        print(f"{code}: {ratios[code]}", file=sys.stderr)
    print(json.dumps(headline))


def medians(rounds: list[dict]) -> dict:
    """One code's headline ratios over several rounds: the median of each, and every round's value."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in (
        "rss_sum_ratio",
        "rss_max_ratio",
        "docs_per_s_ratio",
        "docs_per_s_without_startup_min_over_max",
        "docs_per_cpu_s_without_startup_min_over_max",
        "max_disk_over_output",
        "marginal_first_over_last",
    ):
        values = [r[key] for r in rounds if r[key] is not None]
        if not values:
            continue
        out[key] = {"median": round(statistics.median(values), 2), "each": values}
    for key in ("without_startup_vs_largest", "per_cpu_s_vs_largest"):
        each = {size: [r[key][size] for r in rounds] for size in rounds[0][key]}
        out[key] = {size: {"median": round(statistics.median(v), 2), "each": v} for size, v in each.items()}
    out["startup_s"] = [s for r in rounds for s in r["startup_s"]]
    return out


if __name__ == "__main__":
    main()
