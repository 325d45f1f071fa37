"""CPU of token counting (`pipeline.tokenize.TokenCounter`) on the score bench's documents, this tree's
code against a commit's, alternated in one process so that both see the same machine.

    python bench/token_bench.py [--against main] [--docs 100000] [--repeats 5] [--fill 24000]

Prints, in CPU-seconds per 100,000 documents (the minimum and median of --repeats alternated passes):
a fresh counter on the first --docs documents of `bench/score_bench.py` (its cache fills, as in a
worker's first batches), the same documents again (a warm cache), and the same with a cache that
already holds about 1.5 million chunks (--fill documents of random words first: the large-input case),
with the seconds of a 4,096-document batch of new words at that size. Counts are checked equal. The
last line is JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from score_bench import documents, write_inputs  # noqa: E402

from pipeline import tokenize  # noqa: E402
from pipeline.corpus import CorpusOptions, build_corpus  # noqa: E402
from pipeline.read import ReadOptions, read_file  # noqa: E402


def module_at(commit: str, tmp: Path):
    """pipeline/tokenize.py as it is at `commit`, loaded as its own module."""
    path = tmp / "tokenize_at_commit.py"
    path.write_text(
        subprocess.run(
            ["git", "show", f"{commit}:pipeline/tokenize.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    spec = importlib.util.spec_from_file_location("tokenize_at_commit", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_docs(rng: np.random.Generator, n_docs: int, words: int = 50) -> list[str]:
    """Documents of random lower-case words of 2 to 11 letters: nearly every chunk new."""
    lengths = rng.integers(2, 12, n_docs * words)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    chars = letters[rng.integers(0, 26, int(lengths.sum()))].tobytes().decode()
    ends = np.cumsum(lengths).tolist()
    cut = [chars[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    return [" ".join(cut[i * words : (i + 1) * words]) for i in range(n_docs)]


def cpu(counter, texts) -> float:
    """CPU-seconds of counting `texts` (a list of batches)."""
    start = time.process_time()
    for batch in texts:
        counter.count(batch)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", help="the commit whose tokenize.py is compared")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fill", type=int, default=24_000, help="random documents before the large case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="token-bench-") as name:
        tmp = Path(name)
        build_corpus(tmp / "corpus", CorpusOptions(max_bytes_per_domain=3_000_000))
        docs = documents(tmp / "corpus", args.docs)
        inputs = write_inputs(docs, tmp / "in", 8)
        tokenizer_json = tokenize.train_byte_level_bpe([t for _, t in docs[:20_000]]).to_str()
        batches, left = [], args.docs  # a file of each domain in turn, as the score bench's breakdown
        for k in range(8):
            for domain, paths in inputs.items():
                for batch, _ in read_file(domain, paths[k], ReadOptions(batch_size=4096)):
                    if left > 0:
                        batches.append(batch.column("text").slice(0, left))
                        left -= batch.num_rows
        modules = {"this tree": tokenize, f"at {args.against}": module_at(args.against, tmp)}
        rng = np.random.default_rng(0)
        fill, new_words = random_docs(rng, args.fill), random_docs(rng, 4096)
        print(f"documents: {args.docs:,}, load average: {os.getloadavg()[0]:.1f}", file=sys.stderr)
        figures: dict[str, dict[str, list[float]]] = {name: {} for name in modules}
        scale = 100_000 / args.docs
        counts: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, module in modules.items():
                times = figures[name]
                counter = module.TokenCounter(tokenizer_json).setup()
                times.setdefault("fresh", []).append(cpu(counter, batches) * scale)
                times.setdefault("warm", []).append(cpu(counter, batches) * scale)
                counts[name] = np.concatenate([counter.count(b) for b in batches])
        for name, module in modules.items():
            counter = module.TokenCounter(tokenizer_json).setup()
            for i in range(0, len(fill), 4096):
                counter.count(fill[i : i + 4096])
            for batch in batches:
                counter.count(batch)
            times = figures[name]
            times["large cache: warm"] = [cpu(counter, batches) * scale for _ in range(args.repeats)]
            times["large cache: a batch of new words (s)"] = [cpu(counter, [new_words])]
        names = list(modules)
        assert (counts[names[0]] == counts[names[1]]).all(), "the two codes count differently"
        result = {}
        for step in figures[names[0]]:
            row = {name: (min(figures[name][step]), statistics.median(figures[name][step])) for name in names}
            ratio = row[names[0]][1] / row[names[1]][1]
            print(
                f"{step:40s} "
                + "  ".join(f"{n}: {a:.3f} (median {m:.3f})" for n, (a, m) in row.items())
                + f"  ratio of medians {ratio:.2f}",
                file=sys.stderr,
            )
            result[step] = {**{n: round(m, 4) for n, (_, m) in row.items()}, "ratio": round(ratio, 3)}
        print(f"load average at the end: {os.getloadavg()[0]:.1f}", file=sys.stderr)
        print(json.dumps({"cpu_s_per_100k_median": result, "load": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
