"""Speed of the Beam scoring job against a plain fastText predict loop, on the same documents.

    python bench/score_bench.py [--docs 120000] [--files 8] [--workers 0]

Prints raw fastText docs/s (a plain per-document loop and one list call), raw token counting
docs/s, the Beam job's docs/s on the DirectRunner (multi-processing, all cores; wall time
including start-up, read, validate, tokenize, score, select, write), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.corpus import CorpusOptions, build_corpus  # noqa: E402
from pipeline.job import ScoreJobConfig, run_score_job  # noqa: E402
from pipeline.read import ReadOptions  # noqa: E402
from pipeline.registry import ScorerConfig  # noqa: E402
from pipeline.select import Selection  # noqa: E402
from pipeline.tokenize import TokenCounter, train_byte_level_bpe  # noqa: E402
from scorers.fasttext import FastTextQualityClassifier, load_model, normalise  # noqa: E402


def documents(corpus: Path, n_docs: int) -> list[tuple[str, str]]:
    """(domain, text) paragraphs of the local corpus (>= 200 chars), cycled to `n_docs`."""
    paras: list[tuple[str, str]] = []
    for domain in ("prose", "code", "legal"):
        for line in (corpus / f"{domain}.jsonl").read_text().splitlines():
            text = json.loads(line)["text"]
            paras += [(domain, p) for p in re.split(r"\n\s*\n", text) if len(p) >= 200]
    return [paras[i % len(paras)] for i in range(n_docs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=120_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="DirectRunner workers (0: all cores)")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp_name:
        tmp = Path(tmp_name)
        build_corpus(tmp / "corpus", CorpusOptions(max_bytes_per_domain=3_000_000))
        docs = documents(tmp / "corpus", args.docs)
        texts = [t for _, t in docs]
        inputs: dict[str, list[str]] = {}
        for k in range(args.files):
            for domain in ("prose", "code", "legal"):
                path = tmp / "in" / f"{domain}-{k:03d}.jsonl"
                path.parent.mkdir(exist_ok=True)
                with open(path, "w") as fh:
                    for i in range(k, len(docs), args.files):
                        if docs[i][0] == domain:
                            fh.write(json.dumps({"id": f"d{i}", "text": docs[i][1]}) + "\n")
                inputs.setdefault(domain, []).append(str(path))
        prose = [t for d, t in docs[:20_000] if d == "prose"]
        code = [t for d, t in docs[:20_000] if d == "code"]
        FastTextQualityClassifier().fit(prose, code).save(tmp / "quality.bin")
        tokenizer = train_byte_level_bpe(texts[:20_000])
        tokenizer.save(str(tmp / "tokenizer.json"))
        mean_chars = sum(map(len, texts)) / len(texts)
        print(
            f"documents: {len(texts):,} (mean {mean_chars:.0f} chars), {args.files * 3} JSONL files, "
            f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}"
        )

        model = load_model(tmp / "quality.bin")
        start = time.perf_counter()
        for text in texts:
            model.predict(normalise(text), k=-1)
        loop = len(texts) / (time.perf_counter() - start)
        start = time.perf_counter()
        model.predict([normalise(t) for t in texts], k=-1)
        listed = len(texts) / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, len(texts), args.batch_size):
            tokenizer.encode_batch_fast(texts[i : i + args.batch_size], add_special_tokens=False)
        encode = len(texts) / (time.perf_counter() - start)
        counter = TokenCounter(tokenizer.to_str()).setup()
        start = time.perf_counter()
        for i in range(0, len(texts), args.batch_size):
            counter.count(texts[i : i + args.batch_size])
        tokens = len(texts) / (time.perf_counter() - start)
        print(f"raw fastText predict, plain loop:     {loop:10,.0f} docs/s")
        print(f"raw fastText predict, one list call:  {listed:10,.0f} docs/s")
        print(f"token counts, tokenizers encode_batch_fast: {encode:10,.0f} docs/s")
        print(f"token counts, TokenCounter (cached chunks):  {tokens:10,.0f} docs/s")

        config = ScoreJobConfig(
            inputs=inputs,
            output=str(tmp / "out"),
            scorer=ScorerConfig("fasttext", str(tmp / "quality.bin")),
            selection=Selection(keep_top=0.3),
            tokenizer=str(tmp / "tokenizer.json"),
            read=ReadOptions(batch_size=args.batch_size),
        )
        beam_args = [f"--direct_num_workers={args.workers}"]
        tiny = dict(config.__dict__, inputs={"prose": [inputs["prose"][0]]}, output=str(tmp / "tiny"))
        tiny["read"] = ReadOptions(batch_size=64)
        startup = run_score_job(ScoreJobConfig(**tiny), "direct", beam_args)["seconds"]  # ~1/24 of the docs
        result = run_score_job(config, "direct", beam_args)
        assert result["in"] == len(texts) == result["scored"], result
        job = result["in"] / result["seconds"]
        steady = result["in"] / max(result["seconds"] - startup, 1e-9)
        print(
            f"Beam job, DirectRunner multi-processing: {job:10,.0f} docs/s ({result['seconds']:.1f} s wall)"
        )
        print(f"  same job on one small file (start-up and fixed costs): {startup:.1f} s")
        print(f"  job without those fixed costs:         {steady:10,.0f} docs/s")
        print(f"ratio job / plain loop:             {job / loop:.2f}")
        print(f"ratio job / list predict:           {job / listed:.2f}")
        print(f"ratio job without start-up / plain loop: {steady / loop:.2f}")


if __name__ == "__main__":
    main()
