"""Speed of the Beam scoring job against a plain fastText predict loop, on the same documents.

    python bench/score_bench.py [--docs 600000] [--files 8] [--workers 0] [--mode multi_processing]
                                [--breakdown-docs 100000]

Prints, in one run: raw fastText docs/s (a plain per-document loop, one core; measured before and
after the job, and averaged, because other work on a shared machine drifts), raw token counting
docs/s, the Beam job's docs/s on the DirectRunner (wall time of read, validate, tokenize, score,
per-domain top-30% and Parquet writes, including start-up), the job's start-up (the same job on
one small file: Beam start-up, worker processes, graph; with the workers forked by the zygote of
`pipeline.direct_workers`, and started by Beam as before it), the job's rate without that start-up,
and the ratios of both to the plain loop. It also prints docs per CPU-second of the loop and of the
job (all its processes, with and without the start-up's CPU): that ratio times the cores is what free
cores would give (load moves it less than the wall-clock ratio, but heavy load slows the memory-bound
plain loop more than the job: compare runs at similar load). Before the job it prints
the CPU-seconds per 100,000 documents of each step of the job (read and validate, token counts,
fastText, part files, cut-off histograms, the shard writers' merge and Parquet) run in one
process without Beam on the first `--breakdown-docs` documents, beside the plain loop's on the same
documents, and the Parquet output's size. It also times fastText's scores by the binding's batch predict
and by the linear path (`scorers.fasttext_linear`, what the job uses) alternately on the same documents,
with the max |difference| of the two. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipeline import direct_workers  # noqa: E402
from pipeline import schema as S  # noqa: E402
from pipeline.corpus import CorpusOptions, build_corpus  # noqa: E402
from pipeline.dedup import mark_duplicates  # noqa: E402
from pipeline.job import ScoreJobConfig, run_score_job  # noqa: E402
from pipeline.read import ReadOptions, read_file  # noqa: E402
from pipeline.registry import ScorerConfig  # noqa: E402
from pipeline.select import BinCounts, Selection, domain_scores, level_bins, mark_keep, order_keys  # noqa: E402
from pipeline.shards import PartWriters, merge_parts, row_groups, write_row_groups  # noqa: E402
from pipeline.stages import conform  # noqa: E402
from pipeline.tokenize import TokenCounter, train_byte_level_bpe  # noqa: E402
from scorers.fasttext import (  # noqa: E402
    FastTextQualityClassifier,
    FastTextScorer,
    label_probabilities,
    load_model,
    normalize,
)

DOMAINS = ("prose", "code", "legal")


def documents(corpus: Path, n_docs: int) -> list[tuple[str, str]]:
    """(domain, text) paragraphs of the local corpus (>= 200 chars), cycled to `n_docs`."""
    paras: list[tuple[str, str]] = []
    for domain in DOMAINS:
        for line in (corpus / f"{domain}.jsonl").read_text().splitlines():
            text = json.loads(line)["text"]
            paras += [(domain, p) for p in re.split(r"\n\s*\n", text) if len(p) >= 200]
    return [paras[i % len(paras)] for i in range(n_docs)]


def write_inputs(docs: list[tuple[str, str]], root: Path, n_files: int) -> dict[str, list[str]]:
    """`n_files` JSONL files per domain, documents dealt round them."""
    root.mkdir(parents=True, exist_ok=True)
    handles = {(d, k): open(root / f"{d}-{k:03d}.jsonl", "w") for d in DOMAINS for k in range(n_files)}
    try:
        for i, (domain, text) in enumerate(docs):
            handles[domain, i % n_files].write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    finally:
        for fh in handles.values():
            fh.close()
    return {d: [str(root / f"{d}-{k:03d}.jsonl") for k in range(n_files)] for d in DOMAINS}


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DirectRunner's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def predict_loop(model, texts: list[str]) -> tuple[float, float]:
    """(docs/s, docs per CPU-second) of a plain per-document predict loop."""
    start, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        model.predict(normalize(text), k=-1)
    return rate(len(texts), time.perf_counter() - start), rate(len(texts), time.process_time() - cpu)


def fasttext_paths(model: str, texts: list[str], batch_size: int, rounds: int = 3) -> dict[str, float]:
    """Seconds per 100,000 documents of the binding's batch predict (`label_probabilities`) and of the
    linear path (`FastTextScorer` on a linear model), timed alternately on the same Arrow batches: the
    linear path's first round (its chunk cache cold) and the mean of the later rounds of each (warm), and
    the max |difference| of their scores."""
    scorer = FastTextScorer(model).setup()
    if scorer.linear_ is None:
        raise ValueError(f"the bench model is not linear: {scorer.fallback_reason_}")
    batches = [pa.array(texts[i : i + batch_size], pa.string()) for i in range(0, len(texts), batch_size)]
    seconds: dict[str, list[float]] = {"binding": [], "linear": []}
    diff = 0.0
    for _ in range(rounds):
        start = time.process_time()
        reference = [label_probabilities(scorer.model_, b, scorer.label) for b in batches]
        seconds["binding"].append(time.process_time() - start)
        start = time.process_time()
        got = [scorer.linear_.scores(b) for b in batches]
        seconds["linear"].append(time.process_time() - start)
        diff = max(diff, float(np.abs(np.concatenate(reference) - np.concatenate(got)).max(initial=0.0)))
    scale = 100_000 / len(texts)
    return {
        "binding_s": scale * sum(seconds["binding"][1:]) / (rounds - 1),
        "linear_s": scale * sum(seconds["linear"][1:]) / (rounds - 1),
        "linear_cold_s": scale * seconds["linear"][0],
        "max_abs_diff": diff,
    }


def loops_at_once(model, texts: list[str], cores: int) -> float:
    """Docs/s of one plain loop while `cores` of them run at once (forked, the mean): what a core gives
    when every core is busy, as in the job (shared caches, clocks), against one core alone."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=lambda: queue.put(predict_loop(model, texts)[0])) for _ in range(cores)]
    for proc in procs:
        proc.start()
    rates = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(rates) / len(rates)


class StepClock:
    """CPU-seconds of this process spent in each named step (`clock.step(name)` ends the current one)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.process_time()

    def step(self, name: str) -> None:
        now = time.process_time()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def worker_steps(batches, clock: StepClock, model: str, tokenizer_json: str, parts: PartWriters) -> list[str]:
    """A worker's fused step on each batch of `batches` (read, tokens, score, stage, cut-off keys),
    timed by `clock`; returns the texts."""
    counter, scorer = TokenCounter(tokenizer_json).setup(), FastTextScorer(model).setup()
    column = S.score_column("fasttext")
    schema = S.scored_schema(["fasttext"], with_text=True).append(pa.field(S.RECORD, pa.int64()))
    columns = [c for c in schema.names if c not in (S.KEEP, S.DUPLICATE_OF)]
    texts: list[str] = []
    clock.step("(bench: set-up)")
    for batch in batches:
        clock.step("read, parse, validate")
        batch = batch.append_column(S.N_TOKENS, pa.array(counter.count(batch.column(S.TEXT)), pa.int64()))
        clock.step("token counts")
        batch = batch.append_column(column, pa.array(scorer.score_batch(batch.column(S.TEXT)), pa.float64()))
        clock.step("fastText scores")
        parts.write(conform(batch, columns, schema))
        clock.step("stage: part files")
        for domain, scores in domain_scores(batch, column):
            keys = order_keys(scores)
            for level in range(4):  # the cut-off's four radix passes over the keys
                for _, element in level_bins((domain, (keys, 1)), level, {domain: (0, 0)}):
                    BinCounts().add_input(BinCounts().create_accumulator(), element)
        clock.step("cut-off histograms")
        texts += batch.column(S.TEXT).to_pylist()
        clock.step("(bench: texts kept for the loop)")
    return texts


def shard_steps(parts: list[tuple[int, str]], clock: StepClock, out: Path) -> int:
    """The shard writers as the job runs them (merge each shard's parts in order, mark keep, write
    Parquet row groups); returns the output bytes."""
    schema = S.scored_schema(["fasttext"], with_text=True)

    def finish(group: pa.Table) -> pa.Table:
        return mark_keep(mark_duplicates(group, []), S.score_column("fasttext"), {}, threshold=0.5)

    size = 0
    for shard in sorted({s for s, _ in parts}):
        path = out / f"shard-{shard}.parquet"
        groups = row_groups(merge_parts(sorted(p for s, p in parts if s == shard)), with_text=True)
        write_row_groups(map(finish, groups), str(path), schema)
        clock.step("shards: merge, keep, Parquet")
        size += path.stat().st_size
    return size


def step_breakdown(
    inputs: dict[str, list[str]], model: str, tokenizer_json: str, n_docs: int, tmp: Path, batch_size: int
) -> tuple[dict[str, float], float, int]:
    """({step: CPU-seconds per 100,000 documents}, the same for the plain loop, output bytes per 100,000
    documents): the job's steps in this process without Beam, on the first `n_docs` documents of the
    inputs (a file of each domain in turn), and the plain loop on the same documents."""
    longest = max(map(len, inputs.values()))
    pairs = [(d, paths[k]) for k in range(longest) for d, paths in inputs.items() if k < len(paths)]

    def batches():
        left = n_docs
        for domain, path in pairs:
            for batch, _ in read_file(domain, path, ReadOptions(batch_size=batch_size)):
                if left <= 0:
                    return
                yield batch.slice(0, left)
                left -= batch.num_rows

    clock = StepClock()
    writers = PartWriters(str(tmp / "breakdown-parts"), 4)
    texts = worker_steps(batches(), clock, model, tokenizer_json, writers)
    (tmp / "breakdown").mkdir()
    size = shard_steps(writers.close(), clock, tmp / "breakdown")
    _, loop_rate = predict_loop(load_model(model), texts)
    scale = 100_000 / len(texts)
    steps = {k: v * scale for k, v in clock.seconds.items() if not k.startswith("(")}
    return steps, 100_000 / loop_rate, round(size * scale)


def fixed_costs(
    config: ScoreJobConfig, tiny_inputs: dict[str, list[str]], tmp: Path, beam_args: list[str]
) -> dict[bool, tuple[float, float]]:
    """{workers forked by the zygote: (wall s, CPU s)} of the job on 200 documents, best of two runs
    each way, interleaved (False: Beam starts each worker process itself, as before the zygote)."""
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for attempt in range(2):
        for fork in (True, False):
            direct_workers.FORK_WORKERS = fork
            tiny = dict(config.__dict__, inputs=tiny_inputs, output=str(tmp / f"tiny-{fork}-{attempt}"))
            cpu = cpu_seconds()
            seconds = run_score_job(ScoreJobConfig(**tiny), "direct", beam_args)["seconds"]
            runs[fork].append((seconds, cpu_seconds() - cpu))
    direct_workers.FORK_WORKERS = True
    return {fork: min(values) for fork, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600_000)
    parser.add_argument("--files", type=int, default=8, help="JSONL files per domain")
    parser.add_argument("--workers", type=int, default=0, help="DirectRunner workers (0: all cores)")
    parser.add_argument("--mode", default="multi_processing", choices=["multi_processing", "in_memory"])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--breakdown-docs",
        type=int,
        default=100_000,
        help="documents for the per-step CPU breakdown (0: none)",
    )
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp_name:
        tmp = Path(tmp_name)
        build_corpus(tmp / "corpus", CorpusOptions(max_bytes_per_domain=3_000_000))
        docs = documents(tmp / "corpus", args.docs)
        texts = [t for _, t in docs]
        inputs = write_inputs(docs, tmp / "in", args.files)
        sample = docs[:20_000]
        positive = [t for d, t in sample if d == "prose"]
        negative = [t for d, t in sample if d == "code"]
        FastTextQualityClassifier(preset="dclm").fit(positive, negative).save(tmp / "quality.bin")
        tokenizer = train_byte_level_bpe(texts[:20_000])
        tokenizer.save(str(tmp / "tokenizer.json"))
        mean_chars = sum(map(len, texts)) / len(texts)
        input_mb = sum(os.path.getsize(f) for fs in inputs.values() for f in fs) / 1e6
        print(
            f"documents: {len(texts):,} (mean {mean_chars:.0f} chars, {input_mb:.0f} MB of JSONL in "
            f"{args.files * len(DOMAINS)} files), cores: {os.cpu_count()}, "
            f"load average: {os.getloadavg()[0]:.1f}"
        )

        model = load_model(tmp / "quality.bin")
        loop_before, loop_cpu_before = predict_loop(model, texts)
        subset = texts[:100_000]
        start = time.perf_counter()
        for i in range(0, len(subset), args.batch_size):
            tokenizer.encode_batch_fast(subset[i : i + args.batch_size], add_special_tokens=False)
        encode = rate(len(subset), time.perf_counter() - start)
        counter = TokenCounter(tokenizer.to_str()).setup()
        start = time.perf_counter()
        for i in range(0, len(subset), args.batch_size):
            counter.count(subset[i : i + args.batch_size])
        tokens = rate(len(subset), time.perf_counter() - start)
        print(f"raw fastText predict, plain loop, one core:   {loop_before:10,.0f} docs/s (before the job)")
        print(f"token counts, tokenizers encode_batch_fast:   {encode:10,.0f} docs/s")
        print(f"token counts, TokenCounter (cached chunks):   {tokens:10,.0f} docs/s")
        paths = fasttext_paths(str(tmp / "quality.bin"), subset, args.batch_size)
        print(
            f"fastText scores, CPU-s per 100,000 documents, alternately on the same batches: binding "
            f"{paths['binding_s']:.2f} s, linear path {paths['linear_s']:.2f} s warm "
            f"({paths['linear_s'] / paths['binding_s']:.2f} x the binding; {paths['linear_cold_s']:.2f} s "
            f"with its chunk cache cold), max |difference| {paths['max_abs_diff']:.1e}"
        )

        breakdown: dict[str, float] = {}
        if args.breakdown_docs > 0:
            n = min(args.breakdown_docs, len(texts))
            breakdown, loop_step, out_bytes = step_breakdown(
                inputs, str(tmp / "quality.bin"), counter.tokenizer_json, n, tmp, args.batch_size
            )
            print(
                f"CPU-seconds per 100,000 documents, each step in one process without Beam ({n:,} documents):"
            )
            for name, seconds in breakdown.items():
                print(f"  {name:30s} {seconds:6.2f} s  ({seconds / loop_step:.2f} x the plain loop)")
            total = sum(breakdown.values())
            print(f"  {'all steps':30s} {total:6.2f} s  ({total / loop_step:.2f} x the plain loop)")
            print(f"  {'plain loop':30s} {loop_step:6.2f} s; Parquet output {out_bytes / 1e6:.1f} MB")
            breakdown = {**breakdown, "plain loop": loop_step}
        config = ScoreJobConfig(
            inputs=inputs,
            output=str(tmp / "out"),
            scorer=ScorerConfig("fasttext", str(tmp / "quality.bin")),
            selection=Selection(keep_top=0.3),
            tokenizer=str(tmp / "tokenizer.json"),
            read=ReadOptions(batch_size=args.batch_size),
        )
        beam_args = [f"--direct_running_mode={args.mode}", f"--direct_num_workers={args.workers}"]
        tiny_inputs = {"prose": [str(tmp / "tiny.jsonl")]}
        with open(tmp / "tiny.jsonl", "w") as fh:
            for i, text in enumerate(texts[:200]):
                fh.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
        starts = fixed_costs(config, tiny_inputs, tmp, beam_args)
        fixed, fixed_cpu = starts[True]
        cpu = cpu_seconds()
        result = run_score_job(config, "direct", beam_args)
        job_cpu_s = cpu_seconds() - cpu
        job_cpu = rate(result["in"], job_cpu_s)
        steady_cpu = rate(result["in"], job_cpu_s - fixed_cpu)
        assert result["in"] == len(texts) == result["scored"], result
        loop_after, loop_cpu_after = predict_loop(model, texts)
        loop, loop_cpu = (loop_before + loop_after) / 2, (loop_cpu_before + loop_cpu_after) / 2
        job = rate(result["in"], result["seconds"])
        steady = rate(result["in"], result["seconds"] - fixed)
        print(f"raw fastText predict, plain loop, one core:   {loop_after:10,.0f} docs/s (after the job)")
        print(
            f"Beam job, DirectRunner {args.mode} ({args.workers or os.cpu_count()} workers): "
            f"{job:10,.0f} docs/s ({result['seconds']:.1f} s wall)"
        )
        print(
            f"  start-up (same job on 200 documents):       {fixed:10.1f} s ({fixed_cpu:.1f} CPU-s), workers "
            f"forked by the zygote; {starts[False][0]:.1f} s ({starts[False][1]:.1f} CPU-s) started by Beam"
        )
        print(f"  job without the start-up:                   {steady:10,.0f} docs/s")
        print(f"ratio job / plain loop (mean of both):        {job / loop:10.2f}")
        print(f"ratio job without start-up / plain loop:      {steady / loop:10.2f}")
        print(
            f"docs per CPU-second: plain loop {loop_cpu:,.0f}, job (all processes) {job_cpu:,.0f}, "
            f"job without the start-up {steady_cpu:,.0f}"
        )
        cores = os.cpu_count() or 1
        at_once = loops_at_once(model, texts[:200_000], cores)
        print(
            f"plain loop on {cores} cores at once:  {at_once:10,.0f} docs/s each "
            f"({at_once / loop:.2f} of one core alone: the cores give {cores * at_once / loop:.2f} loops)"
        )
        print(
            f"  ratio x {cores} cores (what free cores would give): {cores * job_cpu / loop_cpu:10.2f} "
            f"({cores * steady_cpu / loop_cpu:.2f} without the start-up)"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        headline = {
            "docs": len(texts),
            "loop_docs_per_s": round(loop),
            "job_docs_per_s": round(job),
            "job_docs_per_s_without_startup": round(steady),
            "startup_s": round(fixed, 2),
            "startup_s_beam_started_workers": round(starts[False][0], 2),
            "ratio": round(job / loop, 3),
            "ratio_without_startup": round(steady / loop, 3),
            "cpu_ratio_x_cores": round(cores * job_cpu / loop_cpu, 3),
            "cpu_ratio_x_cores_without_startup": round(cores * steady_cpu / loop_cpu, 3),
            "loop_at_once_vs_alone": round(at_once / loop, 3),
            "load_average": [round(v, 1) for v in os.getloadavg()],
            "cpu_s_per_100k_docs": {k: round(v, 3) for k, v in breakdown.items()},
            "fasttext_binding_cpu_s_per_100k_docs": round(paths["binding_s"], 3),
            "fasttext_linear_cpu_s_per_100k_docs": round(paths["linear_s"], 3),
            "fasttext_linear_cold_cpu_s_per_100k_docs": round(paths["linear_cold_s"], 3),
            "fasttext_linear_vs_binding": round(paths["linear_s"] / paths["binding_s"], 3),
            "fasttext_linear_max_abs_diff": paths["max_abs_diff"],
        }
        print(json.dumps(headline))


if __name__ == "__main__":
    main()
